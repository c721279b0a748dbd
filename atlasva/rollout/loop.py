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
for the next observation *and* a minimal answer (the first turn included), so truncation never cuts an
image's token span; an episode that runs out of context ends as truncated (finish reason ``context``).
Each slot's answer is cut to its own room after a batched generation (one long prompt does not shrink
the others' budgets).

The backend is told which slot, level seed and turn each prompt is (:class:`RequestKey`), so a scripted
backend (:mod:`atlasva.rollout.scripted`: solver demonstrations, baselines) replays through this very
loop: demonstrations, baselines, evaluation and training share one path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class RequestKey:
    """Which episode slot (index into this run's requests), level seed and turn a prompt belongs to."""

    slot: int
    seed: int
    turn: int

    def __str__(self) -> str:
        return f"{self.slot}-{self.seed}-{self.turn}"


@dataclass
class _Slot:
    episode: Episode
    meta: dict[str, Any]
    system: str
    obs: dict[str, Any]
    seq: Any = None  # concatenated layout: the sequence so far (chat layout: the messages so far)
    mask: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)
    history: list[tuple[str, list[Any], str]] = field(default_factory=list)  # (user text, images, answer)
    pending: Any = None  # what the next generation is conditioned on
    close_assistant: bool = False
    done: bool = False


class _ChatLayout:
    """A remote model (no local tokens): chat messages in, text out; nothing to train on."""

    def __init__(self, loop: AgentLoop) -> None:
        self.cfg = loop.config

    def prompt(self, slot: _Slot, text: str, images: list[Any], turn: int) -> bool:
        from atlasva.policy.processor import content_from_obs

        if turn == 0 or not self.cfg.concat:
            slot.seq = turn_messages(slot.system, slot.history, text, images, 0 if self.cfg.concat else self.cfg.window)
        else:
            slot.seq = [*slot.seq, {"role": "user", "content": content_from_obs(text, images)}]
        slot.pending = slot.seq
        return True

    def record(self, slot: _Slot, out: Any, turn: int, index: int) -> None:
        slot.seq = [*slot.seq, {"role": "assistant", "content": out.text}]

    def samples(self, slots: list[_Slot]) -> list[Sample]:
        return []


class _ConcatLayout:
    """One training sample per episode: the whole conversation, generated ids appended as generated."""

    def __init__(self, loop: AgentLoop) -> None:
        self.policy, self.cfg = loop.policy, loop.config

    def prompt(self, slot: _Slot, text: str, images: list[Any], turn: int) -> bool:
        from atlasva.policy.processor import content_from_obs

        content = content_from_obs(text, images)
        if turn == 0:
            part = self.policy.encode_prompt([{"role": "system", "content": slot.system}, {"role": "user", "content": content}])
            whole = part
        else:
            part = self.policy.encode_user_turn(content, close_assistant=slot.close_assistant)
            whole = None
        if len(slot.seq or []) + len(part) + MIN_TURN_TOKENS > self.cfg.max_context_tokens:
            return False  # the observation (never cut: it may hold an image) plus a minimal answer do not fit
        slot.seq = whole if whole is not None else slot.seq + part
        slot.mask += [0] * len(part)
        slot.logps += [0.0] * len(part)
        slot.pending = slot.seq
        return True

    def record(self, slot: _Slot, out: Any, turn: int, index: int) -> None:
        slot.seq = slot.seq + list(out.token_ids)
        slot.mask += [1] * len(out.token_ids)
        slot.logps += list(out.logprobs)
        if out.token_ids:
            slot.turn_ends.append(len(slot.seq) - 1)

    def samples(self, slots: list[_Slot]) -> list[Sample]:
        return [Sample(s.seq, s.mask, list(s.turn_ends), list(range(len(s.turn_ends))), s.logps, i)
                for i, s in enumerate(slots) if s.seq is not None]


