"""The run folder used by every long job (training, VLA training, evaluation).

``runs/<config-name>-<short hash of the resolved config>/`` under the working directory, so the
same command finds and resumes its run. It holds ``config.yaml`` (resolved), ``provenance.json``,
``metrics.jsonl``, TensorBoard events, ``checkpoints/step-N/`` (safetensors + JSON, written to a
temp name and renamed), PNGs, and ``summary.json`` with one schema for every evaluation::

    {"eval": {STAGE: {"episodes", "success_rate", "success_ci95": [lo, hi], "mean_turns",
                      "format_valid_rate", "distinct_levels", ...}},
     "splits": {"train_levels", "eval_levels", "overlap"}, "wall_time_s": ...}

A run's identity (the hash in its folder name) is its resolved config without ``run.*`` and without the
keys a command declares cosmetic (:func:`run_identity`), so ``run.resume=false`` restarts the *same*
folder afresh and ``run.root`` only moves it. ``levels.jsonl`` lists every level the run trained or
evaluated on, one line per level and stage, so a reader can check that the splits never overlap.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from atlasva.stats import wilson_interval

SUMMARY_REQUIRED = ("episodes", "success_rate", "success_ci95", "mean_turns", "format_valid_rate")
_PROVENANCE_PACKAGES = ("atlasva", "numpy", "torch", "transformers", "gymnasium", "mujoco", "safetensors")


@dataclass
class RunConfig:
    """Where a run lives and whether it resumes; never part of the run's identity."""

    root: str = "runs"
    resume: bool = True


