"""SFT warm start from solver demonstrations.

Demonstrations are recorded by the agent loop itself: the solver's answers (:func:`solver_script`)
replayed through :class:`AgentLoop` with a scripted backend, so each demo is token for token the sequence
a rollout of that answer would build (system prompt, memory injection, observations, turn layout, context
limits). In grounding / world-modeling formats the ``<observation>`` and ``<prediction>`` hold the env's
true relations before and after the turn, so the model learns to state them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from atlasva.envs.pool import InProcessEnvPool
from atlasva.envs.registry import make
from atlasva.rl import all_finite
from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig
from atlasva.rollout.scripted import scripted_policy, solver_script


@dataclass
class Demo:
    encoded: Any  # prompt + answer ids
    loss_mask: list[int]


def build_demos(policy: Any, env_name: str, env_config: dict[str, Any], seeds: list[int], *,
                rollout: RolloutConfig, snapshot: Any = None, batch_size: int = 64) -> list[Demo]:
    """Solver demonstrations on ``seeds``, laid out as ``rollout`` lays out episodes (one demo per episode
    when concatenated, one per turn otherwise). A model trained on one layout and rolled out in another
    sees contexts it never saw (measured: single-turn SFT broke a seeing policy's format on the second
    turn of concatenated rollouts)."""
    env = make(env_name, **env_config)
    try:
        scripts = {s: solver_script(env, s, rollout.max_turns) for s in tqdm(seeds, desc="plan demos", leave=False,
                                                                             disable=None)}
    finally:
        env.close()
    loop = AgentLoop(scripted_policy(scripts, policy.model), InProcessEnvPool(), rollout)
    demos: list[Demo] = []
    cut = 0
    for start in range(0, len(seeds), batch_size):
        reqs = [EpisodeRequest(env_name, s, dict(env_config), group_id=f"sft-{s}") for s in seeds[start : start + batch_size]]
        res = loop.run(reqs, snapshot)
        demos.extend(Demo(x.encoded, x.loss_mask) for x in res.samples)
        cut += sum(e.failure_kind == "context" or any(not t.metrics["format_valid"] for t in e.turns) for e in res.episodes)
    loop.pool.close()
    if cut:
        print(f"[sft] warning: {cut} demonstration(s) were cut by rollout limits (context or tokens per turn); "
              "they teach what a rollout could say, not the whole answer")
    return demos


def train_sft(policy: Any, demos: list[Demo], *, epochs: int, lr: float, batch_size: int, seed: int,
              log: Any = None) -> dict[str, float]:
    """Cross-entropy on answer tokens (loss mask 1); returns the last epoch's mean loss."""
    model = policy.model
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=lr)
    rng = np.random.default_rng(seed)
    model.train()
    last = float("nan")
    total_steps = epochs * ((len(demos) + batch_size - 1) // batch_size)
    bar = tqdm(total=total_steps, desc="sft", unit="batch", leave=False, disable=None)
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(demos))
        losses = []
        for start in range(0, len(order), batch_size):
            batch = [demos[i] for i in order[start : start + batch_size]]
            width = max(len(d.loss_mask) for d in batch)
            mask = torch.zeros(len(batch), width)
            for r, d in enumerate(batch):
                mask[r, : len(d.loss_mask)] = torch.tensor(d.loss_mask, dtype=torch.float32)
            scores = model.score([d.encoded for d in batch], positions=mask.bool())
            loss = -(scores.logprobs * mask).sum() / mask.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            if not all_finite(loss):
                bar.update(1)
                continue  # a non-finite loss skips the step instead of poisoning the weights
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if log is not None:
                log(step, {"sft/loss": losses[-1], "sft/epoch": epoch})
        last = float(np.mean(losses)) if losses else float("nan")
    bar.close()
    model.eval()
    return {"sft/final_loss": last, "sft/demos": float(len(demos))}
