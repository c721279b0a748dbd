"""Advantage estimators, registered where they are defined, each with one signature.

An estimator is an adapter ``(batch, values, result, cfg) -> AdvantageResult`` around a pure function
of :mod:`atlasva.rl`, plus what the rest of the trainer must know about it: whether it trains a critic,
which rollout layout it needs, whether it compares episodes of one level (groups), and the discount
it applies *between turns* — the γ the memory's shaping term must use so that over an episode the
shaping telescopes to γ^T·Φ(s_T) − Φ(s_0) under this very estimator (potential-based, so it cannot
change which policy is optimal). The config's lists of names derive from this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from atlasva import rl

if TYPE_CHECKING:  # the config imports this module; annotations only
    from atlasva.train.config import AlgorithmConfig

LAYOUTS = ("concat", "turn", "any")  # whole episodes, one sample per turn, either


class AdvantageResult(NamedTuple):
    advantages: torch.Tensor  # [N, L], 0 off the loss mask
    returns: torch.Tensor | None  # [N, L] critic targets (None without a critic)
    value_mask: torch.Tensor  # [N, L] where the critic is trained


@dataclass(frozen=True)
class Estimator:
    name: str
    compute: Callable[[Any, torch.Tensor | None, Any, AlgorithmConfig], AdvantageResult]
    turn_discount: Callable[[AlgorithmConfig], float]  # γ between turns, as this estimator discounts
    critic: bool
    layout: str
    groups: bool = False  # compares episodes of one level: needs trainer.group_size >= 2


ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str, *, turn_discount: Callable[[AlgorithmConfig], float], critic: bool,
                       layout: str, groups: bool = False) -> Callable:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}; accepted: {LAYOUTS}")

    def wrap(fn: Callable) -> Callable:
        ESTIMATORS[name] = Estimator(name, fn, turn_discount, critic, layout, groups)
        return fn

    return wrap


def get_estimator(name: str) -> Estimator:
    if name not in ESTIMATORS:
        raise ValueError(f"algorithm.estimator={name!r}; accepted: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


# Token GAE discounts per policy token (observation tokens skipped), so rewards sitting on turn ends are
# γ_token^(tokens generated in between) apart: only γ_token = 1 gives a per-turn discount a potential can
# match, and TrainConfig.validate refuses shaping with any other value.
@register_estimator("gae", turn_discount=lambda cfg: cfg.gamma_token, critic=True, layout="concat")
def _gae(batch: Any, values: torch.Tensor | None, result: Any, cfg: AlgorithmConfig) -> AdvantageResult:
    adv, returns = rl.gae(batch.token_rewards, values, batch.loss_mask, gamma=cfg.gamma_token, lam=cfg.lam)
    return AdvantageResult(adv, returns, batch.loss_mask.clone())


@register_estimator("bi_level_gae", turn_discount=lambda cfg: cfg.gamma_turn, critic=True, layout="concat")
def _bi_level_gae(batch: Any, values: torch.Tensor | None, result: Any, cfg: AlgorithmConfig) -> AdvantageResult:
    adv, returns = rl.bi_level_gae(batch.token_rewards, values, batch.loss_mask, batch.turn_end_mask,
                                   gamma_turn=cfg.gamma_turn, gamma_token=cfg.gamma_token, lam=cfg.lam)
    return AdvantageResult(adv, returns, batch.loss_mask.clone())


@register_estimator("turn_gae", turn_discount=lambda cfg: cfg.gamma_turn, critic=True, layout="turn")
def _turn_gae(batch: Any, values: torch.Tensor | None, result: Any, cfg: AlgorithmConfig) -> AdvantageResult:
    res = rl.turn_level_gae(batch.token_rewards.sum(dim=1), values, batch.loss_mask, batch.group_ids,
                            batch.episode_index, batch.turn_ids, gamma=cfg.gamma_turn, lam=cfg.lam, anchor="last")
    return AdvantageResult(res.advantages, res.returns, res.value_mask.float())


# Trajectory GRPO scores an episode by its undiscounted reward sum: the shaping must not discount either.
@register_estimator("grpo", turn_discount=lambda cfg: 1.0, critic=False, layout="any", groups=True)
def _grpo(batch: Any, values: torch.Tensor | None, result: Any, cfg: AlgorithmConfig) -> AdvantageResult:
    scores = torch.tensor([result.episodes[i].total_reward for i in batch.episode_index])
    adv = rl.grpo_advantages(scores, batch.loss_mask, batch.group_ids, norm_by_std=cfg.norm_by_std)
    return AdvantageResult(adv, None, batch.loss_mask.clone())


@register_estimator("turn_grpo", turn_discount=lambda cfg: cfg.gamma_turn, critic=False, layout="concat",
                    groups=True)
def _turn_grpo(batch: Any, values: torch.Tensor | None, result: Any, cfg: AlgorithmConfig) -> AdvantageResult:
    adv = rl.turn_grpo_advantages(batch.token_rewards, batch.loss_mask, batch.turn_end_mask, batch.group_ids,
                                  gamma=cfg.gamma_turn, norm_by_std=cfg.norm_by_std)
    return AdvantageResult(adv, None, batch.loss_mask.clone())


def compute_advantages(batch: Any, values: torch.Tensor | None, result: Any, cfg: AlgorithmConfig) -> AdvantageResult:
    """Advantages of ``cfg.estimator`` (whitened for critic estimators when ``cfg.whiten``), 0 off the mask."""
    est = get_estimator(cfg.estimator)
    res = est.compute(batch, values, result, cfg)
    adv = res.advantages
    if cfg.whiten and est.critic:
        adv = rl.masked_whiten(adv, batch.loss_mask)
    return AdvantageResult(adv * batch.loss_mask, res.returns, res.value_mask)
