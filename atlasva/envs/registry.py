"""Env registry (`make`, `names`, `register`) and YAML env specs with disjoint train/validation splits.

A spec (``configs/envs/NAME.yaml``) names an env, its constructor config and the seed ranges of
its splits. Splits are disjoint by seed (non-overlapping ranges) *and* by level content: a level
belongs to the validation split iff its content hash falls in the validation bucket
(:func:`level_split`), so the same level can never appear in both, whichever seeds produced it.

The hash is taken on the level a run really plays: the spec's config merged with the run's overrides
(``EnvSpec.levels(split, n, overrides=...)``). A level generated under another config is another
level — hashing the spec's own config while playing an overridden one is how held-out levels leak.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from gymnasium.envs.registration import EnvSpec as GymEnvSpec

from atlasva.envs.base import AtlasEnv

_REGISTRY: dict[str, str | type[AtlasEnv]] = {
    "sokoban": "atlasva.envs.sokoban:SokobanEnv",
    "frozenlake": "atlasva.envs.frozenlake:FrozenLakeEnv",
    "navigation": "atlasva.envs.navigation:NavigationEnv",
    "manipulation": "atlasva.envs.manipulation:ManipulationEnv",
}


def register(name: str, entry: str | type[AtlasEnv], *, overwrite: bool = False) -> None:
    """Register an env class (or a ``"module:Class"`` path, imported lazily) under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"env {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = entry


def names() -> list[str]:
    return sorted(_REGISTRY)


def _unknown(kind: str, name: str, options: list[str]) -> ValueError:
    near = difflib.get_close_matches(name, options, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    return ValueError(f"unknown {kind} {name!r}.{hint} Accepted: {', '.join(options)}")


def env_class(name: str) -> type[AtlasEnv]:
    if name not in _REGISTRY:
        raise _unknown("env", name, names())
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = getattr(importlib.import_module(module), cls)
        _REGISTRY[name] = entry
    return entry


def config_keys(cls: type) -> list[str]:
    keys: list[str] = []
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self"):
                    keys.append(p.name)
    return sorted(set(keys))


def make(name: str, **config: Any) -> AtlasEnv:
    """Build a registered env. Unknown names or config keys raise errors naming what is accepted."""
    cls = env_class(name)
    accepted = config_keys(cls)
    for key in config:
        if key not in accepted:
            raise _unknown(f"config key for env {name!r}:", key, accepted)
    env = cls(**config)
    # a gymnasium spec lets gymnasium tools (check_env, spec.make) rebuild the env, e.g. in another render mode
    env.spec = GymEnvSpec(id=f"atlasva/{name}-v0", entry_point=cls, kwargs=dict(config))
    return env


# --------------------------------------------------------------------------- specs and splits

SPLITS = ("train", "validation")


def config_dir() -> Path:
    """The project's ``configs/`` folder (the working directory's wins, so users can add their own)."""
    for cand in (Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("no configs/ folder found in the working directory or beside the package")


@dataclass
class EnvSpec:
    env: str
    config: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, list[int]] = field(default_factory=lambda: {"train": [0, 1_000_000], "validation": [1_000_000, 2_000_000]})
    validation_share: float = 0.25  # share of the level-hash space that belongs to validation

    def __post_init__(self) -> None:
        env_class(self.env)  # fail early on unknown names
        for split in self.splits:
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r} in spec of {self.env!r}; accepted: {SPLITS}")
        (a0, a1), (b0, b1) = self.splits["train"], self.splits["validation"]
        if max(a0, b0) < min(a1, b1):
            raise ValueError(f"train seeds {self.splits['train']} overlap validation seeds {self.splits['validation']}")
        if not 0.0 < self.validation_share < 1.0:
            raise ValueError(f"validation_share must be in (0, 1), got {self.validation_share}")

    def final_config(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The env config a run plays: the spec's config with the run's overrides on top."""
        return {**self.config, **(overrides or {})}

    def make(self, **overrides: Any) -> AtlasEnv:
        return make(self.env, **self.final_config(overrides))

    def in_split(self, level_hash: str, split: str) -> bool:
        return level_split(level_hash, self.validation_share) == split

    def levels(self, split: str, n: int, *, overrides: dict[str, Any] | None = None, distinct: bool = True,
               max_tries: int | None = None) -> list[tuple[int, str]]:
        """The first ``n`` (seed, level hash) pairs of ``split`` under the final config (deterministic).

        ``distinct``: each level once (n episodes = n levels); otherwise seeds that repeat a level count."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; accepted: {SPLITS}")
        lo, hi = self.splits[split]
        config = {k: v for k, v in self.final_config(overrides).items() if k != "obs_mode"}
        env = make(self.env, **config, obs_mode="text")  # the level does not depend on how it is shown
        out: list[tuple[int, str]] = []
        seen: set[str] = set()
        budget = max_tries if max_tries is not None else 200 * n + 1000
        try:
            for tries, seed in enumerate(range(lo, hi)):
                if len(out) >= n:
                    break
                if tries >= budget:
                    break
                _, info = env.reset(seed=seed)
                h = info["level_hash"]
                if not self.in_split(h, split) or (distinct and h in seen):
                    continue
                seen.add(h)
                out.append((seed, h))
        finally:
            env.close()
        if len(out) < n:
            what = "distinct levels" if distinct else "levels"
            raise RuntimeError(
                f"only {len(out)}/{n} {split} {what} of {self.env!r} found in seeds {lo}.. (tried {min(budget, hi - lo)}); "
                "the env has too few distinct levels for this many episodes — ask for fewer, widen the split's "
                "seed range, or allow repeats"
            )
        return out

    def seeds(self, split: str, n: int, *, overrides: dict[str, Any] | None = None, distinct: bool = True,
              max_tries: int | None = None) -> list[int]:
        """The seeds of :meth:`levels`."""
        return [s for s, _ in self.levels(split, n, overrides=overrides, distinct=distinct, max_tries=max_tries)]


def level_split(level_hash: str, validation_share: float) -> str:
    """The split a level belongs to, from its content hash alone (``train`` or ``validation``)."""
    bucket = int(level_hash[:8], 16) / 0xFFFFFFFF
    return "validation" if bucket < validation_share else "train"


def load_spec(name_or_path: str | Path) -> EnvSpec:
    """Load ``configs/envs/NAME.yaml`` (or a path). A bare registered env name without a file gets defaults."""
    path = Path(name_or_path)
    if not path.suffix:
        cand = config_dir() / "envs" / f"{name_or_path}.yaml"
        if cand.exists():
            path = cand
        elif str(name_or_path) in _REGISTRY:
            return EnvSpec(env=str(name_or_path))
        else:
            raise _unknown("env spec", str(name_or_path), sorted({p.stem for p in (config_dir() / "envs").glob("*.yaml")} | set(names())))
    if not path.exists():
        raise FileNotFoundError(f"env spec file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    allowed = {"env", "config", "splits", "validation_share"}
    for key in data:
        if key not in allowed:
            raise _unknown(f"key in {path}:", key, sorted(allowed))
    return EnvSpec(**data)
