"""atlasva's estimators through the verl hook equal atlasva.rl on the same episodes.

The episodes run through atlasva's AgentLoop; verl's rows are built from them exactly as the agent loop
hands them to verl (:func:`verl_outputs`: prompt / response split, the episode total on the last token as
verl places ``reward_score``); the hook (:func:`atlasva_advantages`) must reproduce what atlasva's trainer
computes from its own full-sequence batch with :mod:`atlasva.rl`.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from atlasva import rl
from atlasva.envs.pool import InProcessEnvPool
from atlasva.integrations.verl.advantages import atlasva_advantages
from atlasva.integrations.verl.outputs import verl_outputs
from atlasva.policy import Policy, PolicyConfig, PolicyModel
from atlasva.policy.backends import GenerationOutput
from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig, RolloutResult
from atlasva.train.config import AlgorithmConfig
from atlasva.train.ppo import build_batch

ENV_CONFIG = {"format": "no_think", "obs_mode": "text", "step_penalty": -0.05}
SCRIPTS = [  # two levels x two episodes: different answers, so rewards differ within each group
    ["<answer>Up</answer>", "<answer>Left</answer>", "<answer>Down</answer>"],
    ["no tags", "<answer>Right, Right</answer>", "<answer>Up</answer>"],
]
SEEDS = [3, 3, 5, 5]


class Replay:
    def __init__(self, pm: PolicyModel, texts: list[str]) -> None:
        self.pm, self.texts, self.calls = pm, texts, 0

    def generate(self, prompts, *, seed=None, sampling=None, request_ids=None):
        text = self.texts[self.calls]
        self.calls += 1
        ids = self.pm.processor.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.pm.processor.eos_token_id]
        return [GenerationOutput(ids, text, [-0.2] * len(ids), "stop") for _ in prompts]


def rollouts(pm: PolicyModel, concat: bool) -> RolloutResult:
    """Four episodes (each with its own script) merged into one rollout result, like a trainer batch."""
    cfg = RolloutConfig(max_turns=3, max_tokens_per_turn=16, concat=concat)
    episodes, samples, per_episode = [], [], []
    for i, seed in enumerate(SEEDS):
        policy = Policy(Replay(pm, SCRIPTS[i % 2]), pm, PolicyConfig())
        res = AgentLoop(policy, InProcessEnvPool(), cfg).run([EpisodeRequest("sokoban", seed, ENV_CONFIG, group_id=f"g{seed}")])
        per_episode.append(res)
        episodes.append(res.episodes[0])
        samples.extend(replace(s, episode_index=i) for s in res.samples)
    merged = RolloutResult(episodes, samples, {})
    merged.per_episode = per_episode  # type: ignore[attr-defined]
    return merged


def verl_rows(result: RolloutResult, kl: float = 0.0):
    """verl's padded response tensors: rm_scores with the total on the last token, minus a per-token KL."""
    rows, uids = [], []
    for i, res in enumerate(result.per_episode):  # type: ignore[attr-defined]
        for out in verl_outputs(res, f"g{SEEDS[i]}_{i}"):
            rows.append(out)
            uids.append(f"g{SEEDS[i]}")
    width = max(len(r["response_ids"]) for r in rows)
    mask = torch.zeros(len(rows), width)
    rewards = torch.zeros(len(rows), width)
    for r, out in enumerate(rows):
        n = len(out["response_mask"])
        mask[r, :n] = torch.tensor(out["response_mask"], dtype=torch.float32)
        rewards[r, n - 1] = out["reward_score"]
    rewards = rewards - kl * mask
    return mask, rewards, [o["extra_fields"] for o in rows], uids, rows


def responses_of(result: RolloutResult, rows, full: torch.Tensor) -> torch.Tensor:
    """The response part of full-sequence tensors (row order as in verl_rows), right-aligned to verl's width."""
    width = max(len(r["response_ids"]) for r in rows)
    out = torch.zeros(len(rows), width)
    assert len(rows) == len(result.samples)  # verl_rows keeps the samples' order
    for r, row in enumerate(rows):
        p = len(row["prompt_ids"])
        n = len(row["response_ids"])
        out[r, :n] = full[r, p : p + n]
    return out


@pytest.fixture(scope="module")
def pm(tiny_policy_dir):
    return PolicyModel.from_pretrained(tiny_policy_dir)


@pytest.fixture(scope="module")
def concat(pm):
    return rollouts(pm, concat=True)


