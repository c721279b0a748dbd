"""atlasva rollout samples → the fields of verl's ``AgentLoopOutput`` (plain dicts; no verl import).

Layouts:
- ``concat``: one output per episode. ``prompt_ids`` = the first prompt (system + first observation,
  with memory injection); ``response_ids`` = everything after it — generated turns (mask 1) and the
  observation turns between them (mask 0), ids exactly as generated, never re-tokenised.
- ``per_turn``: one output per turn (atlasva's non-concatenated samples): the turn's prompt, its
  generated ids.

Every output carries ``reward_score`` = the episode's total reward (env + format + world model + memory
shaping; verl copies the final output's score to the others of an episode anyway) and, under
``extra_fields["atlasva"]``, what atlasva's estimators need: each turn's reward, its end position in
``response_ids``, the episode key, and — on the episode's last output — the episode record for the
memory update.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from atlasva.rollout.episode import Episode, Turn
from atlasva.rollout.loop import RolloutResult, Sample

EXTRA_KEY = "atlasva"


def episode_payload(episode: Episode) -> dict[str, Any]:
    """A JSON-native episode record plus the frames the memory reads (the first frame of the first and
    of the last turn: the panel's reference observation and the exemplar key frame)."""
    frames: dict[str, list[np.ndarray]] = {}
    if episode.turns:
        for k in sorted({0, len(episode.turns) - 1}):
            frames[str(k)] = [np.asarray(f) for f in episode.turns[k].frames[:1]]
    return {"record": episode.to_dict(), "frames": frames}


def episode_from_payload(payload: dict[str, Any]) -> Episode:
    episode = Episode.from_dict(payload["record"])
    for k, frames in payload.get("frames", {}).items():
        episode.turns[int(k)].frames = [np.asarray(f) for f in frames]
    return episode


def _split_prompt(sample: Sample) -> int:
    """Length of the sample's prompt: everything before its first generated token."""
    try:
        return sample.loss_mask.index(1)
    except ValueError:
        raise ValueError(
            "an episode produced no generated token: its first prompt already fills the context "
            "(raise actor_rollout_ref.rollout.prompt_length / rollout.max_context_tokens or shorten the prompt)"
        ) from None


def _turn_reward(turns: list[Turn], k: int) -> float:
    if k >= len(turns):
        raise ValueError(f"a sample ends turn {k} but the episode recorded {len(turns)} turn(s)")
    return turns[k].reward


def episode_metrics(episode: Episode) -> dict[str, float]:
    """Per-episode numbers verl logs (``reward_extra_info``; validation reports them per data source)."""
    return {
        "success": float(episode.success),
        "turns": float(episode.n_turns),
        "format_valid": episode.format_valid_rate(),
        "env_reward": float(sum(t.rewards.get("env", 0.0) for t in episode.turns)),
        "shaping": float(sum(t.rewards.get("shaping", 0.0) for t in episode.turns)),
    }


def verl_outputs(result: RolloutResult, episode_key: str, *, with_payload: bool = True) -> list[dict[str, Any]]:
    """The ``AgentLoopOutput`` fields of a one-episode rollout, in turn order (one dict per sample)."""
    if len(result.episodes) != 1:
        raise ValueError(f"verl runs one episode per agent-loop call, got {len(result.episodes)}")
    episode = result.episodes[0]
    if not result.samples:
        raise ValueError("the episode produced no sample (no turn was generated)")
    outputs = []
    for i, sample in enumerate(result.samples):
        p = _split_prompt(sample)
        ids = list(sample.encoded.input_ids)
        extra: dict[str, Any] = {
            "episode_key": episode_key,
            "turn_ids": list(sample.turn_indices),
            "turn_rewards": [_turn_reward(episode.turns, k) for k in sample.turn_indices],
            "turn_ends": [e - p for e in sample.turn_ends],
            "total_reward": episode.total_reward,
            "memory_version": episode.memory_version,
        }
        if with_payload and i == len(result.samples) - 1:
            extra["episode"] = episode_payload(episode)
        outputs.append({
            "prompt_ids": ids[:p],
            "response_ids": ids[p:],
            "response_mask": list(sample.loss_mask[p:]),
            "response_logprobs": [float(x) for x in sample.old_logprobs[p:]],
            "images": list(sample.encoded.images),
            "reward_score": episode.total_reward,
            "num_turns": 2 * episode.n_turns,  # a user and an assistant message per env turn
            "extra_fields": {EXTRA_KEY: extra, "reward_extra_info": episode_metrics(episode)},
        })
    return outputs
