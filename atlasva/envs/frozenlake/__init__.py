"""FrozenLake: reach the goal across a frozen lake without falling into a hole."""

from atlasva.envs.frozenlake.env import FrozenLakeEnv, generate_map

__all__ = ["FrozenLakeEnv", "generate_map"]
