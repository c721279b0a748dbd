"""The verl agent loop runs atlasva's episode: same tokens, masks, rewards and images as atlasva's own loop.

Both sides get the same scripted model outputs: verl's through a fake server manager (the shape of
verl's own CPU test), atlasva's through a replay backend. Sokoban from images, 3 turns, memory injection
(the atlas image) and shaping from a published snapshot.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, DictConfigWrap
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

from atlasva.envs.pool import InProcessEnvPool
from atlasva.integrations.verl.agent_loop import AtlasvaAgentLoop
from atlasva.integrations.verl.memory_sync import SnapshotStore
from atlasva.memory import MemoryConfig, SkillMemory
from atlasva.policy import Policy, PolicyConfig, PolicyModel
from atlasva.policy.backends import GenerationOutput
from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig

ENV_CONFIG = {"format": "no_think", "dim_room": [6, 6], "num_boxes": 1, "tile_size": 28, "obs_mode": "vision"}
ANSWERS = ["<answer>Up</answer>", "oops, no tags", "<answer>Down, Left</answer>"]
ROLLOUT = RolloutConfig(max_turns=3, max_tokens_per_turn=24, max_context_tokens=4096)
GAMMA_TURN = 0.9


def scripted_ids(pm: PolicyModel) -> list[tuple[list[int], list[float]]]:
    out = []
    for k, text in enumerate(ANSWERS):
        ids = pm.processor.tokenizer(text, add_special_tokens=False)["input_ids"] + [pm.processor.eos_token_id]
        out.append((ids, [-0.1 * (k + 1) - 0.01 * j for j in range(len(ids))]))
    return out


class ReplayBackend:
    """atlasva side: the scripted outputs, in order."""

    def __init__(self, pm: PolicyModel, script: list[tuple[list[int], list[float]]]) -> None:
        self.pm, self.script, self.calls = pm, script, 0

    def generate(self, prompts, *, seed=None, sampling=None, request_ids=None):
        outs = []
        for _ in prompts:
            ids, lps = self.script[self.calls]
            self.calls += 1
            outs.append(GenerationOutput(ids, self.pm.processor.decode(ids[:-1]), lps, "stop"))
        return outs


class FakeServerManager:
    """verl side: verl's server-manager interface, answering the same script and recording each request."""

    def __init__(self, script: list[tuple[list[int], list[float]]]) -> None:
        self.script, self.requests = script, []

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       image_data: list[Any] | None = None, **kwargs: Any) -> TokenOutput:
        self.requests.append({"request_id": request_id, "prompt_ids": list(prompt_ids), "params": dict(sampling_params),
                              "images": [np.asarray(im) for im in image_data or []]})
        ids, lps = self.script[len(self.requests) - 1]
        return TokenOutput(token_ids=list(ids), log_probs=list(lps))


@pytest.fixture(scope="module")
def pm(tiny_policy_dir):
    return PolicyModel.from_pretrained(tiny_policy_dir)


@pytest.fixture(scope="module")
def memory(pm):
    """A memory that has learned something (so injection shows an atlas and shaping is non-zero)."""
    mem = SkillMemory(MemoryConfig(inject_exemplars=False, inject_skills=False))
    script = scripted_ids(pm)
    for seed in (11, 12, 13):
        policy = Policy(ReplayBackend(pm, script), pm, PolicyConfig())
        res = AgentLoop(policy, InProcessEnvPool(), ROLLOUT, gamma_turn=GAMMA_TURN).run(
            [EpisodeRequest("sokoban", seed, ENV_CONFIG, group_id=f"g{seed}")])
        mem.update(res.episodes)
    return mem


def verl_config(tiny_policy_dir, tmp_path, layout: str, memory_dir: str) -> Any:
    return OmegaConf.create({
        "actor_rollout_ref": {"rollout": {"prompt_length": 2048, "response_length": 2048,
                                          "multi_turn": {"tool_config_path": None}},
                              "model": {"path": str(tiny_policy_dir)}},
        "data": {"tool_config_path": None, "apply_chat_template_kwargs": {}},
        "atlasva": {"model_path": str(tiny_policy_dir), "layout": layout, "gamma_turn": GAMMA_TURN,
                    "memory_dir": memory_dir, "rollout": {"max_turns": ROLLOUT.max_turns,
                    "max_tokens_per_turn": ROLLOUT.max_tokens_per_turn,
                    "max_context_tokens": ROLLOUT.max_context_tokens, "window": 0}},
    })


