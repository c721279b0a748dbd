"""Reference agents on held-out levels: the optimal solver (upper bound) and a random agent
(lower bound). ``atlasva baselines`` runs them through the agent loop (a scripted backend replays their
answers, :mod:`atlasva.rollout.scripted`), so their episodes are recorded exactly like a model's, and
writes a run folder with ``summary.json``, per-episode JSONL, ``levels.jsonl`` and a contact sheet of
the evaluated levels."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atlasva import formats
from atlasva.envs.registry import EnvSpec, load_spec
from atlasva.eval.evaluate import evaluate_policy
from atlasva.eval.images import contact_sheet, save_png
from atlasva.rollout.loop import RolloutConfig
from atlasva.rollout.scripted import random_script, scripted_policy, solver_script
from atlasva.runs import RunConfig, RunFolder, summarize_episodes

AGENTS = ("solver", "random")


@dataclass
class BaselinesConfig:
    envs: list[str] = field(default_factory=lambda: ["sokoban", "frozenlake"])
    agents: list[str] = field(default_factory=lambda: ["solver", "random"])
    split: str = "validation"
    episodes: int = 100  # per env and agent, each on a level of its own
    max_turns: int = 5
    format: str = "free_think"
    obs_mode: str = "vision"
    seed: int = 0  # the random agent's RNG
    sheet_levels: int = 16  # levels per env on the contact sheet
    run: RunConfig = field(default_factory=RunConfig)


def agent_scripts(agent: str, spec: EnvSpec, env_config: dict[str, Any], seeds: list[int], max_turns: int,
                  rng_seed: int) -> dict[int, list[str]]:
    """Each level's answers for ``agent`` (the random agent's RNG is keyed by its seed and the level's)."""
    env = spec.make(**env_config)
    try:
        if agent == "solver":
            return {s: solver_script(env, s, max_turns) for s in seeds}
        return {s: random_script(env, np.random.default_rng([rng_seed, s]), max_turns) for s in seeds}
    finally:
        env.close()


def run_baselines(cfg: BaselinesConfig, config_name: str = "baselines", config_dict: dict | None = None) -> dict[str, Any]:
    for a in cfg.agents:
        if a not in AGENTS:
            raise ValueError(f"unknown agent {a!r}; accepted: {AGENTS}")
    formats.check_format(cfg.format)
    t0 = time.time()
    run = RunFolder.create(config_name, config_dict or {}, root=cfg.run.root, resume=cfg.run.resume)
    overrides = {"obs_mode": cfg.obs_mode, "format": cfg.format}
    rollout = RolloutConfig(max_turns=cfg.max_turns)
    specs: dict[str, EnvSpec] = {name: load_spec(name) for name in cfg.envs}
    records: dict[str, list[dict]] = {a: [] for a in cfg.agents}
    per_env: dict[str, dict[str, dict]] = {a: {} for a in cfg.agents}
    sheet_frames, sheet_labels = [], []
    for name, spec in specs.items():
        env_config = spec.final_config(overrides)
        seeds = spec.seeds(cfg.split, cfg.episodes, overrides=overrides)
        env = spec.make(**overrides)
        for s in seeds[: cfg.sheet_levels]:
            env.reset(seed=s)
            sheet_frames.append(env.render_rgb())
            sheet_labels.append(f"{name} {s}")
        env.close()
        for agent in cfg.agents:
            scripts = agent_scripts(agent, spec, overrides, seeds, cfg.max_turns, cfg.seed)
            episodes, summary = evaluate_policy(scripted_policy(scripts), spec.env, seeds, env_config=env_config,
                                                rollout=rollout, desc=f"{agent:>6} on {name}")
            records[agent].extend(e.summary_record() for e in episodes)
            per_env[agent][name] = summary
    evals = {}
    for agent in cfg.agents:
        run.write_episodes(agent, records[agent])
        run.record_levels(f"eval:{agent}", [(r["seed"], r["level_hash"]) for r in records[agent]])
        evals[agent] = {**summarize_episodes(records[agent]), "per_env": per_env[agent]}
    sheet = contact_sheet(sheet_frames, sheet_labels, columns=8, title=f"held-out levels ({cfg.split} split)")
    save_png(sheet, run.path / "levels.png")
    summary = run.write_summary(evals, wall_time_s=time.time() - t0, splits=run.split_report())
    run.close()
    summary["run_dir"] = str(run.path)
    return summary
