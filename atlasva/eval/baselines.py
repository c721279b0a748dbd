"""Reference agents on held-out levels: the optimal solver (upper bound) and a random agent
(lower bound). ``atlasva baselines`` runs them and writes a run folder with ``summary.json``,
per-episode JSONL and a contact sheet of the evaluated levels."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from atlasva import formats
from atlasva.envs.base import AtlasEnv
from atlasva.envs.registry import EnvSpec, load_spec
from atlasva.eval.images import contact_sheet, save_png
from atlasva.rollout.episode import Episode, Turn
from atlasva.runs import RunFolder, summarize_episodes

AGENTS = ("solver", "random")


@dataclass
class RunConfig:
    root: str = "runs"
    resume: bool = True


@dataclass
class BaselinesConfig:
    envs: list[str] = field(default_factory=lambda: ["sokoban", "frozenlake"])
    agents: list[str] = field(default_factory=lambda: ["solver", "random"])
    split: str = "validation"
    episodes: int = 100  # per env and agent
    max_turns: int = 5
    format: str = "free_think"
    obs_mode: str = "vision"
    seed: int = 0  # the random agent's RNG
    sheet_levels: int = 16  # levels per env on the contact sheet
    run: RunConfig = field(default_factory=RunConfig)


class SolverAgent:
    """Answers with the optimal plan from the current state, capped per turn."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def act(self, env: AtlasEnv) -> str:
        plan = env.turn_plan() or [env.action_names[0]]
        return formats.answer(plan, self.fmt, action_sep=env.action_sep)


class RandomAgent:
    """Well-formed answers with 1..max uniformly random legal actions."""

    def __init__(self, fmt: str, seed: int) -> None:
        self.fmt = fmt
        self.rng = np.random.default_rng(seed)

    def act(self, env: AtlasEnv) -> str:
        if not env.action_names:
            raise ValueError(f"{env.env_name} has no discrete action names; the random agent cannot act")
        k = int(self.rng.integers(1, env.max_actions_per_turn + 1))
        acts = [env.action_names[int(i)] for i in self.rng.integers(0, len(env.action_names), size=k)]
        return formats.answer(acts, self.fmt, action_sep=env.action_sep)


def run_episode(env: AtlasEnv, agent: Any, seed: int, max_turns: int, env_name: str) -> Episode:
    obs, info = env.reset(seed=seed)
    ep = Episode(
        env_name=env_name,
        seed=seed,
        level_hash=info["level_hash"],
        start_state=info["state"],
        start_cell=info["cells"][0],
        heuristics=env.grid_heuristics(),
    )
    for _ in range(max_turns):
        text = agent.act(env)
        prompt = obs["text"]
        obs, _, terminated, truncated, info = env.step(text)
        ep.turns.append(
            Turn(
                prompt_text=prompt,
                response_text=text,
                actions=info["actions"],
                cells=info["cells"],
                action_targets=info["action_targets"],
                rewards={**info["reward_components"], "shaping": 0.0},
                metrics=info["metrics"],
                state=info["state"],
                terminated=terminated,
                truncated=truncated,
                failure=info["failure"],
            )
        )
        if terminated or truncated:
            break
    if ep.turns and ep.turns[-1].metrics.get("success"):
        ep.finish("success")
    elif ep.turns and ep.turns[-1].terminated:
        ep.finish("failure", ep.turns[-1].failure or "terminal")
    else:
        ep.finish("truncated", "max_turns")
    return ep


def run_baselines(cfg: BaselinesConfig, config_name: str = "baselines", config_dict: dict | None = None) -> dict[str, Any]:
    for a in cfg.agents:
        if a not in AGENTS:
            raise ValueError(f"unknown agent {a!r}; accepted: {AGENTS}")
    formats.check_format(cfg.format)
    t0 = time.time()
    run = RunFolder.create(config_name, config_dict or {}, root=cfg.run.root, resume=cfg.run.resume)
    specs: dict[str, EnvSpec] = {name: load_spec(name) for name in cfg.envs}
    seeds = {name: spec.seeds(cfg.split, cfg.episodes) for name, spec in specs.items()}
    records: dict[str, list[dict]] = {a: [] for a in cfg.agents}
    per_env: dict[str, dict[str, dict]] = {a: {} for a in cfg.agents}
    sheet_frames, sheet_labels = [], []
    for name, spec in specs.items():
        env = spec.make(obs_mode=cfg.obs_mode, format=cfg.format)
        for s in seeds[name][: cfg.sheet_levels]:
            env.reset(seed=s)
            sheet_frames.append(env.render_rgb())
            sheet_labels.append(f"{name} {s}")
        for agent_name in cfg.agents:
            agent = SolverAgent(cfg.format) if agent_name == "solver" else RandomAgent(cfg.format, cfg.seed)
            recs = []
            bar = tqdm(seeds[name], desc=f"{agent_name:>6} on {name}", unit="ep", leave=False, disable=None)
            for s in bar:
                recs.append(run_episode(env, agent, s, cfg.max_turns, name).summary_record())
                bar.set_postfix(success=f"{np.mean([r['success'] for r in recs]):.2f}", refresh=False)
            records[agent_name].extend(recs)
            per_env[agent_name][name] = summarize_episodes(recs)
    evals = {}
    for agent_name in cfg.agents:
        run.write_episodes(agent_name, records[agent_name])
        evals[agent_name] = {**summarize_episodes(records[agent_name]), "per_env": per_env[agent_name]}
    sheet = contact_sheet(sheet_frames, sheet_labels, columns=8, title=f"held-out levels ({cfg.split} split)")
    save_png(sheet, run.path / "levels.png")
    summary = run.write_summary(evals, wall_time_s=time.time() - t0)
    run.close()
    summary["run_dir"] = str(run.path)
    return summary
