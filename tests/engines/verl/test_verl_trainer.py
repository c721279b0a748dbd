"""The ``atlasva`` verl trainer's advantage step end to end on its TransferQueue fields (a dict-backed stand-in
for ``transfer_queue``): it reads verl's nested rows, updates and publishes the memory from the batch's
episodes, and writes back exactly what :func:`atlasva_advantages` computes."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from omegaconf import OmegaConf
from tensordict import NonTensorStack, TensorDict
from test_verl_estimators import (  # noqa: F401  (fixtures and helpers)
    pm,  # noqa: F401
    rollouts,
    verl_rows,
)

import atlasva.integrations.verl.trainer as trainer_mod
from atlasva.integrations.verl.advantages import atlasva_advantages
from atlasva.integrations.verl.memory_sync import SnapshotStore
from atlasva.integrations.verl.trainer import AtlasvaPPOTrainer
from atlasva.memory import MemoryConfig, SkillMemory
from atlasva.train.config import AlgorithmConfig


class Meta(SimpleNamespace):
    """The part of verl's KVBatchMeta the step uses."""

    def __len__(self) -> int:
        return len(self.keys)


class FakeTQ:
    """kv_batch_get / kv_batch_put over a dict of rows (nested response tensors, as verl stores them)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def kv_batch_get(self, keys, partition_id, select_fields):
        cols = {}
        for f in select_fields:
            vals = [self.rows[k][f] for k in keys]
            if isinstance(vals[0], torch.Tensor):
                cols[f] = torch.nested.as_nested_tensor(vals, layout=torch.jagged)
            else:
                cols[f] = NonTensorStack(*vals)
        return TensorDict(cols, batch_size=len(keys))

    def kv_batch_put(self, keys, partition_id, fields):
        for i, k in enumerate(keys):
            for f, v in fields.items():
                self.rows[k][f] = v[i]
        return SimpleNamespace(keys=keys, partition_id=partition_id)


def test_advantage_step_reads_tq_rows_updates_memory_and_writes_back(pm, tmp_path, monkeypatch):  # noqa: F811
    result = rollouts(pm, concat=True)
    mask, rewards, extras, uids, rows = verl_rows(result)
    values = torch.randn(mask.shape, generator=torch.Generator().manual_seed(2)) * mask
    tq = FakeTQ()
    keys = [f"{u}_{i}_0" for i, u in enumerate(uids)]
    for r, k in enumerate(keys):
        n = len(rows[r]["response_ids"])
        tq.rows[k] = {"uid": uids[r], "response_mask": mask[r, :n].long(), "rm_scores": rewards[r, :n],
                      "values": values[r, :n], "extra_fields": extras[r]}
    monkeypatch.setattr(trainer_mod, "tq", tq)

    algo = AlgorithmConfig(estimator="bi_level_gae", gamma_turn=0.9, lam=0.95)
    trainer = object.__new__(AtlasvaPPOTrainer)  # the advantage step needs no workers
    trainer.config = OmegaConf.create({"algorithm": {"use_kl_in_reward": False}})
    trainer.use_critic, trainer.algorithm = True, algo
    trainer.memory = SkillMemory(MemoryConfig())
    trainer.store = SnapshotStore(tmp_path / "snaps")
    metrics: dict = {}
    trainer._compute_advantage(Meta(keys=keys, partition_id="train"), metrics)

    want_adv, want_ret = atlasva_advantages(mask, rewards, values, extras, uids, algo)
    for r, k in enumerate(keys):
        n = len(rows[r]["response_ids"])
        assert torch.allclose(tq.rows[k]["advantages"], want_adv[r, :n], atol=1e-6)
        assert torch.allclose(tq.rows[k]["returns"], want_ret[r, :n], atol=1e-6)
    assert trainer.memory.version == 1 and trainer.store.latest_version() == 1
    assert metrics["atlasva/memory_episodes"] == len(result.episodes)
