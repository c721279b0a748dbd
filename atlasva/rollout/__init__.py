"""Rollouts: the Episode record and (with the trainer) the multi-turn agent loop."""

from atlasva.rollout.episode import Episode, Turn

__all__ = ["Episode", "Turn"]
