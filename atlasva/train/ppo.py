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
from atlasva.train.config import CRITIC_ESTIMATORS, AlgorithmConfig


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


def compute_advantages(batch: Batch, values: torch.Tensor | None, result: RolloutResult,
                       cfg: AlgorithmConfig) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(advantages [N, L], returns [N, L] or None, value mask [N, L])."""
    m = batch.loss_mask
    est = cfg.estimator
    value_mask = m.clone()
    returns = None
    if est == "gae":
        adv, returns = rl.gae(batch.token_rewards, values, m, gamma=cfg.gamma_token, lam=cfg.lam)
    elif est == "bi_level_gae":
        adv, returns = rl.bi_level_gae(batch.token_rewards, values, m, batch.turn_end_mask,
                                       gamma_turn=cfg.gamma_turn, gamma_token=cfg.gamma_token, lam=cfg.lam)
    elif est == "turn_gae":
        turn_rewards = batch.token_rewards.sum(dim=1)
        res = rl.turn_level_gae(turn_rewards, values, m, batch.group_ids, batch.episode_index, batch.turn_ids,
                                gamma=cfg.gamma_turn, lam=cfg.lam, anchor="last")
        adv, returns, value_mask = res.advantages, res.returns, res.value_mask.float()
    elif est == "grpo":
        scores = torch.tensor([result.episodes[i].total_reward for i in batch.episode_index])
        adv = rl.grpo_advantages(scores, m, batch.group_ids, norm_by_std=cfg.norm_by_std)
    elif est == "turn_grpo":
        adv = rl.turn_grpo_advantages(batch.token_rewards, m, batch.turn_end_mask, batch.group_ids,
                                      gamma=cfg.gamma_turn, norm_by_std=cfg.norm_by_std)
    else:  # validated in TrainConfig.validate
        raise ValueError(f"unknown estimator {est!r}")
    if cfg.whiten and est in CRITIC_ESTIMATORS:
        adv = rl.masked_whiten(adv, m)
    return adv * m, returns, value_mask


def ppo_update(policy: Any, optimizer: torch.optim.Optimizer, batch: Batch, advantages: torch.Tensor,
               returns: torch.Tensor | None, old_values: torch.Tensor | None, value_mask: torch.Tensor,
               cfg: AlgorithmConfig, *, epochs: int, minibatch_size: int, grad_accum: int, max_grad_norm: float,
               temperature: float, rng: np.random.Generator, ref_model: Any = None,
               keep: torch.Tensor | None = None, scale: float = 1.0) -> dict[str, float]:
    model = policy.model
    params = model.trainable_parameters()
    use_critic = returns is not None and old_values is not None
    rows = (keep if keep is not None else torch.arange(len(batch.encoded))).tolist()
    stats: dict[str, list[float]] = {}
    skipped = 0
    model.train()
    for _ in range(epochs):
        order = [rows[i] for i in rng.permutation(len(rows))]
        chunks = [order[i : i + minibatch_size] for i in range(0, len(order), minibatch_size)]
        optimizer.zero_grad(set_to_none=True)
        for c_idx, idx in enumerate(chunks):
            enc = [batch.encoded[i] for i in idx]
            width = max(len(e) for e in enc)
            m = batch.loss_mask[idx, :width]
            scores = model.score(enc, temperature=temperature, positions=m.bool(), with_values=use_critic,
                                 with_entropy=cfg.entropy_coef > 0, detach_values=cfg.detach_critic)
            adv = advantages[idx, :width] * scale
            pg, pg_stats = rl.ppo_policy_loss(scores.logprobs, batch.old_logprobs[idx, :width], adv, m,
                                              clip_ratio=cfg.clip_ratio,
                                              clip_ratio_c=cfg.clip_ratio_c if cfg.clip_ratio_c > 1 else None,
                                              loss_agg=cfg.loss_agg)
            loss = pg
            if use_critic:
                vl, v_stats = rl.value_loss(scores.values, old_values[idx, :width], returns[idx, :width],
                                            value_mask[idx, :width], clip_range=cfg.value_clip or None, loss_agg=cfg.loss_agg)
                loss = loss + cfg.vf_coef * vl
                stats.setdefault("rl/value_loss", []).append(vl.item())
            if cfg.entropy_coef > 0:
                ent = rl.aggregate_loss(scores.entropy, m, cfg.loss_agg)
                loss = loss - cfg.entropy_coef * ent
                stats.setdefault("rl/entropy", []).append(ent.item())
            if cfg.kl_coef > 0 and ref_model is not None:
                with torch.no_grad():
                    ref = ref_model.score(enc, temperature=temperature, positions=m.bool()).logprobs
                kl = rl.kl_loss(scores.logprobs, ref, m, kind=cfg.kl_kind, loss_agg=cfg.loss_agg)
                loss = loss + cfg.kl_coef * kl
                stats.setdefault("rl/kl", []).append(kl.item())
            if not rl.all_finite(loss):
                skipped += 1  # NaN/inf: skip this minibatch, log it, keep training
                optimizer.zero_grad(set_to_none=True)
                continue
            (loss / grad_accum).backward()
            stats.setdefault("rl/pg_loss", []).append(pg.item())
            for k, v in pg_stats.items():
                stats.setdefault(f"rl/{k}", []).append(float(v))
            if (c_idx + 1) % grad_accum == 0 or c_idx == len(chunks) - 1:
                gn = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                if torch.isfinite(gn):
                    optimizer.step()
                    stats.setdefault("rl/grad_norm", []).append(float(gn))
                else:
                    skipped += 1
                optimizer.zero_grad(set_to_none=True)
    model.eval()
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out["rl/skipped_minibatches"] = float(skipped)
    return out
