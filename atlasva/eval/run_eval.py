"""``atlasva eval``: evaluate a trained checkpoint (a Hugging Face folder) or a served / hosted model
(OpenAI-compatible) on held-out levels; writes per-episode JSONL and ``summary.json`` in a run folder."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from atlasva.eval.baselines import RunConfig
from atlasva.policy.config import PolicyConfig
from atlasva.rollout.loop import RolloutConfig


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
    seeds = spec.seeds(cfg.split, cfg.episodes)
    if cfg.policy.model.cpu_threads:
        import torch

        torch.set_num_threads(int(cfg.policy.model.cpu_threads))
    policy = Policy.from_config(cfg.policy, init_dir=run.path / "policy-init")
    snapshot = SkillMemory.load(cfg.memory_path).snapshot() if cfg.memory_path else None
    episodes, summary = evaluate_policy(
        policy, spec.env, seeds, env_config={**spec.config, **cfg.env.config}, rollout=cfg.rollout,
        snapshot=snapshot, batch_size=cfg.batch_size, temperature=cfg.temperature, desc=f"eval {cfg.stage}",
    )
    run.write_episodes(cfg.stage, [e.summary_record() for e in episodes])
    out = run.write_summary({cfg.stage: summary}, wall_time_s=time.time() - t0, env=spec.env,
                            backend=cfg.policy.backend)
    run.close()
    out["run_dir"] = str(run.path)
    return out


def eval_main(argv: list[str]) -> int:
    from atlasva.cli import config_parser, load_command_config
    from atlasva.runs import format_summary

    p = config_parser("atlasva eval", "Evaluate a checkpoint or a served model on held-out levels.",
                      "episodes=50 env.spec=sokoban")
    p.add_argument("--checkpoint", default=None, help="a Hugging Face folder (e.g. RUN/policy)")
    p.add_argument("--backend", choices=("hf", "openai"), default=None)
    p.add_argument("--model", default=None, help="model name on the OpenAI-compatible server")
    p.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:8000/v1")
    args = p.parse_args(argv)
    extra = [f"{key}={value}" for key, value in (
        ("policy.model.path", args.checkpoint), ("policy.backend", args.backend),
        ("policy.openai.model", args.model), ("policy.openai.base_url", args.base_url)) if value]
    loaded = load_command_config(EvalConfig, args, extra)
    if loaded is None:
        return 0
    summary = run_eval(*loaded)
    print(format_summary(summary))
    print(f"run folder: {summary['run_dir']}")
    return 0
