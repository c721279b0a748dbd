"""Trainer throughput on the tiny model (CPU): rollout (env turns/s, generated tokens/s, the share of
rollout wall time spent outside ``Policy.generate``) and update (trained tokens/s of PPO with a critic).

    .venv/bin/python benchmarks/bench_train.py [--levels 16] [--steps 3]

Goal (issue 4): the share of rollout time outside generation (envs, memory, image preprocessing,
bookkeeping) < 10%.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from atlasva.envs.pool import InProcessEnvPool
    from atlasva.memory import MemoryConfig, SkillMemory
    from atlasva.policy import Policy, PolicyConfig
    from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig
    from atlasva.train.config import AlgorithmConfig, TrainerSection
    from atlasva.train.estimators import compute_advantages
    from atlasva.train.ppo import build_batch, ppo_update

    cfg = PolicyConfig()
    cfg.model.init_dir = str(Path(tempfile.gettempdir()) / "atlasva-bench-policy")
    cfg.model.value_head = True
    policy = Policy.from_config(cfg)
    memory = SkillMemory(MemoryConfig())
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=5, max_tokens_per_turn=24), gamma_turn=0.95)
    opt = torch.optim.AdamW(policy.model.trainable_parameters(), lr=1e-4)
    algo = AlgorithmConfig()
    rows = []
    for step in range(args.steps):
        reqs = [EpisodeRequest("frozenlake", step * 1000 + i, {"format": "no_think"}) for i in range(args.levels)]
        res = loop.run(reqs, memory.snapshot(), seed=step)
        memory.update(res.episodes)
        batch = build_batch(res)
        t0 = time.perf_counter()
        with torch.no_grad():
            values = policy.model.score(batch.encoded, positions=batch.loss_mask.bool(), with_values=True).values
        values = values[:, : batch.loss_mask.shape[1]] * batch.loss_mask
        adv = compute_advantages(batch, values, res, algo)
        ppo_update(policy, opt, batch, adv, values, algo, TrainerSection(ppo_epochs=1, minibatch_size=8, temperature=1.0),
                   rng=np.random.default_rng(step))
        t_update = time.perf_counter() - t0
        n_tokens = sum(len(e) for e in batch.encoded)
        rows.append({**res.stats, "update/tokens_per_s": n_tokens / t_update, "update/s": t_update})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print(f"rollout: {mean['rollout/turns_per_s']:.1f} env turns/s, {mean['rollout/gen_tokens_per_s']:.0f} generated tokens/s")
    print(f"rollout time outside generate: {100 * mean['rollout/outside_generate_share']:.1f}% (goal < 10%)")
    print(f"update: {mean['update/tokens_per_s']:.0f} tokens/s (forward for values + PPO epoch with critic)")
    print(json.dumps(mean, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
