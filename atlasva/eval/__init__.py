"""Evaluation: runners, summaries (run-folder schema) and pictures for people."""
