"""``atlasva eval``: evaluate a trained checkpoint (a Hugging Face folder) or a served / hosted model
(OpenAI-compatible) on held-out levels; writes per-episode JSONL and ``summary.json`` in a run folder."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from atlasva.policy.config import PolicyConfig
from atlasva.rollout.loop import RolloutConfig
from atlasva.runs import RunConfig


@dataclass
class EvalEnvSection:
    spec: str = "frozenlake"
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    env: EvalEnvSection = field(default_factory=EvalEnvSection)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    episodes: int = 200
    split: str = "validation"
    distinct_levels: bool = True  # each episode on a level of its own (false: seeds may repeat levels)
    batch_size: int = 32
    temperature: float = 0.0
    memory_path: str = ""  # a saved SkillMemory folder whose layers are injected (optional)
    stage: str = "eval"  # the key under summary.json's "eval"
    run: RunConfig = field(default_factory=RunConfig)


def run_eval(cfg: Any, name: str) -> dict[str, Any]:
    from atlasva.config import to_dict
    from atlasva.envs.registry import load_spec
    from atlasva.eval.evaluate import evaluate_policy
    from atlasva.memory import SkillMemory
    from atlasva.policy import Policy
    from atlasva.runs import RunFolder

    t0 = time.time()
    run = RunFolder.create(f"eval-{name}", to_dict(cfg), root=cfg.run.root, resume=cfg.run.resume)
    spec = load_spec(cfg.env.spec)
    seeds = spec.seeds(cfg.split, cfg.episodes, overrides=cfg.env.config, distinct=cfg.distinct_levels)
    if cfg.policy.model.cpu_threads:
        import torch

        torch.set_num_threads(int(cfg.policy.model.cpu_threads))
    policy = Policy.from_config(cfg.policy, init_dir=run.path / "policy-init")
    snapshot = SkillMemory.load(cfg.memory_path).snapshot() if cfg.memory_path else None
    episodes, summary = evaluate_policy(
        policy, spec.env, seeds, env_config=spec.final_config(cfg.env.config), rollout=cfg.rollout,
        snapshot=snapshot, batch_size=cfg.batch_size, temperature=cfg.temperature, desc=f"eval {cfg.stage}",
    )
    run.write_episodes(cfg.stage, [e.summary_record() for e in episodes])
    run.record_levels(f"eval:{cfg.stage}", [(e.seed, e.level_hash) for e in episodes])
    out = run.write_summary({cfg.stage: summary}, wall_time_s=time.time() - t0, env=spec.env,
                            backend=cfg.policy.backend, splits=run.split_report())
    run.close()
    out["run_dir"] = str(run.path)
    return out
