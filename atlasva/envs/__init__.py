"""Environments: the contract (base.py), the registry, pools, and the built-in envs."""

from __future__ import annotations

from typing import Any

from atlasva.envs.base import IMAGE_PLACEHOLDER, AtlasEnv, LimitError, NoSolverError, level_hash
from atlasva.envs.registry import EnvSpec, env_class, load_spec, make, names, register


def to_pil(obs: dict[str, Any]) -> list[Any]:
    """The observation's images as PIL images (what model processors take)."""
    from PIL import Image

    return [Image.fromarray(img) for img in obs.get("images", ())]


__all__ = [
    "AtlasEnv",
    "EnvSpec",
    "IMAGE_PLACEHOLDER",
    "LimitError",
    "NoSolverError",
    "env_class",
    "level_hash",
    "load_spec",
    "make",
    "names",
    "register",
    "to_pil",
]
