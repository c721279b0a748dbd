"""atlasva: multi-turn RL for vision-language agents with a visual skill memory, and VLA policies."""

__version__ = "0.1.0"
