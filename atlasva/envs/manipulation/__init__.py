"""Manipulation: pick / place / push primitives on a MuJoCo tabletop (align, place, stack, drawer, swap)."""

from atlasva.envs.manipulation.env import TASKS, ManipulationEnv

__all__ = ["TASKS", "ManipulationEnv"]
