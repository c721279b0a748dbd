"""The agent loop: token-in/token-out sequences, masks, turn ends, rewards, limits, layouts."""

from dataclasses import replace

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
        # behaviour log-probs exist exactly on trained tokens: a sampled token's probability is below 1
        # (random-init model, temperature 1), and observation tokens carry none
        assert all((lp < 0) if m else lp == 0 for lp, m in zip(s.old_logprobs, mask))


def test_rewards_shaping_and_garbage_output(policy):
    memory = SkillMemory(MemoryConfig())
    snap = memory.snapshot()
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=2, max_tokens_per_turn=8), gamma_turn=0.9)
    res = loop.run(_requests(), snap, seed=1)
    nonzero = 0
    for ep in res.episodes:
        assert ep.memory_version == snap.version and ep.heuristics["shape"] == [4, 4]
        meta = {"env": "frozenlake", "level_hash": ep.level_hash, "heuristics": ep.heuristics}
        phi = snap.view(meta)[3]  # the potential grid; F is computed here by hand from it
        for t in ep.turns:
            assert set(t.rewards) == {"env", "format", "world_model", "shaping"}
            (r0, c0), (r1, c1) = t.cells[0], t.cells[-1]
            expected = 0.9 * (0.0 if t.terminated else phi[r1, c1]) - phi[r0, c0]
            assert t.rewards["shaping"] == pytest.approx(expected, abs=1e-12)
            nonzero += t.rewards["shaping"] != 0
            if not t.metrics["format_valid"]:  # a random-init model's garbage is a normal event
                assert t.actions == [] and t.rewards["env"] == 0.0
    assert nonzero  # γ = 0.9 reached the shaping (at γ = 1 a turn that stays put would give 0)
    memory.update(res.episodes)
    assert memory.snapshot().version > snap.version


def test_context_limit_never_cuts_an_image(policy):
    # five turns take ~500 tokens here: 400 ends every episode by context after a few turns
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=5, max_tokens_per_turn=8, max_context_tokens=400))
    res = loop.run(_requests(2), seed=2)
    assert all(ep.failure_kind == "context" and 1 <= ep.n_turns < 5 for ep in res.episodes)
    for s in res.samples:
        assert len(s) <= 400
        grid = s.encoded.image_grid_thw
        assert sum(1 for t in s.encoded.input_ids if t == policy.processor.image_token_id) == int(grid.prod(-1).sum()) // 4


def test_first_prompt_too_long_ends_the_episode_not_the_batch(policy):
    # the first observation alone does not fit: the episode ends as truncated by context, nothing is generated
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=3, max_tokens_per_turn=8, max_context_tokens=40))
    res = loop.run(_requests(2), seed=2)
    assert [(ep.outcome, ep.failure_kind, ep.n_turns) for ep in res.episodes] == [("truncated", "context", 0)] * 2
    assert res.samples == []


def test_each_slot_keeps_its_own_generation_budget(policy):
    # a long prompt (text + image) next to a short one (image only): the short one's answer is not cut to
    # the long one's room
    reqs = [EpisodeRequest("frozenlake", 0, {"obs_mode": "both"}), EpisodeRequest("frozenlake", 1, {"obs_mode": "vision"})]
    long_len = len(AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=1, max_tokens_per_turn=4))
                   .run(reqs[:1], seed=0).samples[0].loss_mask) - 4
    cap = long_len + 6  # room: 6 tokens for the long prompt, far more for the short one
    loop = AgentLoop(policy, InProcessEnvPool(), RolloutConfig(max_turns=1, max_tokens_per_turn=40, max_context_tokens=cap))
    res = loop.run(reqs, seed=5)
    gen = {s.episode_index: sum(s.loss_mask) for s in res.samples}
    assert all(len(s) <= cap for s in res.samples)
    assert gen[0] <= 6 < gen[1]  # a random-init model rarely stops early: the short prompt uses its room


class _NoLogprobs:
    def __init__(self, backend):
        self.backend = backend

    def generate(self, prompts, **kw):
        return [replace(o, logprobs=[]) for o in self.backend.generate(prompts, **kw)]


def test_missing_logprobs_are_an_error_not_zeros(policy):
    broken = Policy(_NoLogprobs(policy.backend), model=policy.model, config=policy.config)
    loop = AgentLoop(broken, InProcessEnvPool(), RolloutConfig(max_turns=1, max_tokens_per_turn=6))
    with pytest.raises(RuntimeError, match="log-prob"):
        loop.run(_requests(1), seed=0)


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


@pytest.mark.parametrize("concat,window", [(True, 0), (False, 1)])
def test_sft_demos_are_the_solver_replayed_through_the_loop(policy, concat, window):
    # demos come from the agent loop (scripted backend); here they are checked against the chat template
    # laid out by hand: system + first observation, each answer + end-of-turn, next user turn, …
    from atlasva.envs.registry import make
    from atlasva.policy.processor import content_from_obs
    from atlasva.rollout.loop import turn_messages
    from atlasva.train.sft import build_demos

    config = {"format": "no_think", "random_start_goal": False}
    snap = SkillMemory(MemoryConfig(inject_exemplars=False, inject_skills=False)).snapshot()
    seed = 1000001
    demos = build_demos(policy, "frozenlake", config, [seed], snapshot=snap,
                        rollout=RolloutConfig(max_turns=5, max_tokens_per_turn=40, concat=concat, window=window))
    env = make("frozenlake", **config)
    obs, info = env.reset(seed=seed)
    meta = {"env": "frozenlake", "level_hash": info["level_hash"], "heuristics": info["heuristics"],
            "cell": info["cells"][0], "seed": seed}
    proc, system = policy.processor, env.system_prompt()
    expected, history, seq, mask = [], [], None, []
    for turn in range(5):
        answer = f"<answer>{', '.join(env.turn_plan())}</answer>"
        text, images = snap.inject(meta, obs, turn)
        answer_ids = proc.encode_text(answer).input_ids + [proc.eos_token_id]
        if concat:
            part = (policy.encode_prompt([{"role": "system", "content": system},
                                          {"role": "user", "content": content_from_obs(text, list(images))}])
                    if seq is None else policy.encode_user_turn(content_from_obs(text, list(images))))
            seq = part if seq is None else seq + part
            mask += [0] * len(part)
            seq, mask = seq + answer_ids, mask + [1] * len(answer_ids)
        else:
            prompt = policy.encode_prompt(turn_messages(system, history, text, list(images), window))
            expected.append((prompt + answer_ids, [0] * len(prompt) + [1] * len(answer_ids)))
        history.append((text, list(images), answer))
        obs, _, terminated, truncated, info = env.step(answer)
        meta["cell"] = info["cells"][-1]
        if terminated or truncated:
            break
    assert terminated and info["metrics"]["success"] and len(history) >= 2  # a solved multi-turn episode
    if concat:
        expected = [(seq, mask)]
    assert len(demos) == len(expected)
    for demo, (enc, m) in zip(demos, expected):
        assert demo.encoded.input_ids == enc.input_ids
        assert demo.loss_mask == m
        torch.testing.assert_close(demo.encoded.pixel_values, enc.pixel_values)
        assert torch.equal(demo.encoded.image_grid_thw, enc.image_grid_thw)


def test_scripted_backend_needs_the_loops_request_ids():
    from atlasva.rollout.scripted import ScriptedBackend

    with pytest.raises(ValueError, match="request id"):
        ScriptedBackend({0: ["<answer>Up</answer>"]}).generate(["prompt"])
