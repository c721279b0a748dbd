"""Trainers: SFT warm start and RL (PPO with a value head, GRPO), writing everything to a run folder."""

from atlasva.train.config import TrainConfig
from atlasva.train.trainer import Trainer

__all__ = ["TrainConfig", "Trainer"]
