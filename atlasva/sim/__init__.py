"""Shared simulator helpers (MuJoCo offscreen rendering on the CPU)."""
