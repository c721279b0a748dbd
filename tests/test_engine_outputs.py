"""The verl-free half of the verl engine (atlasva.integrations.verl: outputs, memory sync, dataset rows);
the verl half is tested in verl's own environment (`make test-verl`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atlasva.envs.pool import InProcessEnvPool
from atlasva.integrations.verl.dataset import AtlasvaEnvDataset, write_manifest
from atlasva.integrations.verl.memory_sync import SnapshotStore
from atlasva.integrations.verl.outputs import episode_from_payload, episode_payload, verl_outputs
from atlasva.memory import MemoryConfig, SkillMemory
from atlasva.policy import Policy, PolicyConfig, PolicyModel
from atlasva.policy.backends import GenerationOutput
from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig

ENV = {"format": "no_think", "obs_mode": "vision"}
ANSWERS = ["<answer>Up</answer>", "<answer>Left, Left</answer>", "<answer>Down</answer>"]


class Replay:
    def __init__(self, pm: PolicyModel) -> None:
        self.pm, self.calls = pm, 0

    def generate(self, prompts, *, seed=None, sampling=None, request_ids=None):
        text = ANSWERS[self.calls % len(ANSWERS)]
        self.calls += 1
        ids = self.pm.processor.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.pm.processor.eos_token_id]
        return [GenerationOutput(ids, text, [-0.3] * len(ids), "stop") for _ in prompts]


@pytest.fixture(scope="module")
def rollouts(tiny_policy_dir):
    pm = PolicyModel.from_pretrained(tiny_policy_dir)
    out = []
    for seed in (1, 2, 2, 4):
        loop = AgentLoop(Policy(Replay(pm), pm, PolicyConfig()), InProcessEnvPool(), RolloutConfig(max_turns=3))
        out.append(loop.run([EpisodeRequest("sokoban", seed, ENV, group_id=f"g{seed}")]))
    return out


def test_memory_from_payloads_equals_memory_from_episodes(rollouts):
    """Episodes cross process boundaries as payloads; the memory learns exactly what it learns in-process."""
    episodes = [r.episodes[0] for r in rollouts]
    direct, remote = SkillMemory(MemoryConfig()), SkillMemory(MemoryConfig())
    direct.update(episodes)
    payloads = [episode_payload(e) for e in episodes]
    json.dumps([p["record"] for p in payloads])  # the record is JSON-native; frames travel as arrays
    remote.update([episode_from_payload(p) for p in payloads])
    assert direct.state_equal(remote) and direct.version == remote.version == 1
    assert direct.exemplars  # frames were needed (exemplar key frames), and they arrived


def test_outputs_split_prompt_and_carry_turns(rollouts):
    res = rollouts[0]
    (out,) = verl_outputs(res, "g1_0")
    sample, episode = res.samples[0], res.episodes[0]
    p = len(out["prompt_ids"])
    assert out["prompt_ids"] + out["response_ids"] == sample.encoded.input_ids and sample.loss_mask[p] == 1
    extra = out["extra_fields"]["atlasva"]
    assert [e + p for e in extra["turn_ends"]] == sample.turn_ends
    assert {out["response_ids"][e] for e in extra["turn_ends"]} == {rollouts_eos(sample)}
    assert sum(extra["turn_rewards"]) == pytest.approx(out["reward_score"]) == pytest.approx(episode.total_reward)
    assert out["extra_fields"]["reward_extra_info"]["turns"] == episode.n_turns
    assert len(out["images"]) == episode.n_turns  # one observation image per turn (no memory here)


def rollouts_eos(sample) -> int:
    return sample.encoded.input_ids[sample.turn_ends[-1]]  # every scripted turn ends with the end-of-turn token


def test_snapshot_store_versions(tmp_path, rollouts):
    store = SnapshotStore(tmp_path / "snaps", keep=2)
    assert store.snapshot() is None and store.latest_version() is None
    mem = SkillMemory(MemoryConfig())
    assert store.publish(mem) == 0 and store.snapshot().version == 0
    for r in rollouts:
        mem.update(r.episodes)
        store.publish(mem)
    reader = SnapshotStore(tmp_path / "snaps")  # another process's view
    assert reader.snapshot().version == mem.version == 4
    assert reader.snapshot() is reader.snapshot()  # loaded once per version
    assert sorted(p.name for p in (tmp_path / "snaps").glob("v*")) == ["v00000003", "v00000004"]


def test_manifest_rows(tmp_path):
    path = write_manifest(tmp_path / "train.json", env="sokoban", env_config={"format": "no_think"}, split="train",
                          seeds=[3, 9], level_hashes=["aa", "bb"])
    ds = AtlasvaEnvDataset([str(path)])
    assert len(ds) == 2 and ds[1]["seed"] == 9 and ds[1]["level_hash"] == "bb" and ds[0]["agent_name"] == "atlasva"
    assert json.loads(ds[0]["env_config"]) == {"format": "no_think"}
    with pytest.raises(ValueError, match="level hashes"):
        write_manifest(tmp_path / "x.json", env="sokoban", env_config={}, split="train", seeds=[1], level_hashes=[])
    with pytest.raises(FileNotFoundError, match="manifest"):
        AtlasvaEnvDataset(str(tmp_path / "missing.json"))
    assert np.array_equal(np.asarray([r["index"] for r in ds.rows]), [0, 1])