def run_identity(config: Mapping[str, Any], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The config that identifies a run: everything but ``run.*`` and the dotted keys in ``exclude``
    (settings that cannot change a result, e.g. how many processes recorded a dataset)."""
    out = json.loads(json.dumps(dict(config), default=str))
    for dotted in ("run", *exclude):
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def wilson_ci(successes: int, n: int) -> list[float]:
    """95% Wilson score interval for a binomial proportion, as a JSON-friendly list."""
    return list(wilson_interval(successes, n))


def summarize_episodes(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Stage summary from per-episode dicts with keys success, turns, format_valid_rate, reward
    and optionally finish_reason and level_hash (then ``distinct_levels`` says how many levels the
    interval stands on)."""
    n = len(records)
    k = sum(bool(r["success"]) for r in records)
    out: dict[str, Any] = {
        "episodes": n,
        "success_rate": k / n if n else 0.0,
        "success_ci95": wilson_ci(k, n),
        "mean_turns": float(np.mean([r["turns"] for r in records])) if n else 0.0,
        "format_valid_rate": float(np.mean([r["format_valid_rate"] for r in records])) if n else 0.0,
    }
    if n and all("level_hash" in r for r in records):
        out["distinct_levels"] = len({r["level_hash"] for r in records})
    if n and all("reward" in r for r in records):
        out["mean_reward"] = float(np.mean([r["reward"] for r in records]))
    reasons: dict[str, int] = {}
    for r in records:
        if "finish_reason" in r:
            reasons[r["finish_reason"]] = reasons.get(r["finish_reason"], 0) + 1
    if reasons:
        out["finish_reasons"] = reasons
    return out


def format_summary(summary: Mapping[str, Any]) -> str:
    """The ``summary.json`` evaluation as a table; an ``env`` column where stages break down per env."""
    by_env = any("per_env" in s for s in summary["eval"].values())
    head = f"{'stage':<10} " + (f"{'env':<11} " if by_env else "")
    lines = [head + f"{'episodes':>8} {'success':>8} {'95% CI':>15} {'turns':>6} {'format':>7}"]
    for stage, s in summary["eval"].items():
        rows = [*s.get("per_env", {}).items(), ("all", s)] if by_env else [("", s)]
        for env, st in rows:
            lo, hi = st["success_ci95"]
            lines.append(
                f"{stage:<10} " + (f"{env:<11} " if by_env else "")
                + f"{st['episodes']:>8} {st['success_rate']:>8.3f} {f'[{lo:.3f}, {hi:.3f}]':>15} "
                f"{st['mean_turns']:>6.2f} {st['format_valid_rate']:>7.2f}"
            )
    return "\n".join(lines)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _git_revision() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict[str, Any]:
    versions = {}
    for pkg in _PROVENANCE_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "git_revision": _git_revision(),
        "command": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class RunFolder:
    """A run's folder. ``RunFolder.create(name, config)`` finds the existing folder of the same
    resolved config (resume) unless ``resume=False``, which clears it and starts afresh."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tb = None
        self._t0 = time.time()

    @classmethod
    def create(
        cls, name: str, config: Mapping[str, Any], *, root: str | Path = "runs", resume: bool = True,
        exclude: Iterable[str] = (),
    ) -> RunFolder:
        """The folder ``root/<name>-<hash of run_identity(config, exclude)>``; ``config.yaml`` keeps it all."""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name) or "run"
        path = Path(root) / f"{safe}-{config_hash(run_identity(config, exclude))}"
        if path.exists() and not resume:
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        _atomic_write_text(path / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))
        prov_path = path / "provenance.json"
        history = json.loads(prov_path.read_text()).get("history", []) if prov_path.exists() else []
        prov = provenance()
        prov["history"] = [*history, {"started_at": prov["started_at"], "command": prov["command"]}]
        _atomic_write_text(prov_path, json.dumps(prov, indent=2))
        return run

    # ------------------------------------------------------------------ metrics
    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        clean = {k: (float(v) if isinstance(v, int | float | np.floating | np.integer) else v) for k, v in metrics.items()}
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": int(step), **clean}, default=str) + "\n")
        tb = self._writer()
        if tb is not None:
            for k, v in clean.items():
                if isinstance(v, float) and math.isfinite(v):
                    tb.add_scalar(k, v, int(step))
            tb.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: skip it, keep the rest
        return rows

    def truncate_metrics(self, after_step: int) -> None:
        """Drop metric rows past ``after_step`` (used on resume, so no step is logged twice)."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        _atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def _writer(self):
        if self._tb is None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # tensorboardX is a core dependency; stay usable without it
                return None
            self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def save_checkpoint(
        self,
        step: int,
        tensors: Mapping[str, Any],
        state: Mapping[str, Any],
        keep: int = 2,
        extra: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write ``checkpoints/step-N/{tensors.safetensors,state.json}`` atomically (temp dir + rename).
        ``extra(tmp_dir)`` may write more files (e.g. the memory) into the checkpoint before the rename."""
        from safetensors.numpy import save_file as save_np

        self.checkpoint_dir.mkdir(exist_ok=True)
        final = self.checkpoint_dir / f"step-{int(step):08d}"
        tmp = self.checkpoint_dir / f".tmp-step-{int(step):08d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        arrays = {k: _to_numpy(v) for k, v in tensors.items()}
        save_np(arrays, str(tmp / "tensors.safetensors"))
        if extra is not None:
            extra(tmp)
        (tmp / "state.json").write_text(json.dumps({"step": int(step), **state}, default=_json_default))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def checkpoints(self) -> list[Path]:
        if not self.checkpoint_dir.exists():
            return []
        return sorted(p for p in self.checkpoint_dir.iterdir() if p.name.startswith("step-") and (p / "state.json").exists())

    def load_checkpoint(self, path: Path | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The latest (or given) checkpoint as (numpy tensors, state), or None if there is none."""
        from safetensors.numpy import load_file as load_np

        if path is None:
            found = self.checkpoints()
            if not found:
                return None
            path = found[-1]
        path = Path(path)
        if not (path / "state.json").exists() or not (path / "tensors.safetensors").exists():
            raise FileNotFoundError(f"{path} is not a checkpoint (expected tensors.safetensors and state.json)")
        return load_np(str(path / "tensors.safetensors")), json.loads((path / "state.json").read_text())

    # ------------------------------------------------------------------ summary
    def write_summary(self, evals: Mapping[str, Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
        for stage, stats in evals.items():
            missing = [k for k in SUMMARY_REQUIRED if k not in stats]
            if missing:
                raise ValueError(f"summary stage {stage!r} lacks {missing}")
        summary = {"eval": {k: dict(v) for k, v in evals.items()}, "wall_time_s": extra.pop("wall_time_s", time.time() - self._t0)}
        summary.update(extra)
        _atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2, default=_json_default))
        return summary

    # ------------------------------------------------------------------ levels
    @property
    def levels_path(self) -> Path:
        return self.path / "levels.jsonl"

    def read_levels(self) -> list[dict[str, Any]]:
        if not self.levels_path.exists():
            return []
        return [json.loads(line) for line in self.levels_path.read_text().splitlines() if line.strip()]

    def record_levels(self, stage: str, levels: Iterable[tuple[int, str]]) -> None:
        """Record the (seed, level hash) pairs a stage played; re-recording a stage replaces its lines
        (so a resumed run does not list a level twice)."""
        if not (stage in TRAIN_STAGES or stage.startswith("eval:")):
            raise ValueError(f"level stage {stage!r}; accepted: {', '.join(TRAIN_STAGES)} or 'eval:<STAGE>'")
        kept = [r for r in self.read_levels() if r["stage"] != stage]
        seen: set[str] = set()
        for seed, level_hash in levels:
            if level_hash not in seen:
                seen.add(level_hash)
                kept.append({"stage": stage, "seed": int(seed), "level_hash": str(level_hash)})
        _atomic_write_text(self.levels_path, "".join(json.dumps(r) + "\n" for r in kept))

    def split_report(self) -> dict[str, int]:
        """``{"train_levels", "eval_levels", "overlap"}`` over the distinct levels in ``levels.jsonl``."""
        return split_report(self.read_levels())

    def write_episodes(self, stage: str, records: list[Mapping[str, Any]]) -> Path:
        path = self.path / f"episodes-{stage}.jsonl"
        _atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))
        return path


TRAIN_STAGES = ("sft", "rl")


def split_report(levels: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Distinct training levels, distinct evaluation levels, and how many levels are in both."""
    levels = list(levels)
    train = {r["level_hash"] for r in levels if r["stage"] in TRAIN_STAGES}
    held = {r["level_hash"] for r in levels if str(r["stage"]).startswith("eval:")}
    return {"train_levels": len(train), "eval_levels": len(held), "overlap": len(train & held)}


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        v = v.numpy()
    return np.ascontiguousarray(np.asarray(v))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")
