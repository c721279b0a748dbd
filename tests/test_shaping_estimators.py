"""The memory's shaping stays potential-based under every estimator: with the discount the trainer derives
for it (``TrainConfig.shaping_gamma``), the return each estimator assigns to the first turn of an episode
whose only rewards are the shaping terms is γ^T·Φ(s_T) − Φ(s_0) (−Φ(s_0) when the episode terminated)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlasva.config import load_config
from atlasva.memory.shaping import turn_shaping
from atlasva.train import TrainConfig
from atlasva.train.estimators import ESTIMATORS, compute_advantages
from atlasva.train.ppo import Batch

GEN, OBS = 3, 2  # generated / observation tokens per turn in the synthetic samples


def _config(estimator: str, concat: bool, gamma_turn: float = 0.9) -> TrainConfig:
    cfg = TrainConfig()
    cfg.algorithm.estimator = estimator
    cfg.algorithm.gamma_turn = gamma_turn
    cfg.algorithm.lam = 1.0
    cfg.algorithm.whiten = False
    cfg.algorithm.norm_by_std = False
    cfg.rollout.concat = concat
    cfg.trainer.group_size = 2
    cfg.validate()
    return cfg


def _episode_rewards(phi: np.ndarray, cells: list[tuple[int, int]], terminated: bool, gamma: float) -> list[float]:
    """Per-turn shaping F_t, exactly as the agent loop computes it (one cell move per turn)."""
    return [turn_shaping(phi, [list(cells[t]), list(cells[t + 1])], terminated and t == len(cells) - 2, gamma)
            for t in range(len(cells) - 1)]


def _batch(episodes: list[list[float]], concat: bool) -> tuple[Batch, SimpleNamespace]:
    """Token tensors for episodes given their per-turn rewards; all in one group (GRPO compares them)."""
    rows = []  # (episode, turn ids, mask, turn ends, rewards)
    for e, rewards in enumerate(episodes):
        turns = [list(range(len(rewards)))] if concat else [[k] for k in range(len(rewards))]
        for ks in turns:
            mask, ends, toks = [], [], []
            for k in ks:
                mask += [0] * OBS + [1] * GEN
                ends += [False] * (OBS + GEN - 1) + [True]
                toks += [0.0] * (OBS + GEN - 1) + [rewards[k]]
            rows.append((e, ks, mask, ends, toks))
    width = max(len(r[2]) for r in rows)

    def pad(x, v):
        return x + [v] * (width - len(x))

    batch = Batch(
        encoded=[None] * len(rows),
        loss_mask=torch.tensor([pad(r[2], 0) for r in rows], dtype=torch.float32),
        turn_end_mask=torch.tensor([pad(r[3], False) for r in rows]),
        token_rewards=torch.tensor([pad(r[4], 0.0) for r in rows], dtype=torch.float64),
        old_logprobs=torch.zeros(len(rows), width),
        episode_index=[r[0] for r in rows],
        group_ids=["g"] * len(rows),
        turn_ids=[r[1][0] for r in rows],
    )
    result = SimpleNamespace(episodes=[SimpleNamespace(total_reward=float(sum(r))) for r in episodes])
    return batch, result


def _first_turn_return(cfg: TrainConfig, rewards: list[float]) -> float:
    """The return the estimator gives the first turn of an episode with these rewards.

    Critic estimators: with zero values and λ = 1 the advantage is the return. Group estimators: the
    episode is compared with an all-zero partner of the same length, so (without std normalisation) the
    first-turn advantage is half its return."""
    concat = cfg.rollout.concat
    partner = [0.0] * len(rewards)
    batch, result = _batch([rewards, partner], concat)
    critic = ESTIMATORS[cfg.algorithm.estimator].critic
    values = torch.zeros_like(batch.token_rewards) if critic else None
    adv = compute_advantages(batch, values, result, cfg.algorithm).advantages
    first = int(batch.loss_mask[0].nonzero()[0])  # the first generated token of episode 0, turn 0
    value = float(adv[0, first])
    return value if critic else 2.0 * value


ARMS = [("gae", True), ("bi_level_gae", True), ("turn_gae", False), ("grpo", True), ("grpo", False),
        ("turn_grpo", True)]


def test_every_registered_estimator_and_layout_is_covered():
    layouts = {name: {"concat": [True], "turn": [False], "any": [True, False]}[e.layout] for name, e in ESTIMATORS.items()}
    assert sorted(ARMS) == sorted((name, c) for name, cs in layouts.items() for c in cs)


@pytest.mark.parametrize("estimator,concat", ARMS)
@settings(max_examples=25, deadline=None)
@given(
    phi=st.lists(st.floats(-0.1, 0.1, allow_nan=False), min_size=9, max_size=9),
    path=st.lists(st.integers(0, 8), min_size=2, max_size=6),
    terminated=st.booleans(),
)
def test_shaping_telescopes_under_each_estimator(estimator, concat, phi, path, terminated):
    cfg = _config(estimator, concat)
    gamma = cfg.shaping_gamma()
    grid = np.array(phi, dtype=np.float64).reshape(3, 3)
    cells = [divmod(i, 3) for i in path]
    rewards = _episode_rewards(grid, cells, terminated, gamma)
    T = len(rewards)
    end = 0.0 if terminated else grid[cells[-1]]
    assert _first_turn_return(cfg, rewards) == pytest.approx(gamma**T * end - grid[cells[0]], abs=1e-6)  # float32 scores


def test_the_old_mismatch_does_not_telescope():
    # what the shipped GRPO configs did before: F with γ = 0.95 summed undiscounted. Staying on a cell of
    # negative potential earns a bonus every turn — the lingering reward the derived γ removes.
    grid = np.full((3, 3), -0.1)
    rewards = _episode_rewards(grid, [(1, 1)] * 5, False, 0.95)
    assert sum(rewards) == pytest.approx(4 * 0.05 * 0.1)  # (1 − γ)·|Φ| per turn, not Φ(s_T) − Φ(s_0) = 0
    assert _config("grpo", True, gamma_turn=0.95).shaping_gamma() == 1.0


def test_gae_with_token_discount_and_shaping_is_refused():
    cfg = TrainConfig()
    cfg.algorithm.estimator = "gae"
    cfg.algorithm.gamma_token = 0.99
    with pytest.raises(ValueError, match="gamma_token"):
        cfg.validate()
    cfg.memory.shaping = False
    cfg.validate()  # without shaping the token discount is the user's choice
    cfg.algorithm.gamma_token = 1.0
    cfg.rollout.concat = False
    with pytest.raises(ValueError, match="turn_gae"):
        cfg.validate()  # token GAE on one-turn samples would never see later turns


# the training configs (demo.yaml configures `atlasva baselines`)
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if p.stem != "demo")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_shape_with_their_estimators_discount(path):
    cfg, _ = load_config(TrainConfig, str(path), [])
    cfg.validate()
    a = cfg.algorithm
    expected = {"grpo": 1.0, "gae": a.gamma_token}.get(a.estimator, a.gamma_turn)
    assert cfg.shaping_gamma() == expected
