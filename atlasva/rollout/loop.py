"""The multi-turn agent loop: batched episodes over an EnvPool, token-in/token-out.

Generated token ids are appended to each episode's sequence exactly as generated (never decoded
and re-tokenised); observation spans (user turns, images) are appended with loss mask 0. Every
turn records its reward components (env, format, world_model from the env; shaping from the frozen
memory snapshot) and the token position of its last generated token (its turn end).

Two layouts:
- concatenated (``concat=True``): one training sample per episode, the whole conversation;
- non-concatenated (``concat=False``): one sample per turn — system prompt, optionally the last
  ``window`` turns as history, the current observation, and the turn's generated ids.

Limits: turns, tokens per turn, and total context. A turn is only started when the context has room
for the next observation *and* a minimal answer, so truncation never cuts an image's token span; an
episode that runs out of context ends as truncated (finish reason ``context``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from atlasva.envs.pool import EnvPool
from atlasva.envs.registry import make
from atlasva.memory import episode_meta
from atlasva.rollout.episode import Episode, Turn

MIN_TURN_TOKENS = 4  # never start a turn that cannot hold at least this many generated tokens


@dataclass
class RolloutConfig:
    max_turns: int = 5
    max_tokens_per_turn: int = 48
    max_context_tokens: int = 4096
    concat: bool = True  # one sample per episode (True) or one sample per turn (False)
    window: int = 0  # non-concatenated mode: previous turns shown as history (0 = none)

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_tokens_per_turn < MIN_TURN_TOKENS:
            raise ValueError(
                f"rollout needs max_turns >= 1 and max_tokens_per_turn >= {MIN_TURN_TOKENS}; "
                f"got {self.max_turns}, {self.max_tokens_per_turn}"
            )
        if self.window < 0:
            raise ValueError(f"rollout.window must be >= 0, got {self.window}")


@dataclass
class EpisodeRequest:
    """One slot of a rollout batch."""

    env: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    group_id: str = ""


@dataclass
class Sample:
    """One training sequence: concatenated (a whole episode) or one turn (non-concatenated)."""

    encoded: Any  # atlasva.policy.Encoded: ids + the images they reference
    loss_mask: list[int]
    turn_ends: list[int]  # positions of each turn's last generated token (in this sequence)
    turn_indices: list[int]  # which episode turns those are
    old_logprobs: list[float]  # behaviour log-probs of generated tokens (0 elsewhere)
    episode_index: int

    def __len__(self) -> int:
        return len(self.loss_mask)


@dataclass
class RolloutResult:
    episodes: list[Episode]
    samples: list[Sample]
    stats: dict[str, float]


@dataclass
class _Slot:
    episode: Episode
    meta: dict[str, Any]
    system: str
    obs: dict[str, Any]
    seq: Any = None  # concatenated sequence so far
    mask: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)
    history: list[tuple[str, list[Any], str]] = field(default_factory=list)  # (user text, images, answer)
    pending: Any = None  # what the next generation is conditioned on
    close_assistant: bool = False
    done: bool = False


class AgentLoop:
    """Runs batched multi-turn episodes of a :class:`~atlasva.policy.Policy` over an :class:`EnvPool`."""

    def __init__(self, policy: Any, pool: EnvPool, config: RolloutConfig | None = None, *, gamma_turn: float = 1.0):
        self.policy = policy
        self.pool = pool
        self.config = config or RolloutConfig()
        self.gamma_turn = float(gamma_turn)
        self._system_prompts: dict[str, str] = {}

    def system_prompt(self, env: str, config: dict[str, Any]) -> str:
        key = repr((env, sorted(config.items())))
        if key not in self._system_prompts:  # a local instance knows its prompt; pools may be remote
            probe = make(env, **config)
            self._system_prompts[key] = probe.system_prompt()
            probe.close()
        return self._system_prompts[key]

    # ------------------------------------------------------------------ prompts
    def _content(self, slot: _Slot, snapshot: Any, turn: int) -> tuple[str, list[Any]]:
        obs = slot.obs
        if snapshot is not None:  # the memory decides which turns get its layers
            text, images = snapshot.inject(slot.meta, obs, turn)
            return text, list(images)
        return obs["text"], list(obs["images"])

    def _turn_prompt(self, slot: _Slot, text: str, images: list[Any]) -> Any:
        return self.policy.encode_prompt(turn_messages(slot.system, slot.history, text, images, self.config.window))

    # ------------------------------------------------------------------ run
    def run(self, requests: list[EpisodeRequest], snapshot: Any = None, *, seed: int = 0, sampling: Any = None) -> RolloutResult:
        from atlasva.policy.processor import content_from_obs

        cfg = self.config
        t_start = time.perf_counter()
        t_gen = 0.0
        configs = [{"env": r.env, **r.config} for r in requests]
        resets = self.pool.reset([r.seed for r in requests], configs)
        slots: list[_Slot] = []
        for req, (obs, info) in zip(requests, resets):
            ep = Episode(
                env_name=req.env,
                seed=req.seed,
                level_hash=info["level_hash"],
                env_config=dict(req.config),
                group_id=req.group_id,
                memory_version=int(getattr(snapshot, "version", -1)) if snapshot is not None else -1,
                start_state=info["state"],
                start_cell=info["cells"][0],
                heuristics=info.get("heuristics", {}),
            )
            meta = episode_meta(req.env, ep.level_hash, ep.heuristics, ep.start_cell, req.seed)
            slots.append(_Slot(ep, meta, self.system_prompt(req.env, req.config), obs))

        samples: list[Sample] = []
        token_mode = getattr(self.policy, "token_level", getattr(self.policy, "model", None) is not None)
        base_sampling = sampling or getattr(getattr(self.policy, "config", None), "sampling", None)
        for turn in range(cfg.max_turns):
            active = [i for i, s in enumerate(slots) if not s.done]
            if not active:
                break
            prompts, prompt_texts = [], {}
            for i in active:
                s = slots[i]
                text, images = self._content(s, snapshot, turn)
                prompt_texts[i] = (text, images)
                if not token_mode:  # a remote model (openai backend): chat messages, no token ids
                    if turn == 0 or not cfg.concat:
                        s.seq = [{"role": "system", "content": s.system}]
                        if not cfg.concat and cfg.window:
                            for u_text, u_images, ans in s.history[-cfg.window:]:
                                s.seq += [{"role": "user", "content": content_from_obs(u_text, u_images)},
                                          {"role": "assistant", "content": ans}]
                    s.seq = [*s.seq, {"role": "user", "content": content_from_obs(text, images)}]
                    s.pending = s.seq
                elif cfg.concat:
                    if turn == 0:
                        s.seq = self.policy.encode_prompt(
                            [{"role": "system", "content": s.system}, {"role": "user", "content": content_from_obs(text, images)}]
                        )
                        s.mask, s.logps = [0] * len(s.seq), [0.0] * len(s.seq)
                    else:
                        suffix = self.policy.encode_user_turn(content_from_obs(text, images), close_assistant=s.close_assistant)
                        if len(s.seq) + len(suffix) + MIN_TURN_TOKENS > cfg.max_context_tokens:
                            self._finish(s, "truncated", "context")
                            continue
                        s.seq = s.seq + suffix
                        s.mask += [0] * len(suffix)
                        s.logps += [0.0] * len(suffix)
                    s.pending = s.seq
                else:
                    s.pending = self._turn_prompt(s, text, images)
                    if len(s.pending) + MIN_TURN_TOKENS > cfg.max_context_tokens:
                        self._finish(s, "truncated", "context")
                        continue
                prompts.append(i)
            if not prompts:
                break
            room = cfg.max_tokens_per_turn
            if token_mode:
                room = min(cfg.max_context_tokens - len(slots[i].pending) for i in prompts)
            samp = _with_max_new_tokens(base_sampling, min(cfg.max_tokens_per_turn, room))
            t0 = time.perf_counter()
            outs = self.policy.generate([slots[i].pending for i in prompts], seed=seed * 1000 + turn, sampling=samp)
            t_gen += time.perf_counter() - t0
            texts: list[str | None] = [None] * len(slots)
            for i, out in zip(prompts, outs):
                s = slots[i]
                ids = list(out.token_ids)
                lps = list(out.logprobs) if len(out.logprobs) == len(ids) else [0.0] * len(ids)
                s.close_assistant = out.finish_reason != "stop"
                if not token_mode:
                    s.seq = [*s.seq, {"role": "assistant", "content": out.text}]
                elif cfg.concat:
                    s.seq = s.seq + ids
                    s.mask += [1] * len(ids)
                    s.logps += lps
                    if ids:
                        s.turn_ends.append(len(s.seq) - 1)
                else:
                    enc = s.pending + ids
                    prompt_len = len(s.pending)
                    samples.append(
                        Sample(enc, [0] * prompt_len + [1] * len(ids), [len(enc) - 1] if ids else [], [turn] if ids else [],
                               [0.0] * prompt_len + lps, i)
                    )
                texts[i] = out.text
                s.history.append((*prompt_texts[i], out.text))
            results = self.pool.step(texts)
            for i in prompts:
                s, res = slots[i], results[i]
                obs, _, terminated, truncated, info = res
                rewards = dict(info["reward_components"])
                rewards["shaping"] = (
                    float(snapshot.shaping(s.meta, info["cells"], terminated, self.gamma_turn)) if snapshot is not None else 0.0
                )
                s.episode.turns.append(
                    Turn(
                        prompt_text=prompt_texts[i][0],
                        response_text=texts[i] or "",
                        actions=list(info.get("actions", [])),
                        cells=info["cells"],
                        action_targets=info.get("action_targets", []),
                        rewards=rewards,
                        metrics=dict(info["metrics"]),
                        state=info["state"],
                        terminated=bool(terminated),
                        truncated=bool(truncated),
                        failure=info.get("failure"),
                        frames=list(s.obs["images"]),
                    )
                )
                s.meta["cell"] = info["cells"][-1]
                s.obs = obs
                if terminated:
                    if info["metrics"].get("success"):
                        self._finish(s, "success")
                    else:
                        self._finish(s, "failure", info.get("failure") or "terminal")
                elif truncated:
                    self._finish(s, "truncated", info.get("failure") or "env_truncated")
        for s in slots:
            if not s.done:
                last = s.episode.turns[-1] if s.episode.turns else None
                self._finish(s, "truncated", (last.failure if last and last.failure else "max_turns"))
        if cfg.concat and token_mode:
            for idx, s in enumerate(slots):
                n = len(s.turn_ends)
                samples.append(Sample(s.seq, s.mask, list(s.turn_ends), list(range(n)), s.logps, idx))
        for s in slots:
            s.episode.tokens = {"n_tokens": 0, "n_generated": 0}
        for x in samples:  # one pass: per-turn samples add up per episode
            counts = slots[x.episode_index].episode.tokens
            counts["n_tokens"] += len(x)
            counts["n_generated"] += sum(x.loss_mask)
        wall = time.perf_counter() - t_start
        n_gen = sum(s.episode.tokens["n_generated"] for s in slots)
        stats = {
            "rollout/wall_s": wall,
            "rollout/generate_s": t_gen,
            "rollout/outside_generate_share": (wall - t_gen) / wall if wall > 0 else 0.0,
            "rollout/turns_per_s": sum(len(s.episode.turns) for s in slots) / wall if wall > 0 else 0.0,
            "rollout/gen_tokens_per_s": n_gen / t_gen if t_gen > 0 else 0.0,
        }
        return RolloutResult([s.episode for s in slots], samples, stats)

    @staticmethod
    def _finish(slot: _Slot, outcome: str, kind: str | None = None) -> None:
        slot.episode.finish(outcome, kind)
        slot.done = True


def turn_messages(system: str, history: list[tuple[str, list[Any], str]], text: str, images: list[Any],
                  window: int) -> list[dict[str, Any]]:
    """Non-concatenated prompt: system, the last ``window`` turns of (user text, images, answer), the observation."""
    from atlasva.policy.processor import content_from_obs

    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for user_text, user_images, answer in (history[-window:] if window else []):
        messages.append({"role": "user", "content": content_from_obs(user_text, user_images)})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": content_from_obs(text, images)})
    return messages


def _with_max_new_tokens(sampling: Any, n: int) -> Any:
    from dataclasses import replace

    from atlasva.policy.config import SamplingConfig

    base = sampling if sampling is not None else SamplingConfig()
    return replace(base, max_new_tokens=int(n))