def run_verl(tiny_policy_dir, tmp_path, pm, memory, layout: str) -> tuple[Any, FakeServerManager]:
    store = SnapshotStore(tmp_path / f"memory-{layout}")
    store.publish(memory)
    config = verl_config(tiny_policy_dir, tmp_path, layout, str(store.root))
    server = FakeServerManager(scripted_ids(pm))
    loop = AtlasvaAgentLoop(
        trainer_config=DictConfigWrap(config), server_manager=server,
        tokenizer=AutoTokenizer.from_pretrained(str(tiny_policy_dir)), processor=None,
        dataset_cls=RLHFDataset, data_config=DictConfigWrap(config.data),
    )
    row = {"env": "sokoban", "seed": 7, "env_config": json.dumps(ENV_CONFIG), "uid": "level-7", "session_id": 0,
           "index": 0, "data_source": "sokoban", "raw_prompt": []}
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}
    out = asyncio.run(loop.run(params, **row))
    return out, server


def run_atlasva(pm, memory, concat: bool) -> Any:
    policy = Policy(ReplayBackend(pm, scripted_ids(pm)), pm, PolicyConfig())
    cfg = RolloutConfig(**{**ROLLOUT.__dict__, "concat": concat})
    return AgentLoop(policy, InProcessEnvPool(), cfg, gamma_turn=GAMMA_TURN).run(
        [EpisodeRequest("sokoban", 7, ENV_CONFIG, group_id="level-7")], memory.snapshot())


def same_images(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_concat_episode_equals_atlasva_loop(tiny_policy_dir, tmp_path, pm, memory):
    out, server = run_verl(tiny_policy_dir, tmp_path, pm, memory, "concat")
    want = run_atlasva(pm, memory, concat=True)
    episode, sample = want.episodes[0], want.samples[0]
    assert isinstance(out, AgentLoopOutput)
    assert episode.n_turns == 3 and out.num_turns == 6
    ids = sample.encoded.input_ids
    p = len(out.prompt_ids)
    assert out.prompt_ids + out.response_ids == ids
    assert out.response_mask == sample.loss_mask[p:] and sample.loss_mask[:p] == [0] * p
    assert out.response_logprobs == pytest.approx(sample.old_logprobs[p:])
    # rewards: per turn (env + format + world model + shaping), on each turn's end token; the total
    extra = out.extra_fields["atlasva"]
    assert extra["turn_rewards"] == pytest.approx([t.reward for t in episode.turns])
    assert [e + p for e in extra["turn_ends"]] == sample.turn_ends
    assert out.reward_score == pytest.approx(episode.total_reward)
    assert any(t.rewards["shaping"] != 0 for t in episode.turns)  # the memory's shaping reached the rewards
    # images: every image of the trajectory in order (observations and the injected atlas)
    assert same_images(out.multi_modal_data["images"], sample.encoded.images)
    assert len(sample.encoded.images) > episode.n_turns  # the memory's atlas image is among them
    # each generation saw the prompt so far with its images, one request id per episode, the token mask on
    starts = [i for i, m in enumerate(sample.loss_mask) if m and not sample.loss_mask[i - 1]]
    assert [r["prompt_ids"] for r in server.requests] == [ids[:s] for s in starts]
    assert same_images(server.requests[-1]["images"], sample.encoded.images)
    assert len({r["request_id"] for r in server.requests}) == 1
    bias = server.requests[0]["params"]["logit_bias"]  # the tiny tokenizer fills its vocab: block the few
    assert bias[pm.processor.image_token_id] == -100.0 and pm.processor.eos_token_id not in bias
    assert extra["memory_version"] == memory.version and "episode" in extra


def test_per_turn_outputs_equal_atlasva_turn_samples(tiny_policy_dir, tmp_path, pm, memory):
    outs, _ = run_verl(tiny_policy_dir, tmp_path, pm, memory, "per_turn")
    want = run_atlasva(pm, memory, concat=False)
    assert len(outs) == len(want.samples) == 3
    for k, (out, sample) in enumerate(zip(outs, want.samples)):
        p = len(out.prompt_ids)
        assert out.prompt_ids + out.response_ids == sample.encoded.input_ids
        assert out.response_mask == [1] * len(out.response_ids) == sample.loss_mask[p:]
        assert same_images(out.multi_modal_data.get("images", []), sample.encoded.images)
        assert out.extra_fields["atlasva"]["turn_rewards"] == pytest.approx([want.episodes[0].turns[k].reward])
        assert out.extra_fields["atlasva"]["turn_ids"] == [k]
    assert ["episode" in o.extra_fields["atlasva"] for o in outs] == [False, False, True]
