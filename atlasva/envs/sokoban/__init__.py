"""Sokoban: seeded solvable levels, an optimal solver, deadlock detection and tile-blitted frames."""

from __future__ import annotations

from atlasva.envs.sokoban.env import SokobanEnv
from atlasva.envs.sokoban.generator import generate_level
from atlasva.envs.sokoban.level import Level, parse_rows
from atlasva.envs.sokoban.solver import SearchBudgetExceeded, solve_level

__all__ = ["Level", "SearchBudgetExceeded", "SokobanEnv", "generate_level", "parse_rows", "solve_level"]
