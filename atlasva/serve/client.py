"""HttpEnvPool: the EnvPool over one or more env servers (``atlasva serve``).

- Batched: one request per server per ``reset``/``step`` (chunked by ``batch_size``), servers
  called in parallel.
- Bounded retries with exponential backoff and jitter (:mod:`atlasva.retry`, the one helper) on
  connection errors, timeouts, dropped or malformed responses and 502/504; 503 (server full or busy)
  waits for ``Retry-After`` up to ``capacity_wait`` seconds. A 422 ``frame_budget`` (too many image
  pixels for one response) splits the batch in halves.
- Distrustful: responses are read up to ``max_response_bytes``; every frame is checked before use
  (declared shape before inflating, pixels against their hash; :class:`~atlasva.serve.codec.FrameError`)
  and a frame that fails is fetched again through the idempotent replay of the same request — a second
  failure is a clear error.
- Idempotent: every step carries its index, every create a client-chosen session id and every
  reset an episode number, so a retried request never steps or resets an env twice.
- Load balancing: new sessions go to the reachable servers with the most free capacity.
- Failover: when a server stays unreachable, its sessions are rebuilt on another server (or on
  the same one once it is back) by creating the env with the same config, seed and options and
  replaying the slot's text history. Envs are deterministic, so the rebuilt session is in the
  same state; the replayed result is checked against the recorded one (``verify_replay``).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import httpx

from atlasva.envs.pool import EnvPool, StepResult, split_config
from atlasva.retry import Backoff, RetriesExhausted, RetryableError, call_with_retries, retry_after_seconds
from atlasva.serve.codec import MAX_FRAME_PIXELS, FrameError, ImageDecoder, decode_obs, decode_step, digest

API = "/v1/sessions"
T = TypeVar("T")


class ServeError(RuntimeError):
    """The server refused a request (4xx) or failed on it (5xx)."""

    def __init__(self, status: int, code: str, message: str, url: str) -> None:
        super().__init__(f"{url} answered {status} ({code}): {message}")
        self.status, self.code, self.message, self.url = status, code, message, url


class InvalidRequestError(ServeError, ValueError):
    """The server rejected the request's content (400, 409, 413, 422): a bad config, option or text."""


class ReplayMismatchError(RuntimeError):
    """A session rebuilt by replay did not reach the recorded result (the env is not deterministic)."""


class _Unknown(Exception):
    def __init__(self, session_ids: list[str]) -> None:
        super().__init__(f"unknown sessions {session_ids[:3]}")
        self.session_ids = set(session_ids)


class _Down(Exception):
    def __init__(self, server: int, cause: BaseException | str) -> None:
        super().__init__(f"server {server} unreachable: {cause}")
        self.server = server
        self.cause = cause


@dataclass
class _Slot:
    config: dict[str, Any]
    seed: int | None
    options: dict[str, Any] | None
    server: int = -1
    sid: str = ""
    episode: int = 0
    index: int = 0
    history: list[str] = field(default_factory=list)
    done: bool = False
    digest: str = ""  # of the latest result (reset or step), for replay checks