class _TurnLayout:
    """One training sample per turn: system prompt, the last ``window`` turns, the observation, the answer."""

    def __init__(self, loop: AgentLoop) -> None:
        self.policy, self.cfg = loop.policy, loop.config
        self._samples: list[Sample] = []

    def prompt(self, slot: _Slot, text: str, images: list[Any], turn: int) -> bool:
        slot.pending = self.policy.encode_prompt(turn_messages(slot.system, slot.history, text, images, self.cfg.window))
        return len(slot.pending) + MIN_TURN_TOKENS <= self.cfg.max_context_tokens

    def record(self, slot: _Slot, out: Any, turn: int, index: int) -> None:
        ids, n = list(out.token_ids), len(slot.pending)
        self._samples.append(Sample(slot.pending + ids, [0] * n + [1] * len(ids), [n + len(ids) - 1] if ids else [],
                                    [turn] if ids else [], [0.0] * n + list(out.logprobs), index))

    def samples(self, slots: list[_Slot]) -> list[Sample]:
        return self._samples


class AgentLoop:
    """Runs batched multi-turn episodes of a :class:`~atlasva.policy.Policy` over an :class:`EnvPool`.

    ``gamma_turn`` is the discount of the memory's shaping term F = γ·Φ(s′) − Φ(s); pass the discount the
    advantage estimator applies between turns (``TrainConfig.shaping_gamma()``) so the shaping telescopes."""

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

    @property
    def token_mode(self) -> bool:
        """A local model: token ids in and out, samples to train on (otherwise chat messages and text)."""
        return getattr(self.policy, "token_level", getattr(self.policy, "model", None) is not None)

    def _layout(self) -> _ChatLayout | _ConcatLayout | _TurnLayout:
        if not self.token_mode:
            return _ChatLayout(self)
        return _ConcatLayout(self) if self.config.concat else _TurnLayout(self)

    # ------------------------------------------------------------------ run
    def run(self, requests: list[EpisodeRequest], snapshot: Any = None, *, seed: int = 0, sampling: Any = None) -> RolloutResult:
        """reset → per turn: prompts → generate → step the envs → record → finally pack the samples."""
        cfg = self.config
        t_start = time.perf_counter()
        t_gen = 0.0
        slots = self._reset(requests, snapshot)
        layout = self._layout()
        base_sampling = sampling or getattr(getattr(self.policy, "config", None), "sampling", None)
        for turn in range(cfg.max_turns):
            # prompts: memory injection, then the layout's encoding; a slot whose context is full ends here
            prompts, shown = [], {}
            for i, s in enumerate(slots):
                if s.done:
                    continue
                shown[i] = self._content(s, snapshot, turn)
                if layout.prompt(s, *shown[i], turn):
                    prompts.append(i)
                else:
                    self._finish(s, "truncated", "context")
            if not prompts:
                break
            # generate: one call for the batch; each slot keeps at most its own room (cut after generation)
            rooms = [self._room(slots[i]) for i in prompts]
            samp = _with_max_new_tokens(base_sampling, max(rooms))
            keys = [RequestKey(i, slots[i].episode.seed, turn) for i in prompts]
            t0 = time.perf_counter()
            outs = self.policy.generate([slots[i].pending for i in prompts], seed=seed * 1000 + turn, sampling=samp,
                                        request_ids=keys)
            t_gen += time.perf_counter() - t0
            texts: list[str | None] = [None] * len(slots)
            for i, out, room in zip(prompts, outs, rooms):
                out = self._checked(out, room)
                s = slots[i]
                s.close_assistant = out.finish_reason != "stop"
                layout.record(s, out, turn, i)
                texts[i] = out.text
                s.history.append((*shown[i], out.text))
            # step the envs and record each turn
            results = self.pool.step(texts)
            for i in prompts:
                self._record_turn(slots[i], results[i], shown[i][0], texts[i] or "", snapshot)
        for s in slots:
            if not s.done:
                last = s.episode.turns[-1] if s.episode.turns else None
                self._finish(s, "truncated", (last.failure if last and last.failure else "max_turns"))
        samples = layout.samples(slots)
        return RolloutResult([s.episode for s in slots], samples, self._stats(slots, samples, t_start, t_gen))

    # ------------------------------------------------------------------ steps of run
    def _reset(self, requests: list[EpisodeRequest], snapshot: Any) -> list[_Slot]:
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
        return slots

    def _content(self, slot: _Slot, snapshot: Any, turn: int) -> tuple[str, list[Any]]:
        if snapshot is not None:  # the memory decides which turns get its layers
            text, images = snapshot.inject(slot.meta, slot.obs, turn)
            return text, list(images)
        return slot.obs["text"], list(slot.obs["images"])

    def _room(self, slot: _Slot) -> int:
        room = self.config.max_tokens_per_turn
        if self.token_mode:
            room = min(room, self.config.max_context_tokens - len(slot.pending))
        return room

    def _checked(self, out: Any, room: int) -> Any:
        """The output as the loop keeps it: cut to the slot's room; behaviour log-probs required for training."""
        if not self.token_mode:
            return out
        ids, lps = list(out.token_ids), list(out.logprobs)
        if len(lps) != len(ids):
            raise RuntimeError(
                f"the generation backend returned {len(lps)} log-prob(s) for {len(ids)} generated token(s); "
                "training needs the behaviour log-prob of every generated token (PPO ratios would be wrong "
                "without them) — use a backend that reports them (hf; vllm with logprobs)"
            )
        if len(ids) <= room:
            return out
        ids = ids[:room]
        eos = self.policy.processor.eos_token_id
        text = self.policy.processor.decode([t for t in ids if t != eos])
        return replace(out, token_ids=ids, logprobs=lps[:room], text=text, finish_reason="length")

    def _record_turn(self, s: _Slot, result: Any, prompt_text: str, text: str, snapshot: Any) -> None:
        obs, _, terminated, truncated, info = result
        rewards = dict(info["reward_components"])
        rewards["shaping"] = (
            float(snapshot.shaping(s.meta, info["cells"], terminated, self.gamma_turn)) if snapshot is not None else 0.0
        )
        s.episode.turns.append(
            Turn(
                prompt_text=prompt_text,
                response_text=text,
                actions=list(info["actions"]),
                cells=info["cells"],
                action_targets=info["action_targets"],
                rewards=rewards,
                metrics=dict(info["metrics"]),
                state=info["state"],
                terminated=bool(terminated),
                truncated=bool(truncated),
                failure=info["failure"],
                events=list(info["events"]),
                frames=list(s.obs["images"]),
            )
        )
        s.meta["cell"] = info["cells"][-1]
        s.obs = obs
        if terminated:
            if info["metrics"]["success"]:
                self._finish(s, "success")
            else:
                self._finish(s, "failure", info["failure"] or "terminal")
        elif truncated:
            self._finish(s, "truncated", info["failure"] or "env_truncated")

    @staticmethod
    def _stats(slots: list[_Slot], samples: list[Sample], t_start: float, t_gen: float) -> dict[str, float]:
        for s in slots:
            s.episode.tokens = {"n_tokens": 0, "n_generated": 0}
        for x in samples:  # one pass: per-turn samples add up per episode
            counts = slots[x.episode_index].episode.tokens
            counts["n_tokens"] += len(x)
            counts["n_generated"] += sum(x.loss_mask)
        wall = time.perf_counter() - t_start
        n_gen = sum(s.episode.tokens["n_generated"] for s in slots)
        return {
            "rollout/wall_s": wall,
            "rollout/generate_s": t_gen,
            "rollout/outside_generate_share": (wall - t_gen) / wall if wall > 0 else 0.0,
            "rollout/turns_per_s": sum(len(s.episode.turns) for s in slots) / wall if wall > 0 else 0.0,
            "rollout/gen_tokens_per_s": n_gen / t_gen if t_gen > 0 else 0.0,
        }

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
    from atlasva.policy.config import SamplingConfig

    base = sampling if sampling is not None else SamplingConfig()
    return replace(base, max_new_tokens=int(n))