@pytest.mark.parametrize("estimator", ["bi_level_gae", "gae", "turn_grpo", "grpo"])
def test_concat_estimators_match_atlasva_rl(pm, concat, estimator):
    algo = AlgorithmConfig(estimator=estimator, gamma_turn=0.9, gamma_token=1.0 if estimator != "gae" else 0.99, lam=0.95)
    batch = build_batch(concat)
    mask, rewards, extras, uids, rows = verl_rows(concat)
    values_full = torch.randn(batch.loss_mask.shape, generator=torch.Generator().manual_seed(0)) * batch.loss_mask
    values = responses_of(concat, rows, values_full)
    adv, returns = atlasva_advantages(mask, rewards, values, extras, uids, algo)

    m, r, e = batch.loss_mask, batch.token_rewards, batch.turn_end_mask
    if estimator == "bi_level_gae":
        want, want_ret = rl.bi_level_gae(r, values_full, m, e, gamma_turn=0.9, gamma_token=1.0, lam=0.95)
        want = rl.masked_whiten(want, m)
    elif estimator == "gae":
        want, want_ret = rl.gae(r, values_full, m, gamma=0.99, lam=0.95)
        want = rl.masked_whiten(want, m)
    elif estimator == "turn_grpo":
        want = rl.turn_grpo_advantages(r, m, e, batch.group_ids, gamma=0.9)
        want_ret = want
    else:
        want = rl.grpo_advantages(torch.tensor([ep.total_reward for ep in concat.episodes]), m, batch.group_ids)
        want_ret = want
    assert torch.allclose(adv, responses_of(concat, rows, want), atol=1e-5)
    assert torch.allclose(returns, responses_of(concat, rows, want_ret * m), atol=1e-5)
    assert adv.abs().sum() > 0


def test_kl_in_reward_reaches_the_token_rewards(pm, concat):
    """verl's in-reward KL penalty (on every generated token) is kept on top of the per-turn rewards."""
    algo = AlgorithmConfig(estimator="bi_level_gae", gamma_turn=0.9, lam=1.0, whiten=False)
    batch = build_batch(concat)
    mask, rewards, extras, uids, rows = verl_rows(concat, kl=0.01)
    values = torch.zeros_like(mask)
    adv, _ = atlasva_advantages(mask, rewards, values, extras, uids, algo)
    want, _ = rl.bi_level_gae(batch.token_rewards - 0.01 * batch.loss_mask, torch.zeros_like(batch.loss_mask),
                              batch.loss_mask, batch.turn_end_mask, gamma_turn=0.9, gamma_token=1.0, lam=1.0)
    assert torch.allclose(adv, responses_of(concat, rows, want), atol=1e-5)


def test_turn_gae_on_per_turn_rows_matches_atlasva_rl(pm):
    result = rollouts(pm, concat=False)
    algo = AlgorithmConfig(estimator="turn_gae", gamma_turn=0.9, lam=0.95)
    batch = build_batch(result)
    mask, rewards, extras, uids, rows = verl_rows(result)
    values_full = torch.randn(batch.loss_mask.shape, generator=torch.Generator().manual_seed(1)) * batch.loss_mask
    values = responses_of(result, rows, values_full)
    adv, returns = atlasva_advantages(mask, rewards, values, extras, uids, algo)
    res = rl.turn_level_gae(batch.token_rewards.sum(dim=1), values_full, batch.loss_mask, batch.group_ids,
                            batch.episode_index, batch.turn_ids, gamma=0.9, lam=0.95, anchor="last")
    want = rl.masked_whiten(res.advantages, batch.loss_mask)
    assert torch.allclose(adv, responses_of(result, rows, want), atol=1e-5)
    anchor_return = (res.returns * res.value_mask).sum(dim=1, keepdim=True)
    assert torch.allclose(returns, responses_of(result, rows, anchor_return * batch.loss_mask), atol=1e-5)


def test_rows_from_another_agent_loop_are_refused(concat):
    mask, rewards, extras, uids, _ = verl_rows(concat)
    with pytest.raises(ValueError, match="atlasva"):
        atlasva_advantages(mask, rewards, None, [{}] * len(uids), uids, AlgorithmConfig(estimator="grpo"))
    with pytest.raises(ValueError, match="critic"):
        atlasva_advantages(mask, rewards, None, extras, uids, AlgorithmConfig(estimator="bi_level_gae"))
