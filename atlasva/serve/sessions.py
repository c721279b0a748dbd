"""The env service's protocol, free of HTTP: sessions, their replay rules and the server's limits.

:class:`Session` holds one env and what makes retries safe (the step index, the episode number, the
recorded last result). :class:`SessionService` runs batches of create / reset / step / close items
against a :class:`Store` of sessions, enforcing the server-level limits — items per request, live
sessions, frame pixels per response — and the envs' own bounds (:class:`~atlasva.envs.base.LimitError`).
Refusals are :class:`ServiceError` with an HTTP status, an error code and the fields the client needs;
the FastAPI routes (:mod:`atlasva.serve.server`) only translate. Everything here can be driven in a test
without a server process.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from atlasva import formats
from atlasva.envs.base import AtlasEnv, LimitError
from atlasva.envs.pool import split_config
from atlasva.envs.registry import config_keys, env_class, make, names
from atlasva.serve.codec import ImageEncoder, encode_obs, encode_step


@dataclass
class Limits:
    """Server-level bounds (the envs bound their own configs through ``AtlasEnv.limits``)."""

    max_envs: int = 256  # live sessions
    max_batch: int = 1024  # items per request
    max_text_chars: int = formats.MAX_TEXT_CHARS  # one step text
    max_frame_pixels: int = 32 << 20  # image pixels in one response (~96 MB of raw RGB)

    def __post_init__(self) -> None:
        for name in ("max_envs", "max_batch", "max_text_chars", "max_frame_pixels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class ServiceError(Exception):
    """A refused request: HTTP ``status``, error ``code``, ``message`` and extra JSON fields."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


def invalid(where: str, message: str) -> ServiceError:
    return ServiceError(422, "invalid_request", f"{where}: {message}", errors=[{"field": where, "message": message, "type": "value_error"}])


def limit_exceeded(where: str, exc: LimitError) -> ServiceError:
    path = f"{where}.{exc.key}" if exc.key != "options.level" else where.rsplit(".", 1)[0] + ".options.level"
    return ServiceError(422, "limit_exceeded", f"{path}: {exc}", field=path, env=exc.env, key=exc.key, limit=exc.limit)


# --------------------------------------------------------------------------- sessions


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def reset_key(seed: int | None, options: dict[str, Any] | None) -> str:
    return json.dumps([seed, options], sort_keys=True)


def wire_pixels(wire: dict[str, Any]) -> int:
    """Image pixels a recorded (encoded) result carries."""
    return sum(int(im["shape"][0]) * int(im["shape"][1]) for im in wire["obs"]["images"])


@dataclass(eq=False)
class Session:
    """One env and its replay state: ``index`` = steps since the reset, ``episode`` = resets so far
    (0 after create); the last result is recorded so a retried step returns it instead of stepping."""

    sid: str
    config: dict[str, Any]
    env: AtlasEnv
    lock: threading.Lock = field(default_factory=threading.Lock)
    episode: int = 0
    index: int = 0
    done: bool = False
    reset_key: str = ""
    reset_result: dict[str, Any] | None = None
    last_text: str = ""
    last_result: dict[str, Any] | None = None
    last_used: float = field(default_factory=time.monotonic)

    def reset(self, seed: int | None, options: dict[str, Any] | None, episode: int) -> tuple[Any, Any]:
        """Reset the env (raw obs, info); the result is recorded by :meth:`record_reset` once encoded."""
        obs, info = self.env.reset(seed=seed, options=options)
        self.episode, self.index, self.done = episode, 0, False
        self.last_text, self.last_result, self.reset_result = "", None, None
        self.reset_key = reset_key(seed, options)
        return obs, info

    def record_reset(self, wire: dict[str, Any]) -> dict[str, Any]:
        self.reset_result = {"session_id": self.sid, "episode": self.episode, **wire}
        return self.reset_result

    def recorded_reset(self, seed: int | None, options: dict[str, Any] | None, episode: int | None) -> dict[str, Any] | None:
        """The recorded reset if this request repeats the current one (same episode, seed, options)."""
        if (episode is not None and episode == self.episode and self.index == 0 and self.reset_result is not None
                and self.reset_key == reset_key(seed, options)):
            return self.reset_result
        return None

    def step_conflict(self, index: int, text: str, episode: int | None) -> str | None:
        """Why a step item cannot run now (None: it can, as a new step or a replay)."""
        if episode is not None and episode != self.episode:
            return f"session {self.sid} is at episode {self.episode}, not {episode}"
        if index == self.index and self.last_result is not None:
            if self.last_text != text_hash(text):
                return f"step {index} of session {self.sid} was taken with a different text"
            return None
        if index != self.index + 1:
            return f"session {self.sid} expects step index {self.index + 1} (or {self.index} to repeat), got {index}"
        if self.done:
            return f"session {self.sid} finished its episode at step {self.index}; reset it"
        return None

    def is_replay(self, index: int) -> bool:
        return index == self.index and self.last_result is not None

    def step(self, index: int, text: str) -> tuple[Any, ...]:
        """Step the env once (raw result); call only after :meth:`step_conflict` found none."""
        res = self.env.step(text)
        self.index = index
        self.done = bool(res[2] or res[3])
        self.last_text = text_hash(text)
        self.last_result = None
        return res

    def record_step(self, wire: dict[str, Any]) -> dict[str, Any]:
        self.last_result = {"session_id": self.sid, "index": self.index, "episode": self.episode, "replayed": False, **wire}
        return self.last_result


