"""The agent loop: token-in/token-out sequences, masks, turn ends, rewards, limits, layouts."""

import numpy as np
import pytest
import torch

from atlasva.envs.pool import InProcessEnvPool
from atlasva.memory import MemoryConfig, SkillMemory
from atlasva.policy import Policy, PolicyConfig
from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    torch.set_num_threads(1)
    cfg = PolicyConfig()
    cfg.model.path = str(tiny_policy_dir)
    cfg.sampling.temperature = 1.0
    return Policy.from_config(cfg)


def _requests(n=4, fmt="no_think"):
    return [EpisodeRequest("frozenlake", s, {"format": fmt}, group_id=f"g{s // 2}") for s in range(n)]


def test_concat_sequences_masks_and_turn_ends(policy):
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=3, max_tokens_per_turn=12))
    res = loop.run(_requests(), seed=0)
    assert len(res.samples) == 4 and len(res.episodes) == 4
    image_id = policy.processor.image_token_id
    for s in res.samples:
        ep = res.episodes[s.episode_index]
        ids, mask = s.encoded.input_ids, s.loss_mask
        assert len(ids) == len(mask) == len(s.old_logprobs)
        assert len(s.turn_ends) == ep.n_turns >= 1
        # the loss mask covers exactly the generated spans; each ends at its turn end
        spans, start = [], None
        for i, m in enumerate(mask + [0]):
            if m and start is None:
                start = i
            if not m and start is not None:
                spans.append((start, i - 1))
                start = None
        assert [e for _, e in spans] == s.turn_ends
        # every generated span decodes to that turn's text (ids kept as generated, never re-tokenised)
        for (a, b), turn in zip(spans, ep.turns):
            gen = ids[a : b + 1]
            assert image_id not in gen
            assert policy.processor.decode([t for t in gen if t != policy.processor.eos_token_id]) == turn.response_text
        # observation tokens (image pads included) are never trained
        assert all(m == 0 for t, m in zip(ids, mask) if t == image_id)
        grid = s.encoded.image_grid_thw
        assert sum(1 for t in ids if t == image_id) == int(grid.prod(-1).sum()) // 4
        # behaviour log-probs exist exactly on trained tokens
        assert all((lp != 0) == bool(m) or lp == 0 for lp, m in zip(s.old_logprobs, mask))


def test_rewards_shaping_and_garbage_output(policy):
    memory = SkillMemory(MemoryConfig())
    snap = memory.snapshot()
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=2, max_tokens_per_turn=8), gamma_turn=0.9)
    res = loop.run(_requests(), snap, seed=1)
    for ep in res.episodes:
        assert ep.memory_version == snap.version and ep.heuristics["shape"] == [4, 4]
        meta = {"env": "frozenlake", "level_hash": ep.level_hash, "heuristics": ep.heuristics}
        for t in ep.turns:
            assert set(t.rewards) == {"env", "format", "world_model", "shaping"}
            expected = snap.shaping(meta, t.cells, t.terminated, 0.9)
            assert t.rewards["shaping"] == pytest.approx(expected)
            if not t.metrics["format_valid"]:  # a random-init model's garbage is a normal event
                assert t.actions == [] and t.rewards["env"] == 0.0
    memory.update(res.episodes)
    assert memory.snapshot().version > snap.version


def test_context_limit_never_cuts_an_image(policy):
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=5, max_tokens_per_turn=8, max_context_tokens=520))
    res = loop.run(_requests(2), seed=2)
    for s in res.samples:
        ep = res.episodes[s.episode_index]
        assert len(s) <= 520
        grid = s.encoded.image_grid_thw
        assert sum(1 for t in s.encoded.input_ids if t == policy.processor.image_token_id) == int(grid.prod(-1).sum()) // 4
        if ep.failure_kind == "context":
            assert ep.n_turns < 5


def test_non_concat_one_sample_per_turn_with_window(policy):
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=3, max_tokens_per_turn=8, concat=False, window=1))
    res = loop.run(_requests(2), seed=3)
    assert len(res.samples) == sum(ep.n_turns for ep in res.episodes)
    for s in res.samples:
        assert len(s.turn_ends) == 1 and s.turn_ends[0] == len(s) - 1
        n_images = s.encoded.num_images
        # the current observation, plus the previous turn's (window=1) from the second turn on
        assert n_images == (1 if s.turn_indices[0] == 0 else 2)


def test_stats_report_generation_share(policy):
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=1, max_tokens_per_turn=6))
    res = loop.run(_requests(2), seed=4)
    assert 0.0 <= res.stats["rollout/outside_generate_share"] < 1.0
    assert res.stats["rollout/gen_tokens_per_s"] > 0
    assert np.isfinite(list(res.stats.values())).all()


class _ReplayBackend:
    """Answers each generate call with the next scripted answer (one episode at a time)."""

    def __init__(self, processor, answers):
        self.processor, self.answers = processor, list(answers)

    def generate(self, prompts, *, seed=None, sampling=None):
        from atlasva.policy.backends import GenerationOutput

        text = self.answers.pop(0)
        ids = self.processor.encode_text(text).input_ids + [self.processor.eos_token_id]
        return [GenerationOutput(token_ids=ids, text=text, logprobs=[0.0] * len(ids), finish_reason="stop")]


@pytest.mark.parametrize("concat,window", [(True, 0), (False, 1)])
def test_sft_demos_match_the_loop_layout(policy, concat, window):
    # SFT must train on the very sequences a rollout builds: replaying the solver's answers through the
    # agent loop gives the demos token for token (images included) and the same loss mask
    from atlasva.envs.registry import make
    from atlasva.train.sft import build_demos

    config = {"format": "no_think", "random_start_goal": False}
    memory = SkillMemory(MemoryConfig(inject_exemplars=False, inject_skills=False))
    snap = memory.snapshot()
    seed = 1000001
    demos = build_demos(policy, "frozenlake", config, [seed], max_turns=5, snapshot=snap, concat=concat, window=window)
    env = make("frozenlake", **config)
    env.reset(seed=seed)
    answers = []
    while True:
        plan = env.turn_plan()
        answers.append(f"<answer>{', '.join(plan)}</answer>")
        _, _, terminated, truncated, _ = env.step(answers[-1])
        if terminated or truncated:
            break
    assert len(answers) >= 2  # a multi-turn episode, or the test proves little
    replay = Policy(_ReplayBackend(policy.processor, answers), model=policy.model, config=policy.config)
    loop = AgentLoop(replay, InProcessEnvPool(), RolloutConfig(max_turns=5, max_tokens_per_turn=40, concat=concat,
                                                                window=window))
    res = loop.run([EpisodeRequest("frozenlake", seed, config)], snap, seed=0)
    assert res.episodes[0].success
    assert len(demos) == len(res.samples) == (1 if concat else len(answers))
    for demo, sample in zip(demos, res.samples):
        assert demo.encoded.input_ids == sample.encoded.input_ids
        assert demo.loss_mask == sample.loss_mask
        torch.testing.assert_close(demo.encoded.pixel_values, sample.encoded.pixel_values)
        assert torch.equal(demo.encoded.image_grid_thw, sample.encoded.image_grid_thw)
