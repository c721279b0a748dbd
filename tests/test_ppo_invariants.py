"""PPO on the real tiny policy: behaviour log-probs match the trainer's scores (ratio 1, nothing clipped on
the first minibatch), a one-token bandit moves probability towards its rewarded token, a skipped minibatch
keeps the gradients accumulated before it, and non-finite advantages skip the batch instead of the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlasva.envs.pool import InProcessEnvPool
from atlasva.policy import Policy, PolicyConfig
from atlasva.policy.processor import Encoded
from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig
from atlasva.train.config import AlgorithmConfig, TrainerSection
from atlasva.train.estimators import AdvantageResult, compute_advantages
from atlasva.train.ppo import Batch, build_batch, ppo_update


@pytest.fixture()
def policy(tiny_policy_dir):
    torch.set_num_threads(1)
    cfg = PolicyConfig()
    cfg.model.path = str(tiny_policy_dir)
    cfg.sampling.temperature = 1.0
    return Policy.from_config(cfg)


def _rollout(policy, n=4, turns=2):
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=turns, max_tokens_per_turn=8))
    reqs = [EpisodeRequest("frozenlake", s, {"format": "no_think"}, group_id=f"g{s // 2}") for s in range(n)]
    return loop.run(reqs, seed=7)


def test_first_minibatch_has_ratio_one_and_nothing_clipped(policy):
    res = _rollout(policy)
    batch = build_batch(res)
    algo = AlgorithmConfig(estimator="grpo", kl_coef=0.0)
    adv = compute_advantages(batch, None, res, algo)
    opt = torch.optim.SGD(policy.model.trainable_parameters(), lr=0.0)  # one look, no move
    tc = TrainerSection(ppo_epochs=1, minibatch_size=len(batch.encoded), temperature=1.0)
    stats = ppo_update(policy, opt, batch, adv, None, algo, tc, rng=np.random.default_rng(0))
    assert stats["rl/ratio_mean"] == pytest.approx(1.0, abs=1e-3)
    assert stats["rl/clipfrac"] == 0.0
    assert abs(stats["rl/approx_kl"]) < 1e-3


def test_one_token_bandit_moves_towards_the_rewarded_token(policy):
    # one prompt, 16 one-token answers; reward 1 for the token sampled most often, GRPO advantages, PPO steps
    prompt = policy.encode_prompt([{"role": "user", "content": "pick"}])
    sampling = policy.config.sampling.__class__(temperature=1.0, max_new_tokens=1)
    outs = policy.generate([prompt] * 16, seed=3, sampling=sampling)
    tokens = [o.token_ids[0] for o in outs]
    target = max(set(tokens), key=tokens.count)
    seqs = [Encoded(prompt.input_ids + [t]) for t in tokens]
    n, width = len(seqs), len(prompt) + 1
    mask = torch.zeros(n, width)
    mask[:, -1] = 1
    batch = Batch(encoded=seqs, loss_mask=mask, turn_end_mask=mask.bool(), token_rewards=torch.zeros(n, width),
                  old_logprobs=torch.zeros(n, width), episode_index=list(range(n)), group_ids=["g"] * n,
                  turn_ids=[0] * n)
    batch.old_logprobs[:, -1] = torch.tensor([o.logprobs[0] for o in outs])
    scores = torch.tensor([1.0 if t == target else 0.0 for t in tokens])
    from atlasva import rl

    adv = AdvantageResult(rl.grpo_advantages(scores, mask, batch.group_ids), None, mask)

    def p_target() -> float:
        with torch.no_grad():
            enc = [Encoded(prompt.input_ids + [target])]
            return float(policy.model.score(enc, temperature=1.0, positions=mask[:1].bool()).logprobs[0, -1].exp())

    before = p_target()
    opt = torch.optim.AdamW(policy.model.trainable_parameters(), lr=1e-3)
    tc = TrainerSection(ppo_epochs=4, minibatch_size=8, temperature=1.0)
    ppo_update(policy, opt, batch, adv, None, AlgorithmConfig(estimator="grpo", kl_coef=0.0), tc,
               rng=np.random.default_rng(0))
    assert p_target() > before * 1.2, (before, p_target())


class _InOrder:
    """An rng stand-in whose permutation is the identity: minibatches in row order."""

    @staticmethod
    def permutation(n: int) -> np.ndarray:
        return np.arange(n)


def test_a_skipped_minibatch_keeps_the_gradients_accumulated_before_it(policy):
    res = _rollout(policy, n=4, turns=1)
    batch = build_batch(res)
    algo = AlgorithmConfig(estimator="grpo", kl_coef=0.0)
    good = torch.ones_like(batch.loss_mask)
    poisoned = good.clone()
    poisoned[2:] = float("nan")  # the second minibatch's loss is NaN
    tc = TrainerSection(ppo_epochs=1, minibatch_size=2, grad_accum=2, temperature=1.0)

    def step(adv: torch.Tensor) -> list[torch.Tensor]:
        model = policy.model
        start = {k: v.detach().clone() for k, v in model.base.state_dict().items()}
        opt = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
        stats = ppo_update(policy, opt, batch, AdvantageResult(adv, None, batch.loss_mask), None, algo, tc,
                           rng=_InOrder())
        delta = [(p.detach() - start[k]).clone() for k, p in model.base.named_parameters() if p.requires_grad]
        model.base.load_state_dict(start)
        return delta, stats

    only_first, _ = step(torch.where(torch.arange(4)[:, None] < 2, good, torch.zeros_like(good)))
    with_skip, stats = step(poisoned)
    assert stats["rl/skipped_minibatches"] == 1
    assert any(d.abs().sum() > 0 for d in with_skip)  # the first minibatch's gradient was applied …
    for a, b in zip(only_first, with_skip):  # … exactly as if the second had contributed nothing
        torch.testing.assert_close(a, b)


def test_non_finite_advantages_skip_the_batch_not_the_run(tiny_policy_dir, tmp_path, caplog):
    from atlasva.config import load_config
    from atlasva.train import TrainConfig, Trainer

    cfg, _ = load_config(TrainConfig, None, [
        f"policy.model.path={tiny_policy_dir}", f"run.root={tmp_path}", "trainer.steps=1", "sft.enable=false",
        "eval.stages=[]", "trainer.levels_per_step=2", "rollout.max_turns=1", "rollout.max_tokens_per_turn=6",
        "trainer.inspect_every=0", "algorithm.estimator=bi_level_gae", "trainer.group_size=1"])  # NaN critic values
    trainer = Trainer(cfg)

    def nan_values(*args, **kwargs):
        out = original(*args, **kwargs)
        if kwargs.get("with_values"):
            out.values.fill_(float("nan"))
        return out

    original = trainer.policy.model.score
    trainer.policy.model.score = nan_values
    before = [p.detach().clone() for p in trainer.policy.model.trainable_parameters()]
    with caplog.at_level("WARNING"):
        trainer.train()
    assert "skipped the batch" in caplog.text
    rows = trainer.run.read_metrics()
    assert [r["rl/skipped_batch"] for r in rows] == [1.0]
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.model.trainable_parameters()))