class Store:
    """Live sessions and reserved capacity (constructing envs happens outside the lock)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.sessions: dict[str, Session] = {}
        self.reserved = 0
        self.creating: dict[str, threading.Event] = {}  # client-chosen ids a create request is building
        self.lock = threading.Lock()

    def claim(self, sids: Sequence[str]) -> None:
        """Mark ids as being created by this request, first waiting for any other request creating one of
        them: a client's retried create can arrive while its first attempt is still building the envs, and
        must then find the finished sessions instead of building them a second time. All ids are taken at
        once, so two requests can never wait for each other."""
        while True:
            with self.lock:
                busy = [self.creating[s] for s in sids if s in self.creating]
                if not busy:
                    self.creating.update((s, threading.Event()) for s in sids)
                    return
            for event in busy:
                event.wait()

    def unclaim(self, sids: Sequence[str]) -> None:
        with self.lock:
            for s in sids:
                event = self.creating.pop(s, None)
                if event is not None:
                    event.set()

    def reserve(self, n: int) -> bool:
        with self.lock:
            if len(self.sessions) + self.reserved + n > self.capacity:
                return False
            self.reserved += n
            return True

    def release(self, n: int) -> None:
        with self.lock:
            self.reserved -= n

    def add(self, sessions: list[Session]) -> None:
        """Admit sessions on capacity reserved for them (:meth:`reserve`)."""
        with self.lock:
            self.reserved -= len(sessions)
            for s in sessions:
                self.sessions[s.sid] = s

    def lookup(self, sids: Sequence[str]) -> tuple[list[Session], list[str]]:
        with self.lock:
            found = [self.sessions.get(s) for s in sids]
        missing = [sid for sid, s in zip(sids, found) if s is None]
        return [s for s in found if s is not None], missing

    def pop(self, sids: Sequence[str]) -> list[Session]:
        with self.lock:
            return [s for s in (self.sessions.pop(sid, None) for sid in sids) if s is not None]

    def free(self) -> int:
        with self.lock:
            return self.capacity - len(self.sessions) - self.reserved

    def reap(self, ttl: float) -> list[Session]:
        now = time.monotonic()
        out = []
        with self.lock:
            for sid, s in list(self.sessions.items()):
                if now - s.last_used > ttl and s.lock.acquire(blocking=False):
                    try:
                        if now - s.last_used > ttl:
                            del self.sessions[sid]
                            out.append(s)
                    finally:
                        s.lock.release()
        return out


class Locked:
    """Hold several session locks (taken in id order, so concurrent batches cannot deadlock)."""

    def __init__(self, sessions: list[Session]) -> None:
        self.sessions = sorted(set(sessions), key=lambda s: s.sid)

    def __enter__(self) -> None:
        for s in self.sessions:
            s.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        now = time.monotonic()
        for s in reversed(self.sessions):
            s.last_used = now
            s.lock.release()


# --------------------------------------------------------------------------- the service


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """An env config names a registered env and only its keys (values are the env's to check)."""
    name = config.get("env")
    if not isinstance(name, str):
        raise ValueError(f"config needs an 'env' name (a string), e.g. {{'env': 'sokoban'}}; registered: {', '.join(names())}")
    cls = env_class(name)  # unknown names: ValueError with the nearest registered name
    accepted = config_keys(cls)
    unknown = [k for k in config if k != "env" and k not in accepted]
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for env {name!r}; accepted: {', '.join(accepted)}")
    return config


#: What an env raises for a config or reset option it cannot work with (a 422, not a server fault):
#: ValueError / TypeError for bad values, RuntimeError when a generator gives up (e.g. an unreachable
#: min_solution_length).
CONFIG_ERRORS = (ValueError, TypeError, RuntimeError)


class SessionService:
    """The env service's batches; thread-safe (sessions are locked per request, in id order)."""

    def __init__(self, limits: Limits | None = None, image_cache_bytes: int = 64 << 20, threads: int = 1) -> None:
        self.limits = limits or Limits()
        self.store = Store(self.limits.max_envs)
        self.encoder = ImageEncoder(image_cache_bytes)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="atlasva-encode") if threads > 1 else None

    # ------------------------------------------------------------------ helpers
    def _encode(self, fn: Callable[[Any], dict[str, Any]], raws: list[Any]) -> list[dict[str, Any]]:
        # PNG encoding (zlib, hashing) releases the GIL: encode a batch's frames on threads
        if self._pool is None or len(raws) < 4:
            return [fn(r) for r in raws]
        return list(self._pool.map(fn, raws))

    def _encode_resets(self, raws: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
        return self._encode(lambda r: {"obs": encode_obs(r[0], self.encoder), "info": r[1]}, raws)

    def _encode_steps(self, raws: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        return self._encode(lambda r: encode_step(r, self.encoder), raws)

    def check_batch(self, n: int, key: str = "items") -> None:
        if n > self.limits.max_batch:
            raise ServiceError(422, "too_many_items", f"{key}: {n} items in one request; the limit is {self.limits.max_batch}",
                               field=key, limit=self.limits.max_batch)

    def check_frames(self, pixels: int, n_items: int) -> None:
        limit = self.limits.max_frame_pixels
        if pixels > limit:
            raise ServiceError(
                422, "frame_budget",
                f"the {n_items} item(s) of this request would return {pixels} image pixels; the limit per response is "
                f"{limit} (--max-frame-pixels): send fewer items per request",
                limit=limit, requested=pixels,
            )

    @staticmethod
    def _raw_pixels(obs: dict[str, Any]) -> int:
        return sum(int(im.shape[0]) * int(im.shape[1]) for im in obs.get("images", ()))

    @staticmethod
    def _unique(sids: Sequence[str], where: Callable[[int], str]) -> None:
        seen: set[str] = set()
        for i, sid in enumerate(sids):
            if sid in seen:
                raise invalid(where(i), f"session {sid} appears twice in one request")
            seen.add(sid)

    def lookup(self, sids: Sequence[str], ttl: float) -> list[Session]:
        found, missing = self.store.lookup(sids)
        if missing:
            raise ServiceError(
                404, "unknown_session",
                f"{len(missing)} unknown session(s) (closed, reaped after {ttl:g}s idle, or the server restarted): "
                + ", ".join(missing[:5]),
                session_ids=missing,
            )
        by_id = {s.sid: s for s in found}
        return [by_id[sid] for sid in sids]

    def _sessions(self, items: list[dict[str, Any]], ttl: float) -> list[Session]:
        """The sessions a reset or step batch names: at most ``max_batch``, each once, all live."""
        self.check_batch(len(items))
        self._unique([it["session_id"] for it in items], lambda i: f"items[{i}].session_id")
        return self.lookup([it["session_id"] for it in items], ttl)

    @staticmethod
    def close_envs(sessions: list[Session]) -> None:
        for s in sessions:
            try:
                s.env.close()
            except Exception as exc:  # a failing close must not take the server down
                print(f"atlasva serve: closing session {s.sid} failed: {exc!r}", file=sys.stderr)

    def _reset_raw(self, s: Session, seed: int | None, options: dict[str, Any] | None, episode: int, where: str) -> tuple[Any, Any]:
        try:
            return s.reset(seed, options, episode)
        except LimitError as exc:
            raise limit_exceeded(f"{where}.options", exc) from exc
        except CONFIG_ERRORS as exc:
            raise invalid(f"{where}.options", f"reset failed: {exc}") from exc

    # ------------------------------------------------------------------ create
    def create(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``items``: ``{"config", "seed", "options", "session_id"}``. A repeated session id with the same
        config, seed and options returns the first result (a retried create); another one is a 409."""
        self.check_batch(len(items))
        chosen = [it["session_id"] for it in items if it.get("session_id")]
        self._unique(chosen, lambda i: f"items[{i}].session_id")
        self.store.claim(chosen)
        try:
            return self._create(items, [it.get("session_id") or uuid.uuid4().hex for it in items])
        finally:
            self.store.unclaim(chosen)

    def _create(self, items: list[dict[str, Any]], sids: list[str]) -> list[dict[str, Any]]:
        existing, _ = self.store.lookup(sids)
        known = {s.sid: s for s in existing}
        results: list[dict[str, Any] | None] = [None] * len(items)
        for i, (sid, it) in enumerate(zip(sids, items)):
            s = known.get(sid)
            if s is None:
                continue
            with Locked([s]):
                same = s.config == it["config"] and s.recorded_reset(it.get("seed"), it.get("options"), 0) is not None
                if not (same and s.episode == 0):
                    raise ServiceError(409, "session_exists",
                                       f"items[{i}].session_id: session {sid} already exists with another config, seed or state")
                results[i] = s.reset_result
        new = [i for i in range(len(items)) if results[i] is None]
        if not self.store.reserve(len(new)):
            raise ServiceError(
                503, "capacity",
                f"no room for {len(new)} new env(s): {self.store.free()} of {self.limits.max_envs} free (--max-envs); retry later",
                capacity=self.limits.max_envs, free=self.store.free(),
            )
        made: list[Session] = []
        try:
            for i in new:
                config = items[i]["config"]
                name, kwargs = split_config(config)
                try:
                    env = make(name, **kwargs)
                except LimitError as exc:
                    raise limit_exceeded(f"items[{i}].config", exc) from exc
                except CONFIG_ERRORS as exc:
                    raise invalid(f"items[{i}].config", f"cannot build env {name!r}: {exc}") from exc
                made.append(Session(sid=sids[i], config=dict(config), env=env))
            # the frame budget before rendering anything (a given level can change a frame's size:
            # checked again on the real frames below)
            recorded = sum(wire_pixels(r) for r in results if r is not None)
            self.check_frames(recorded + sum(s.env.frame_pixels() for s in made), len(items))
            raws = [self._reset_raw(s, items[i].get("seed"), items[i].get("options"), 0, f"items[{i}]") for i, s in zip(new, made)]
            self.check_frames(recorded + sum(self._raw_pixels(obs) for obs, _ in raws), len(items))
            for i, s, wire in zip(new, made, self._encode_resets(raws)):
                results[i] = s.record_reset(wire)
        except BaseException:
            self.close_envs(made)
            self.store.release(len(new))
            raise
        self.store.add(made)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ reset
    def reset(self, items: list[dict[str, Any]], ttl: float) -> list[dict[str, Any]]:
        """``items``: ``{"session_id", "seed", "options", "episode"}``; repeating the current episode
        number with the same seed and options returns the recorded reset."""
        sessions = self._sessions(items, ttl)
        with Locked(sessions):
            conflicts = [
                f"items[{i}].episode: session {s.sid} is at episode {s.episode}; send {s.episode + 1} for a new reset"
                for i, (s, it) in enumerate(zip(sessions, items))
                if it.get("episode") is not None and it["episode"] not in (s.episode, s.episode + 1)
            ]
            if conflicts:
                raise ServiceError(409, "episode_conflict", "; ".join(conflicts[:5]), conflicts=conflicts)
            results: list[dict[str, Any] | None] = [
                s.recorded_reset(it.get("seed"), it.get("options"), it.get("episode")) for s, it in zip(sessions, items)
            ]
            todo = [k for k, r in enumerate(results) if r is None]
            recorded = sum(wire_pixels(r) for r in results if r is not None)
            self.check_frames(recorded + sum(sessions[k].env.frame_pixels() for k in todo), len(items))
            raws = []
            for k in todo:
                s, it = sessions[k], items[k]
                episode = it["episode"] if it.get("episode") is not None else s.episode + 1
                raws.append(self._reset_raw(s, it.get("seed"), it.get("options"), episode, f"items[{k}]"))
            # over budget after all (a given level made frames larger): nothing is recorded, so a retry
            # with fewer items resets these sessions again, to the same state
            self.check_frames(recorded + sum(self._raw_pixels(obs) for obs, _ in raws), len(items))
            for k, wire in zip(todo, self._encode_resets(raws)):
                results[k] = sessions[k].record_reset(wire)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ step
    def step(self, items: list[dict[str, Any]], ttl: float) -> list[dict[str, Any]]:
        """``items``: ``{"session_id", "index", "text", "episode"}``. ``index`` = 1 + the steps the session
        took since its reset; repeating the last index with the same text returns the recorded result."""
        for i, it in enumerate(items):
            if len(it["text"]) > self.limits.max_text_chars:
                raise ServiceError(
                    422, "invalid_request",
                    f"items[{i}].text: text has {len(it['text'])} characters; the limit is {self.limits.max_text_chars}",
                    errors=[{"field": f"items[{i}].text", "message": "too long", "type": "too_long"}],
                )
        sessions = self._sessions(items, ttl)
        with Locked(sessions):
            conflicts = [
                f"items[{i}]: {why}"
                for i, (s, it) in enumerate(zip(sessions, items))
                if (why := s.step_conflict(it["index"], it["text"], it.get("episode"))) is not None
            ]
            if conflicts:
                raise ServiceError(409, "step_conflict", "; ".join(conflicts[:5]), conflicts=conflicts)
            # a frame keeps its size within an episode: the budget is exact before stepping
            self.check_frames(sum(s.env.frame_pixels() for s in sessions), len(items))
            results: list[dict[str, Any] | None] = [None] * len(items)
            stepped: list[tuple[int, Session, tuple[Any, ...]]] = []
            failure: ServiceError | None = None
            for k, (s, it) in enumerate(zip(sessions, items)):
                if s.is_replay(it["index"]):
                    results[k] = {**s.last_result, "replayed": True}  # type: ignore[dict-item]
                    continue
                try:
                    stepped.append((k, s, s.step(it["index"], it["text"])))
                except Exception as exc:
                    failure = ServiceError(500, "env_error", f"session {s.sid} step {it['index']}: {type(exc).__name__}: {exc}")
                    break
            for (k, s, _), wire in zip(stepped, self._encode_steps([res for _, _, res in stepped])):
                results[k] = s.record_step(wire)
            if failure is not None:
                raise failure
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ close
    def close(self, sids: list[str]) -> dict[str, list[str]]:
        self.check_batch(len(sids), "session_ids")
        gone = self.store.pop(sids)
        for s in gone:
            with Locked([s]):
                pass  # wait for an in-flight request on it
        self.close_envs(gone)
        closed = {s.sid for s in gone}
        return {"closed": [s for s in sids if s in closed], "unknown": [s for s in sids if s not in closed]}

    def shutdown(self) -> None:
        self.close_envs(self.store.pop(list(self.store.sessions)))
        if self._pool is not None:
            self._pool.shutdown(wait=False)
