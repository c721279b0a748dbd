"""Configs: dataclass schemas, YAML files in ``configs/``, dotted ``a.b=c`` overrides (OmegaConf).

Every command loads its config the same way::

    cfg, name = load_config(TrainConfig, "frozenlake-memory", ["trainer.steps=50", "memory.enable=false"])

Unknown keys and wrong types are errors that name the key and the nearest valid one. A free-form dict
in a file (``env.config``) replaces the schema's default dict; dotted overrides add keys to it.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is wrong; the message says what and what is accepted."""


def flat_keys(node: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            child = node._get_node(k)
            if isinstance(child, DictConfig):
                keys.extend(flat_keys(child, full + "."))
    return keys


def _nearest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not near:  # try the last component alone (e.g. "trainer.step" -> "trainer.steps")
        leaf = key.rsplit(".", 1)[-1]
        near = [v for v in valid if v.rsplit(".", 1)[-1] in difflib.get_close_matches(leaf, [x.rsplit(".", 1)[-1] for x in valid], n=1)]
    return f" — did you mean {near[0]!r}?" if near else ""


def _flat_dict(d: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(d, dict):
        for k, v in d.items():
            full = f"{prefix}{k}"
            out.append(full)
            out.extend(_flat_dict(v, full + "."))
    return out


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    valid = flat_keys(base)
    if isinstance(other, dict):
        for key in _flat_dict(other):
            parent = key.rsplit(".", 1)[0] if "." in key else ""
            # keys under a free-form dict field (e.g. env config) are not checked here
            if key not in valid and (not parent or parent in valid) and not _is_open(base, parent):
                raise ConfigError(f"unknown config key {key!r} in {source}{_nearest(key, valid)}")
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except ValidationError as exc:
        key = getattr(exc, "full_key", "") or "?"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"bad value for {key!r} in {source}: {msg}") from None
    except ConfigKeyError as exc:
        key = getattr(exc, "full_key", "") or str(exc)
        raise ConfigError(f"unknown config key {key!r} in {source}{_nearest(str(key), valid)}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config in {source}: {exc}") from None


def _is_open(base: DictConfig, dotted: str) -> bool:
    """True where the schema has a free-form dict (Dict[str, Any]) at ``dotted``."""
    if not dotted:
        return False
    node = OmegaConf.select(base, dotted, default=None)
    if not isinstance(node, DictConfig):
        return False
    ref = node._metadata.ref_type
    return node._metadata.object_type in (None, dict) and ref is not None and "Dict" in str(ref)


def find_config_file(name_or_path: str, subdir: str = "") -> Path:
    from atlasva.envs.registry import config_dir

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        return path
    folder = config_dir() / subdir if subdir else config_dir()
    cand = folder / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    options = sorted(p.stem for p in folder.glob("*.yaml"))
    near = difflib.get_close_matches(name_or_path, options, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ConfigError(f"no config named {name_or_path!r} in {folder}.{hint} Available: {', '.join(options) or 'none'}")


def load_config(
    schema: type[T], name_or_path: str | None = None, overrides: list[str] | None = None, *, subdir: str = ""
) -> tuple[T, str]:
    """Schema defaults ← YAML file ← dotted overrides. Returns (dataclass instance, config name)."""
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    cfg: DictConfig = OmegaConf.structured(schema)
    name = "default"
    if name_or_path:
        path = find_config_file(name_or_path, subdir)
        name = path.stem
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping at the top level")
        # a file states a free-form dict (e.g. env.config) whole: it replaces the schema's default dict
        # instead of merging into it (the embedded demo's FrozenLake keys must not reach a Sokoban run);
        # dotted overrides below still add to it (`key={}` empties it)
        given = OmegaConf.create(data)
        for key in _flat_dict(data):
            if isinstance(OmegaConf.select(given, key), DictConfig) and _is_open(cfg, key):
                OmegaConf.update(cfg, key, {}, merge=False)
        cfg = _merge(cfg, data, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. trainer.steps=50)")
        key, _, value = item.partition("=")
        key = key.strip()
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        if parsed == {} and _is_open(cfg, key):  # `key={}` empties a free-form dict (overrides add otherwise)
            OmegaConf.update(cfg, key, {}, merge=False)
            continue
        nested: dict[str, Any] = {}
        cur = nested
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = parsed
        cfg = _merge(cfg, nested, f"override {item!r}")
    return OmegaConf.to_object(cfg), name  # type: ignore[return-value]


def to_dict(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