class HttpEnvPool(EnvPool):
    """EnvPool over env servers. ``base_urls``: e.g. ``["http://10.0.0.5:8001", "http://10.0.0.6:8001"]``.

    Bad configs, options or texts raise :class:`InvalidRequestError` (a ``ValueError``, as the
    in-process pool raises) with the server's message naming the field. One pool object is meant
    for one agent loop: do not call ``reset``/``step`` from several threads at once.

    ``retries``: attempts after the first on a transport error before a server counts as down;
    ``failover_wait``: seconds to wait for any server to come back when none is reachable;
    ``capacity_wait``: seconds to keep retrying 503s; ``dead_cooldown``: seconds a down server
    is not given new sessions; ``timeout``: seconds per request (then it is retried);
    ``max_response_bytes`` / ``max_frame_pixels``: the largest response body / frame accepted.
    """

    def __init__(
        self,
        base_urls: str | Sequence[str],
        token: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        capacity_wait: float = 300.0,
        failover_wait: float = 120.0,
        dead_cooldown: float = 5.0,
        batch_size: int = 256,
        verify_replay: bool = True,
        image_cache_bytes: int = 64 << 20,
        trust_env: bool = False,
        max_response_bytes: int = 512 << 20,
        max_frame_pixels: int = MAX_FRAME_PIXELS,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("HttpEnvPool needs at least one base URL, e.g. 'http://127.0.0.1:8001'")
        for u in urls:
            if not isinstance(u, str) or not u.startswith(("http://", "https://")):
                raise ValueError(f"base URL {u!r} must start with http:// or https://")
        if int(retries) < 0 or int(batch_size) < 1:
            raise ValueError(f"retries must be >= 0 and batch_size >= 1, got {retries} and {batch_size}")
        self.urls = [u.rstrip("/") for u in urls]
        self.retries = int(retries)
        self._backoff = Backoff(retries=self.retries, base=float(backoff), cap=float(max_backoff),
                                patience=float(capacity_wait))
        self.capacity_wait, self.failover_wait = float(capacity_wait), float(failover_wait)
        self.max_response_bytes = int(max_response_bytes)
        self.dead_cooldown = float(dead_cooldown)
        self.batch_size = int(batch_size)
        self.verify_replay = bool(verify_replay)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        n = len(self.urls)
        # plain-HTTP servers need no CA bundle (loading it costs ~0.2 s per client)
        plain = all(u.startswith("http://") for u in self.urls)
        self._http = httpx.Client(
            timeout=timeout,
            verify=False if plain else True,
            headers=headers,
            trust_env=trust_env,
            limits=httpx.Limits(max_connections=4 * n + 4, max_keepalive_connections=4 * n + 4),
        )
        self._executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="atlasva-http") if n > 1 else None
        self._decoder = ImageDecoder(image_cache_bytes, max_pixels=max_frame_pixels)
        self._threads = max(1, min(4, os.cpu_count() or 1))
        self._decode_pool: ThreadPoolExecutor | None = None
        self._dead_until = [0.0] * n
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._closed = False
        #: counters: requests sent, retries, sessions rebuilt by replay, steps replayed, frames fetched
        #: again after failing their check, batches split for the server's frame budget
        self.stats = {"requests": 0, "retries": 0, "rebuilt": 0, "replayed_steps": 0, "refetched": 0, "splits": 0}

    # ------------------------------------------------------------------ transport
    def _send(self, url: str, body: dict[str, Any]) -> tuple[int, httpx.Headers, bytes]:
        """One POST, the response read up to ``max_response_bytes``."""
        with self._http.stream("POST", url, json=body) as r:
            declared = r.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_response_bytes:
                raise ServeError(r.status_code, "response_too_large",
                                 f"{declared} bytes announced; the client's limit is {self.max_response_bytes}", url)
            chunks, size = [], 0
            for chunk in r.iter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise ServeError(r.status_code, "response_too_large",
                                     f"more than the client's limit of {self.max_response_bytes} bytes", url)
                chunks.append(chunk)
            return r.status_code, r.headers, b"".join(chunks)

    def _post(self, server: int, path: str, body: dict[str, Any], retries: int | None = None) -> dict[str, Any]:
        url = self.urls[server] + path

        def attempt() -> tuple[int, Any, bytes]:
            self.stats["requests"] += 1
            try:
                status, headers, content = self._send(url, body)
            except httpx.TransportError as exc:  # refused, reset, dropped, timed out: it may or may not have run
                raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
            if status == 503:  # full or busy: not a failure, wait as long as the server asks
                raise RetryableError(f"HTTP 503: {content[:300].decode(errors='replace')}",
                                     retry_after=retry_after_seconds(headers.get("retry-after")), counts=False)
            if status in (502, 504):
                raise RetryableError(f"HTTP {status}")
            try:
                data = json.loads(content)
            except ValueError:
                if status < 300:  # a 2xx that is not JSON was damaged on the way: ask again (idempotent)
                    raise RetryableError(f"HTTP {status} with a malformed JSON body ({len(content)} bytes)") from None
                data = {"error": "not_json", "message": content[:500].decode(errors="replace")}
            return status, data, content

        def count(exc: RetryableError, delay: float) -> None:
            self.stats["retries"] += 1

        backoff = self._backoff if retries is None else replace(self._backoff, retries=retries)
        try:
            status, data, content = call_with_retries(attempt, backoff, rng=self._rng, on_retry=count)
        except RetriesExhausted as exc:
            if exc.last.counts:
                raise _Down(server, exc.last.reason) from exc
            raise ServeError(503, "capacity", f"still full or busy after waiting {self.capacity_wait:g}s: {exc.last.reason}",
                             url) from exc
        if status == 404 and isinstance(data, dict) and data.get("error") == "unknown_session":
            raise _Unknown(list(data.get("session_ids", [])))
        if status >= 400:
            code = data.get("error", "error") if isinstance(data, dict) else "error"
            msg = data.get("message", content[:500]) if isinstance(data, dict) else content[:500]
            cls = InvalidRequestError if status in (400, 409, 413, 422) else ServeError
            raise cls(status, str(code), str(msg), url)
        return data

    def _post_chunks(self, server: int, path: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for k in range(0, len(items), self.batch_size):
            out += self._post_split(server, path, items[k : k + self.batch_size])
        return out

    def _post_split(self, server: int, path: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """POST ``items``; halve the batch while the server says its frames exceed one response's budget
        (it refuses before running anything, so the halves run each item exactly once)."""
        try:
            return self._post(server, path, {"items": items})["results"]
        except InvalidRequestError as exc:
            if exc.code != "frame_budget" or len(items) < 2:
                raise
        self.stats["splits"] += 1
        half = len(items) // 2
        return self._post_split(server, path, items[:half]) + self._post_split(server, path, items[half:])

    def _each_server(self, work: dict[int, Callable[[], T]]) -> dict[int, T | BaseException]:
        """Run one callable per server (in parallel when there are several); exceptions are returned."""
        out: dict[int, T | BaseException] = {}
        if self._executor is None or len(work) <= 1:
            for srv, fn in work.items():
                try:
                    out[srv] = fn()
                except Exception as exc:
                    out[srv] = exc
            return out
        futures = {srv: self._executor.submit(fn) for srv, fn in work.items()}
        for srv, fut in futures.items():
            try:
                out[srv] = fut.result()
            except Exception as exc:
                out[srv] = exc
        return out

    # ------------------------------------------------------------------ servers
    def _alive(self, server: int) -> bool:
        return time.monotonic() >= self._dead_until[server]

    def _mark_dead(self, server: int) -> None:
        self._dead_until[server] = time.monotonic() + self.dead_cooldown

    def _health(self, server: int) -> dict[str, Any] | None:
        try:
            r = self._http.get(self.urls[server] + "/health", timeout=2.0)
            if r.status_code == 200:
                self._dead_until[server] = 0.0
                return r.json()
        except (httpx.TransportError, ValueError):
            pass
        self._mark_dead(server)
        return None

    def _targets(self, n: int, avoid: int | None = None, deadline: float | None = None) -> list[int]:
        """Servers for ``n`` new sessions: reachable ones, most free capacity first (waits if none)."""
        deadline = deadline if deadline is not None else time.monotonic() + self.failover_wait
        attempt = 0
        while True:
            cands = [s for s in range(len(self.urls)) if self._alive(s) and s != avoid]
            if not cands and avoid is not None and self._alive(avoid):
                cands = [avoid]
            free = {s: h["free"] for s in cands if (h := self._health(s)) is not None}
            if not free:  # nothing reachable right now: probe every server, the avoided one too
                free = {s: h["free"] for s in range(len(self.urls)) if (h := self._health(s)) is not None}
            if free:
                load = {s: sum(1 for sl in self._slots if sl.server == s and sl.sid) for s in free}
                out = []
                for _ in range(n):
                    best = max(free, key=lambda s: (free[s], -load[s], -s))
                    out.append(best)
                    free[best] -= 1
                    load[best] += 1
                return out
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"no env server reachable after {self.failover_wait:g}s: {', '.join(self.urls)}"
                )
            attempt += 1
            time.sleep(self._backoff.delay(attempt, self._rng))

    # ------------------------------------------------------------------ sessions
    def _create_and_replay(self, server: int, idx: list[int]) -> dict[int, dict[str, Any]]:
        """New sessions on ``server`` for slots ``idx``, replaying their histories. Reset wires by slot."""
        sids = {i: uuid.uuid4().hex for i in idx}
        items = [
            {"config": self._slots[i].config, "seed": self._slots[i].seed, "options": self._slots[i].options, "session_id": sids[i]}
            for i in idx
        ]
        created = self._post_chunks(server, f"{API}/create", items)
        resets: dict[int, dict[str, Any]] = {}
        last: dict[int, dict[str, Any]] = {}
        for i, wire in zip(idx, created):
            resets[i] = last[i] = wire
        steps = max((len(self._slots[i].history) for i in idx), default=0)
        for k in range(steps):
            todo = [i for i in idx if len(self._slots[i].history) > k]
            body = [{"session_id": sids[i], "index": k + 1, "text": self._slots[i].history[k], "episode": 0} for i in todo]
            for i, wire in zip(todo, self._post_chunks(server, f"{API}/step", body)):
                last[i] = wire
            self.stats["replayed_steps"] += len(todo)
        for i in idx:
            slot = self._slots[i]
            if self.verify_replay and slot.digest and digest(last[i]) != slot.digest:
                raise ReplayMismatchError(
                    f"slot {i} ({slot.config.get('env')!r}, seed {slot.seed}): replaying {len(slot.history)} step(s) on "
                    f"{self.urls[server]} did not reproduce the recorded result; the env is not deterministic, so "
                    "its session cannot be moved to another server"
                )
            if slot.seed is None and isinstance(resets[i]["info"].get("seed"), int):
                slot.seed = resets[i]["info"]["seed"]  # replays need the level the env picked
            slot.server, slot.sid, slot.episode, slot.index = server, sids[i], 0, len(slot.history)
            slot.digest = digest(last[i])
        return resets

    def _rebuild(self, idx: list[int], prefer: int | None = None, avoid: int | None = None) -> dict[int, dict[str, Any]]:
        """Give slots ``idx`` fresh sessions (replaying their histories), failing over between servers."""
        deadline = time.monotonic() + self.failover_wait
        todo = list(idx)
        resets: dict[int, dict[str, Any]] = {}
        while todo:
            if prefer is not None and self._alive(prefer):
                targets = [prefer] * len(todo)
                prefer = None
            else:
                targets = self._targets(len(todo), avoid=avoid, deadline=deadline)
            groups: dict[int, list[int]] = {}
            for i, srv in zip(todo, targets):
                groups.setdefault(srv, []).append(i)
            outcomes = self._each_server({srv: (lambda s=srv, g=g: self._create_and_replay(s, g)) for srv, g in groups.items()})
            todo = []
            for srv, res in outcomes.items():
                if isinstance(res, _Down | _Unknown):
                    if isinstance(res, _Down):
                        self._mark_dead(srv)
                    if time.monotonic() >= deadline:
                        raise RuntimeError(f"could not rebuild {len(groups[srv])} session(s): {res}") from res
                    todo += groups[srv]
                elif isinstance(res, BaseException):
                    raise res
                else:
                    resets.update(res)
                    self.stats["rebuilt"] += sum(1 for i in groups[srv] if self._slots[i].history)
        return resets

    def _close_sessions(self, by_server: dict[int, list[str]]) -> None:
        def close(srv: int, sids: list[str]) -> None:
            for k in range(0, len(sids), self.batch_size):
                self._post(srv, f"{API}/close", {"session_ids": sids[k : k + self.batch_size]}, retries=0)

        work = {srv: (lambda s=srv, ids=ids: close(s, ids)) for srv, ids in by_server.items() if ids and self._alive(srv)}
        self._each_server(work)  # best effort: a dead server's sessions are reaped by its TTL

    # ------------------------------------------------------------------ EnvPool
    def reset(self, seeds, configs, options=None):
        self._check_open()
        opts = self._check_reset_args(seeds, configs, options)
        cfgs = []
        for cfg in configs:
            split_config(cfg)
            cfgs.append(dict(cfg))
        old = self._slots
        new = [_Slot(config=c, seed=None if s is None else int(s), options=None if o is None else dict(o))
               for c, s, o in zip(cfgs, seeds, opts)]
        to_close: dict[int, list[str]] = {}
        reuse: dict[int, list[int]] = {}
        fresh: list[int] = []
        for i, slot in enumerate(new):
            prev = old[i] if i < len(old) else None
            if prev is not None and prev.sid and prev.config == slot.config and self._alive(prev.server):
                slot.server, slot.sid, slot.episode = prev.server, prev.sid, prev.episode
                reuse.setdefault(prev.server, []).append(i)
            else:
                if prev is not None and prev.sid:
                    to_close.setdefault(prev.server, []).append(prev.sid)
                fresh.append(i)
        for prev in old[len(new):]:
            if prev.sid:
                to_close.setdefault(prev.server, []).append(prev.sid)
        self._slots = new
        self._close_sessions(to_close)

        def do_reset(srv: int, idx: list[int]) -> list[dict[str, Any]]:
            items = [
                {"session_id": new[i].sid, "seed": new[i].seed, "options": new[i].options, "episode": new[i].episode + 1}
                for i in idx
            ]
            return self._post_chunks(srv, f"{API}/reset", items)

        wires: dict[int, dict[str, Any]] = {}
        outcomes = self._each_server({srv: (lambda s=srv, g=g: do_reset(s, g)) for srv, g in reuse.items()})
        for srv, res in outcomes.items():
            if isinstance(res, _Down | _Unknown):
                if isinstance(res, _Down):
                    self._mark_dead(srv)
                for i in reuse[srv]:
                    new[i].sid = ""
                fresh += reuse[srv]
            elif isinstance(res, BaseException):
                raise res
            else:
                for i, wire in zip(reuse[srv], res):
                    slot = new[i]
                    slot.episode = int(wire["episode"])
                    if slot.seed is None and isinstance(wire["info"].get("seed"), int):
                        slot.seed = wire["info"]["seed"]
                    slot.digest = digest(wire)
                    wires[i] = wire
        if fresh:
            wires.update(self._rebuild(sorted(fresh)))
        decoded = self._decode_checked(list(range(len(new))), wires, self._decode_reset, self._refetch_resets)
        return [decoded[i] for i in range(len(new))]

    def step(self, texts: Sequence[str | None]) -> list[StepResult | None]:
        self._check_open()
        if len(texts) != len(self._slots):
            raise ValueError(f"step got {len(texts)} texts for {len(self._slots)} slots (use None for finished slots)")
        for i, text in enumerate(texts):
            if text is None:
                continue
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str or None, got {type(text).__name__}")
            if self._slots[i].done:
                raise ValueError(f"slot {i} has finished its episode; pass None for it or reset the pool")
        out: list[StepResult | None] = [None] * len(texts)
        accepted: dict[int, dict[str, Any]] = {}
        pending = [i for i, t in enumerate(texts) if t is not None]
        rounds = 0
        while pending:
            rounds += 1
            if rounds > 10 * len(self.urls) + 10:
                raise RuntimeError(f"gave up stepping {len(pending)} slot(s) after {rounds - 1} failover rounds")
            groups: dict[int, list[int]] = {}
            for i in pending:
                groups.setdefault(self._slots[i].server, []).append(i)

            def send(srv: int, idx: list[int]) -> list[dict[str, Any]]:
                items = [
                    {"session_id": self._slots[i].sid, "index": self._slots[i].index + 1, "text": texts[i],
                     "episode": self._slots[i].episode}
                    for i in idx
                ]
                return self._post_chunks(srv, f"{API}/step", items)

            outcomes = self._each_server({srv: (lambda s=srv, g=g: send(s, g)) for srv, g in groups.items()})
            pending = []
            for srv, res in outcomes.items():
                idx = groups[srv]
                if isinstance(res, _Unknown):  # server restarted or reaped them: rebuild there if we can
                    lost = [i for i in idx if self._slots[i].sid in res.session_ids] or idx
                    self._rebuild(lost, prefer=srv)
                    pending += idx
                elif isinstance(res, _Down):
                    self._mark_dead(srv)
                    self._rebuild(idx, avoid=srv)
                    pending += idx
                elif isinstance(res, BaseException):
                    raise res
                else:
                    for i, wire in zip(idx, res):
                        self._accept(i, texts[i], wire)  # type: ignore[arg-type]
                        accepted[i] = wire
        order = sorted(accepted)
        decoded = self._decode_checked(order, accepted, lambda w: decode_step(w, self._decoder), self._refetch_steps)
        for i in order:
            out[i] = decoded[i]
        return out

    # ------------------------------------------------------------------ frames
    def _decode_reset(self, wire: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        return decode_obs(wire["obs"], self._decoder), wire["info"]

    def _decode_many(self, decode: Callable[[dict[str, Any]], T], wires: list[dict[str, Any]]) -> list[T | FrameError]:
        def checked(wire: dict[str, Any]) -> T | FrameError:
            try:
                return decode(wire)
            except FrameError as exc:
                return exc

        # PNG decoding (zlib) releases the GIL: decode a large batch on threads
        if len(wires) < 8 or self._threads < 2:
            return [checked(w) for w in wires]
        if self._decode_pool is None:
            self._decode_pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="atlasva-decode")
        return list(self._decode_pool.map(checked, wires))

    def _decode_checked(
        self,
        idx: list[int],
        wires: dict[int, dict[str, Any]],
        decode: Callable[[dict[str, Any]], T],
        refetch: Callable[[list[int]], dict[int, dict[str, Any]]],
    ) -> dict[int, T]:
        """Decode the wires of slots ``idx``. A frame that fails its check is fetched once more (the
        server replays the recorded result: nothing runs twice); failing again raises FrameError."""
        out: dict[int, T] = {}
        bad: list[int] = []
        for i, res in zip(idx, self._decode_many(decode, [wires[i] for i in idx])):
            if isinstance(res, FrameError):
                bad.append(i)
            else:
                out[i] = res
        if not bad:
            return out
        self.stats["refetched"] += len(bad)
        again = refetch(bad)
        for i, res in zip(bad, self._decode_many(decode, [again[i] for i in bad])):
            slot = self._slots[i]
            if isinstance(res, FrameError):
                raise FrameError(f"slot {i} (session {slot.sid} on {self.urls[slot.server]}): a frame failed its check "
                                 f"twice, so it is not a transmission error: {res}")
            out[i] = res
            slot.digest = digest(again[i])
        return out

    def _refetch(self, path: str, idx: list[int], item: Callable[[_Slot], dict[str, Any]]) -> dict[int, dict[str, Any]]:
        groups: dict[int, list[int]] = {}
        for i in idx:
            groups.setdefault(self._slots[i].server, []).append(i)
        out: dict[int, dict[str, Any]] = {}
        for srv, g in groups.items():
            try:
                wires = self._post_chunks(srv, path, [item(self._slots[i]) for i in g])
            except (_Down, _Unknown) as exc:
                raise RuntimeError(f"could not fetch {len(g)} damaged frame(s) again from {self.urls[srv]}: {exc}") from exc
            out.update(zip(g, wires))
        return out

    def _refetch_steps(self, idx: list[int]) -> dict[int, dict[str, Any]]:
        return self._refetch(f"{API}/step", idx, lambda s: {"session_id": s.sid, "index": s.index, "text": s.history[-1],
                                                            "episode": s.episode})

    def _refetch_resets(self, idx: list[int]) -> dict[int, dict[str, Any]]:
        return self._refetch(f"{API}/reset", idx, lambda s: {"session_id": s.sid, "seed": s.seed, "options": s.options,
                                                             "episode": s.episode})

    def _accept(self, i: int, text: str, wire: dict[str, Any]) -> None:
        slot = self._slots[i]
        if int(wire["index"]) != slot.index + 1 or wire["session_id"] != slot.sid:
            raise RuntimeError(f"slot {i}: the server answered step {wire['index']} of {wire['session_id']}, "
                               f"expected step {slot.index + 1} of {slot.sid}")
        slot.history.append(text)
        slot.index += 1
        slot.done = bool(wire["terminated"] or wire["truncated"])
        slot.digest = digest(wire)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this HttpEnvPool is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        by_server: dict[int, list[str]] = {}
        for slot in self._slots:
            if slot.sid:
                by_server.setdefault(slot.server, []).append(slot.sid)
        try:
            self._close_sessions(by_server)
        finally:
            self._slots = []
            for ex in (self._executor, self._decode_pool):
                if ex is not None:
                    ex.shutdown(wait=True)
            self._http.close()

    # ------------------------------------------------------------------ introspection
    def health(self) -> list[dict[str, Any] | None]:
        """``GET /health`` of every server (None where unreachable)."""
        return [self._health(s) for s in range(len(self.urls))]

    def placement(self) -> list[tuple[str, str]]:
        """(server URL, session id) of every slot."""
        return [(self.urls[s.server] if s.server >= 0 else "", s.sid) for s in self._slots]

    def __repr__(self) -> str:
        return f"HttpEnvPool(base_urls={self.urls!r}, slots={len(self._slots)})"


