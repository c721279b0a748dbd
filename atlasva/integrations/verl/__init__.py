"""atlasva on verl (0.9.1, v1 trainer): the scale-out training engine for the same envs, reasoning formats,
memory and advantage estimators.

- :mod:`.agent_loop` — ``AtlasvaAgentLoop`` (verl agent loop ``atlasva``): runs one atlasva episode by
  driving atlasva's own :class:`~atlasva.rollout.loop.AgentLoop` in a worker thread, with a Policy-like
  adapter whose ``generate`` calls verl's async ``server_manager.generate``; returns verl's
  ``AgentLoopOutput`` (one per episode, or one per turn).
- :mod:`.outputs` — the conversion of atlasva samples into verl's output fields (no verl import).
- :mod:`.dataset` — ``AtlasvaEnvDataset``: one row per level seed from the run's split manifests.
- :mod:`.advantages` — atlasva's estimators on verl's response tensors.
- :mod:`.trainer` — ``AtlasvaPPOTrainer`` (verl v1 trainer ``atlasva``): verl's sync PPO trainer with
  the advantage step replaced by atlasva's estimators and the memory updated after each batch.
- :mod:`.memory_sync` — versioned memory snapshots published by the trainer, read by rollout workers.
- :mod:`.launch` — ``atlasva train CONFIG engine=verl``: writes verl's config from ours, starts verl.

Only :mod:`.config`, :mod:`.outputs`, :mod:`.memory_sync` and :mod:`.dataset` import without verl.
"""
