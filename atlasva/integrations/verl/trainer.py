"""verl v1 trainer ``atlasva``: verl's synchronous PPO trainer with two steps replaced.

- the advantage step (:meth:`AtlasvaPPOTrainer._compute_advantage`): atlasva's estimators (bi-level GAE,
  turn-level GAE, turn GRPO, GAE, GRPO) on per-turn rewards, through :func:`.advantages.atlasva_advantages`;
  verl's ``register_adv_est`` hook cannot do this (it gets no critic values and no turn structure);
- before it, the memory update: the batch's episode records (sent back by the agent loop) update the
  trainer's :class:`~atlasva.memory.SkillMemory`, and the new version is published to the rollout
  workers (:class:`.memory_sync.SnapshotStore`); the memory is saved with every verl checkpoint and
  restored on resume.

Selected by ``trainer.v1.trainer_mode=atlasva``; the module must be imported in verl's task-runner process
(the launcher's Ray ``worker_process_setup_hook`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transfer_queue as tq
from tensordict import TensorDict
from verl.protocol import DataProto
from verl.trainer.ppo.ray_trainer import apply_kl_penalty
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.workers.utils.padding import response_to_nested

from atlasva.integrations.verl.advantages import atlasva_advantages, turn_extras
from atlasva.integrations.verl.memory_sync import store_at
from atlasva.integrations.verl.outputs import episode_from_payload
from atlasva.memory import MemoryConfig, SkillMemory
from atlasva.train.config import AlgorithmConfig

MEMORY_CKPT = "atlasva_memory"


def algorithm_config(section: Any) -> AlgorithmConfig:
    raw = dict(section["algorithm"])
    return AlgorithmConfig(**raw)


@register_trainer("atlasva")
class AtlasvaPPOTrainer(PPOTrainerSync):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        section = config.get("atlasva")
        if section is None:
            raise ValueError("trainer.v1.trainer_mode=atlasva needs the `atlasva` config section "
                             "(start runs with `atlasva train CONFIG engine=verl`)")
        self.algorithm = algorithm_config(section)
        self.memory: SkillMemory | None = None
        self.store = None
        if section.get("memory_dir"):
            self.memory = SkillMemory(MemoryConfig.from_dict(dict(section["memory"])))
            self.store = store_at(section["memory_dir"])
            self.store.publish(self.memory)  # version 0 before the first rollout

    # ------------------------------------------------------------------ memory
    def update_memory(self, extras: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
        """The batch's finished episodes (one payload each) → a new memory version, published."""
        if self.memory is None:
            return
        episodes = [episode_from_payload(e["episode"]) for e in extras if "episode" in e]
        self.memory.update(episodes)
        self.store.publish(self.memory)
        versions = [int(e.get("memory_version", -1)) for e in extras]
        metrics.update({"atlasva/memory_version": float(self.memory.version),
                        "atlasva/memory_episodes": float(len(episodes)),
                        "atlasva/rollout_memory_version_min": float(min(versions, default=-1))})

    # ------------------------------------------------------------------ advantages
    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        fields = ["uid", "response_mask", "rm_scores", "extra_fields"]
        if self.use_critic:
            fields.append("values")
        if self.config.algorithm.use_kl_in_reward:
            fields += ["old_log_probs", "ref_log_prob"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        response_mask = data["response_mask"]
        extras = turn_extras(list(data.pop("extra_fields").tolist()))
        uids = list(data.pop("uid").tolist())
        self.update_memory(extras, metrics)

        dp = DataProto(batch=data.to_padded_tensor())
        dp.batch["token_level_scores"] = dp.batch["rm_scores"]
        if self.config.algorithm.use_kl_in_reward:
            dp, kl_metrics = apply_kl_penalty(dp, kl_ctrl=self.kl_ctrl_in_reward,
                                              kl_penalty=self.config.algorithm.kl_penalty)
            metrics.update(kl_metrics)
        else:
            dp.batch["token_level_rewards"] = dp.batch["token_level_scores"]
        values = dp.batch["values"] if self.use_critic else None
        adv, returns = atlasva_advantages(dp.batch["response_mask"], dp.batch["token_level_rewards"], values,
                                          [{"atlasva": e} for e in extras], uids, self.algorithm)
        metrics["atlasva/adv_abs_mean"] = float((adv.abs() * dp.batch["response_mask"]).sum()
                                                / dp.batch["response_mask"].sum().clamp(min=1))
        out = {"advantages": response_to_nested(adv, response_mask), "returns": response_to_nested(returns, response_mask)}
        if self.config.algorithm.use_kl_in_reward:
            out["token_level_rewards"] = response_to_nested(dp.batch["token_level_rewards"], response_mask)
        return tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                               fields=TensorDict(out, batch_size=len(batch)))

    # ------------------------------------------------------------------ checkpoints
    def _step_folder(self) -> Path:
        return Path(self.config.trainer.default_local_dir) / f"global_step_{self.global_steps}"

    def _save_checkpoint(self) -> None:
        super()._save_checkpoint()
        if self.memory is not None:
            self.memory.save(self._step_folder() / MEMORY_CKPT)

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()
        folder = self._step_folder() / MEMORY_CKPT
        if self.memory is not None and self.global_steps and folder.is_dir():
            self.memory = SkillMemory.load(folder)
            self.store.publish(self.memory)
