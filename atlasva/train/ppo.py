"""One RL update from a rollout: token tensors, advantages (any estimator), PPO/GRPO loss, optimiser steps.

Rewards sit on each turn's last generated token (its turn end): env + format + world-model + the
memory's shaping term. The estimators and losses are the pure functions of :mod:`atlasva.rl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from atlasva import rl
from atlasva.rollout.loop import RolloutResult
from atlasva.train.config import AlgorithmConfig, TrainerSection
from atlasva.train.estimators import AdvantageResult


@dataclass
class Batch:
    """Right-padded token tensors of a rollout's samples, [N, L]."""

    encoded: list[Any]
    loss_mask: torch.Tensor  # float
    turn_end_mask: torch.Tensor  # bool
    token_rewards: torch.Tensor
    old_logprobs: torch.Tensor
    episode_index: list[int]
    group_ids: list[str]
    turn_ids: list[int]


def build_batch(result: RolloutResult) -> Batch:
    samples = result.samples
    width = max(len(s) for s in samples)
    n = len(samples)
    mask = torch.zeros(n, width)
    ends = torch.zeros(n, width, dtype=torch.bool)
    rewards = torch.zeros(n, width)
    old = torch.zeros(n, width)
    for r, s in enumerate(samples):
        mask[r, : len(s)] = torch.tensor(s.loss_mask, dtype=torch.float32)
        old[r, : len(s)] = torch.tensor(s.old_logprobs, dtype=torch.float32)
        turns = result.episodes[s.episode_index].turns
        for pos, k in zip(s.turn_ends, s.turn_indices):
            ends[r, pos] = True
            if k < len(turns):
                rewards[r, pos] = turns[k].reward
    return Batch(
        encoded=[s.encoded for s in samples],
        loss_mask=mask,
        turn_end_mask=ends,
        token_rewards=rewards,
        old_logprobs=old,
        episode_index=[s.episode_index for s in samples],
        group_ids=[result.episodes[s.episode_index].group_id for s in samples],
        turn_ids=[s.turn_indices[0] if s.turn_indices else 0 for s in samples],
    )


def ppo_update(policy: Any, optimizer: torch.optim.Optimizer, batch: Batch, adv: AdvantageResult,
               old_values: torch.Tensor | None, cfg: AlgorithmConfig, tc: TrainerSection, *,
               rng: np.random.Generator, ref_model: Any = None, keep: torch.Tensor | None = None,
               scale: float = 1.0) -> dict[str, float]:
    """``tc.ppo_epochs`` passes over the batch in minibatches of ``tc.minibatch_size`` rows, an optimiser
    step every ``tc.grad_accum`` minibatches. A minibatch whose loss is not finite is left out of the
    accumulated gradient (the others of its step still count) and counted in ``rl/skipped_minibatches``;
    statistics are logged only for minibatches that were used."""
    model = policy.model
    params = model.trainable_parameters()
    use_critic = adv.returns is not None and old_values is not None
    rows = (keep if keep is not None else torch.arange(len(batch.encoded))).tolist()
    stats: dict[str, list[float]] = {}
    skipped = 0
    temperature = tc.temperature
    model.train()
    for _ in range(tc.ppo_epochs):
        order = [rows[i] for i in rng.permutation(len(rows))]
        chunks = [order[i : i + tc.minibatch_size] for i in range(0, len(order), tc.minibatch_size)]
        optimizer.zero_grad(set_to_none=True)
        pending = 0  # minibatches accumulated since the last optimiser step
        for c_idx, idx in enumerate(chunks):
            enc = [batch.encoded[i] for i in idx]
            width = max(len(e) for e in enc)
            m = batch.loss_mask[idx, :width]
            scores = model.score(enc, temperature=temperature, positions=m.bool(), with_values=use_critic,
                                 with_entropy=cfg.entropy_coef > 0, detach_values=cfg.detach_critic)
            pg, pg_stats = rl.ppo_policy_loss(scores.logprobs, batch.old_logprobs[idx, :width],
                                              adv.advantages[idx, :width] * scale, m,
                                              clip_ratio=cfg.clip_ratio,
                                              clip_ratio_c=cfg.clip_ratio_c if cfg.clip_ratio_c > 1 else None,
                                              loss_agg=cfg.loss_agg)
            loss = pg
            terms: dict[str, float] = {"rl/pg_loss": pg.item(), **{f"rl/{k}": float(v) for k, v in pg_stats.items()}}
            if use_critic:
                vl, _ = rl.value_loss(scores.values, old_values[idx, :width], adv.returns[idx, :width],
                                      adv.value_mask[idx, :width], clip_range=cfg.value_clip or None,
                                      loss_agg=cfg.loss_agg)
                loss = loss + cfg.vf_coef * vl
                terms["rl/value_loss"] = vl.item()
            if cfg.entropy_coef > 0:
                ent = rl.aggregate_loss(scores.entropy, m, cfg.loss_agg)
                loss = loss - cfg.entropy_coef * ent
                terms["rl/entropy"] = ent.item()
            if cfg.kl_coef > 0 and ref_model is not None:
                with torch.no_grad():
                    ref = ref_model.score(enc, temperature=temperature, positions=m.bool()).logprobs
                kl = rl.kl_loss(scores.logprobs, ref, m, kind=cfg.kl_kind, loss_agg=cfg.loss_agg)
                loss = loss + cfg.kl_coef * kl
                terms["rl/kl"] = kl.item()
            if rl.all_finite(loss):
                (loss / tc.grad_accum).backward()
                pending += 1
                for k, v in terms.items():  # logged after the decision: a skipped minibatch adds no NaN
                    stats.setdefault(k, []).append(v)
            else:
                skipped += 1  # NaN/inf: leave it out; gradients already accumulated are kept
            if pending and ((c_idx + 1) % tc.grad_accum == 0 or c_idx == len(chunks) - 1):
                gn = torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
                if torch.isfinite(gn):
                    optimizer.step()
                    stats.setdefault("rl/grad_norm", []).append(float(gn))
                else:
                    skipped += pending
                optimizer.zero_grad(set_to_none=True)
                pending = 0
    model.eval()
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out["rl/skipped_minibatches"] = float(skipped)
    return out
