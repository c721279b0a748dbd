"""The env service: a FastAPI app holding env sessions, and ``atlasva serve`` (:func:`serve_main`).

Endpoints (JSON; images as PNG, see :mod:`atlasva.serve.codec`):

- ``GET /health`` — status, live sessions, capacity, version (no token needed: for probes);
- ``GET /envs`` — registered env names;
- ``POST /v1/sessions/create`` — create and reset many sessions (``{"items": [{"config", "seed",
  "options", "session_id"?}]}``). A client-chosen ``session_id`` makes a retried create return
  the first result instead of creating a second env. Over capacity → 503 + ``Retry-After``;
- ``POST /v1/sessions/reset`` — reset many sessions (``episode`` numbers make retries idempotent);
- ``POST /v1/sessions/step`` — step many sessions (``{"session_id", "index", "text"}``; ``index`` is
  1 + the number of steps the session took since its reset). A repeated index with the same text
  returns the recorded result without stepping again;
- ``POST /v1/sessions/close`` — close many sessions (unknown ids are reported, not an error).

Errors are JSON ``{"error": CODE, "message": TEXT, ...}``; invalid bodies give 422 naming the field
(``items[3].text``), never a 500. Sessions idle longer than the TTL are closed by a reaper thread.
Bodies are limited in bytes, texts in characters; a bearer token (if set) is compared in
constant time. The server binds to loopback unless told otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import importlib
import ipaddress
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from atlasva import __version__, formats
from atlasva.envs.base import AtlasEnv
from atlasva.envs.pool import split_config
from atlasva.envs.registry import config_keys, env_class, make, names
from atlasva.serve.codec import ImageEncoder, encode_obs, encode_step

SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
MAX_SEED = 2**63 - 1
API = "/v1/sessions"


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_envs: int = 256
    token: str | None = None
    session_ttl: float = 900.0  # seconds a session may stay idle before it is closed
    max_body_bytes: int = 16 << 20
    max_text_chars: int = formats.MAX_TEXT_CHARS
    max_batch: int = 1024
    retry_after: int = 1  # seconds, sent with 503 when the server is full
    image_cache_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name in ("max_envs", "max_body_bytes", "max_text_chars", "max_batch", "retry_after"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.session_ttl > 0:
            raise ValueError(f"session_ttl must be > 0 seconds, got {self.session_ttl}")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty (leave it unset to disable authentication)")


# --------------------------------------------------------------------------- request bodies


def _check_config(config: dict[str, Any]) -> dict[str, Any]:
    name = config.get("env")
    if not isinstance(name, str):
        raise ValueError(f"config needs an 'env' name (a string), e.g. {{'env': 'sokoban'}}; registered: {', '.join(names())}")
    cls = env_class(name)  # unknown names: ValueError with the nearest registered name
    accepted = config_keys(cls)
    unknown = [k for k in config if k != "env" and k not in accepted]
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} for env {name!r}; accepted: {', '.join(accepted)}")
    return config


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


SessionId = Annotated[str, Field(pattern=SESSION_ID_PATTERN, description="8-64 characters of [A-Za-z0-9_-]")]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED, description="level seed; null: the env picks one")]


class CreateItem(_Body):
    config: dict[str, JsonValue] = Field(description='env config, e.g. {"env": "sokoban", "obs_mode": "vision"}')
    seed: Seed = None
    options: dict[str, JsonValue] | None = Field(None, description='reset options, e.g. {"level": [...]}')
    session_id: SessionId | None = Field(None, description="client-chosen id: makes a retried create idempotent")

    @field_validator("config")
    @classmethod
    def _valid_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_config(value)


class CreateRequest(_Body):
    items: list[CreateItem] = Field(min_length=1)


class ResetItem(_Body):
    session_id: SessionId
    seed: Seed = None
    options: dict[str, JsonValue] | None = None
    episode: int | None = Field(
        None, ge=1, description="the session's next episode number; repeating the current one returns its reset"
    )


class ResetRequest(_Body):
    items: list[ResetItem] = Field(min_length=1)


class StepItem(_Body):
    session_id: SessionId
    index: int = Field(ge=1, description="1 + steps taken since the reset; a repeated index returns the recorded result")
    text: str = Field(description="the model's raw output")
    episode: int | None = Field(None, ge=0, description="if given, must be the session's current episode")


class StepRequest(_Body):
    items: list[StepItem] = Field(min_length=1)


class CloseRequest(_Body):
    session_ids: list[SessionId] = Field(min_length=1)


class WireImage(BaseModel):
    sha: str
    shape: list[int]
    png: str = Field(description="base64 PNG")


class WireObs(BaseModel):
    text: str
    images: list[WireImage]


class ResetResult(BaseModel):
    session_id: str
    episode: int
    obs: WireObs
    info: dict[str, Any]


class StepResult(BaseModel):
    session_id: str
    index: int
    episode: int
    replayed: bool = Field(description="true when this index was already taken and the recorded result is returned")
    obs: WireObs
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


class ResetResponse(BaseModel):
    results: list[ResetResult]


class StepResponse(BaseModel):
    results: list[StepResult]


class CloseResponse(BaseModel):
    closed: list[str]
    unknown: list[str]


class ErrorResponse(BaseModel):
    error: str
    message: str


class Health(BaseModel):
    status: str
    sessions: int
    capacity: int
    free: int
    version: str
    session_ttl: float


# --------------------------------------------------------------------------- sessions


def _text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _reset_key(seed: int | None, options: dict[str, Any] | None) -> str:
    return json.dumps([seed, options], sort_keys=True)


@dataclass(eq=False)
class Session:
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


class Store:
    """Live sessions and reserved capacity (constructing envs happens outside the lock)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.sessions: dict[str, Session] = {}
        self.reserved = 0
        self.lock = threading.Lock()

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
        with self.lock:
            self.reserved -= len(sessions)
            for s in sessions:
                self.sessions[s.sid] = s

    def lookup(self, sids: list[str]) -> tuple[list[Session], list[str]]:
        with self.lock:
            found = [self.sessions.get(s) for s in sids]
        missing = [sid for sid, s in zip(sids, found) if s is None]
        return [s for s in found if s is not None], missing

    def pop(self, sids: list[str]) -> list[Session]:
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


class _Locked:
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


# --------------------------------------------------------------------------- errors


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def invalid(field_loc: tuple[Any, ...], message: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", *field_loc), "msg": message, "input": None}])


def _error(status: int, code: str, message: str, **extra: Any) -> HTTPException:
    return HTTPException(status_code=status, detail={"error": code, "message": message, **extra})


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = []
    for e in exc.errors():
        loc = tuple(e.get("loc", ()))
        if e.get("type") == "json_invalid":
            pos = loc[1] if len(loc) > 1 else "?"
            reason = (e.get("ctx") or {}).get("error", "invalid JSON")
            errors.append({"field": "body", "message": f"malformed JSON body at character {pos}: {reason}", "type": "json_invalid"})
            continue
        msg = str(e.get("msg", "invalid value"))
        errors.append({"field": _field(loc), "message": msg, "type": str(e.get("type", "value_error"))})
    text = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:10])
    if len(errors) > 10:
        text += f"; … and {len(errors) - 10} more"
    return JSONResponse(status_code=422, content={"error": "invalid_request", "message": text, "errors": errors[:100]})


class _BodyLimit:
    """ASGI middleware: read the body up to ``max_bytes`` (413 beyond), then hand it on."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, 400, "bad_request", "Content-Length is not an integer")
                    return
                if declared > self.max_bytes:
                    await self._too_large(send)
                    return
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable[..., Any]) -> None:
        await self._reject(send, 413, "body_too_large", f"request body exceeds the limit of {self.max_bytes} bytes")

    @staticmethod
    async def _reject(send: Callable[..., Any], status: int, code: str, message: str) -> None:
        data = json.dumps({"error": code, "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except ValueError:  # a non-finite float in an info dict: Python clients still read it
            text = json.dumps(content, ensure_ascii=False, allow_nan=True, separators=(",", ":"))
        return text.encode("utf-8")


# --------------------------------------------------------------------------- the app

_BEARER = HTTPBearer(auto_error=False, description="the server's --token, if it was started with one")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app of the env service (sessions live in this process)."""
    cfg = config or ServeConfig()
    store = Store(cfg.max_envs)
    encoder = ImageEncoder(cfg.image_cache_bytes)
    stop = threading.Event()
    threads = max(1, min(4, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="atlasva-encode") if threads > 1 else None

    def encode_many(raws: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        if pool is None or len(raws) < 4:
            return [encode_step(r, encoder) for r in raws]
        return list(pool.map(lambda r: encode_step(r, encoder), raws))

    def close_envs(sessions: list[Session]) -> None:
        for s in sessions:
            try:
                s.env.close()
            except Exception as exc:  # a failing close must not take the server down
                print(f"atlasva serve: closing session {s.sid} failed: {exc!r}", file=sys.stderr)

    def reaper() -> None:
        period = max(0.05, min(cfg.session_ttl / 4.0, 5.0))
        while not stop.wait(period):
            close_envs(store.reap(cfg.session_ttl))

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        thread = threading.Thread(target=reaper, name="atlasva-session-reaper", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            close_envs(store.pop(list(store.sessions)))
            if pool is not None:
                pool.shutdown(wait=False)

    app = FastAPI(
        title="atlasva env service",
        version=__version__,
        description=__doc__,
        lifespan=lifespan,
        default_response_class=_JSON,
    )
    app.state.store = store
    app.state.config = cfg
    app.state.encoder = encoder

    def authorize(cred: BearerCredentials) -> None:
        if cfg.token is None:
            return
        if cred is None or not cred.credentials:
            raise HTTPException(
                401,
                detail={"error": "unauthorized", "message": "missing bearer token: send 'Authorization: Bearer <token>'"},
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(cred.credentials.encode("utf-8"), cfg.token.encode("utf-8")):
            raise HTTPException(
                401,
                detail={"error": "unauthorized", "message": "invalid bearer token"},
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(HTTPException)
    async def _on_http(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict):
            content = exc.detail
        else:
            phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "error"
            content = {"error": phrase.lower().replace(" ", "_"), "message": str(exc.detail)}
        return JSONResponse(status_code=exc.status_code, content=content, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=500, content={"error": "internal", "message": f"{type(exc).__name__}: {exc}"})

    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorResponse, "description": "missing or invalid bearer token"},
        404: {"model": ErrorResponse, "description": "unknown session ids (listed in `session_ids`)"},
        409: {"model": ErrorResponse, "description": "step index / episode conflicts (listed in `conflicts`)"},
        413: {"model": ErrorResponse, "description": "body too large"},
        422: {"model": ErrorResponse, "description": "invalid body; `errors[].field` names the field"},
        503: {"model": ErrorResponse, "description": "no free env capacity; retry after `Retry-After` seconds"},
    }
    auth = [Depends(authorize)]

    def check_batch(n: int) -> None:
        if n > cfg.max_batch:
            raise invalid(("items",), f"{n} items in one request; the limit is {cfg.max_batch}", "too_long")

    def check_unique(sids: list[str], key: str = "items") -> None:
        seen: set[str] = set()
        for i, sid in enumerate(sids):
            if sid in seen:
                raise invalid((key, i, "session_id") if key == "items" else (key, i), f"session {sid} appears twice in one request")
            seen.add(sid)

    def lookup(sids: list[str]) -> list[Session]:
        found, missing = store.lookup(sids)
        if missing:
            raise _error(
                404,
                "unknown_session",
                f"{len(missing)} unknown session(s) (closed, reaped after {cfg.session_ttl:g}s idle, or the server restarted): "
                + ", ".join(missing[:5]),
                session_ids=missing,
            )
        by_id = {s.sid: s for s in found}
        return [by_id[sid] for sid in sids]

    def do_reset(s: Session, seed: int | None, options: dict[str, Any] | None, episode: int, where: tuple[Any, ...]) -> dict[str, Any]:
        try:
            obs, info = s.env.reset(seed=seed, options=options)
        except (ValueError, TypeError, KeyError) as exc:
            raise invalid(where, f"reset failed: {exc}") from exc
        s.episode, s.index, s.done = episode, 0, False
        s.last_text, s.last_result = "", None
        s.reset_key = _reset_key(seed, options)
        s.reset_result = {"session_id": s.sid, "episode": episode, "obs": encode_obs(obs, encoder), "info": info}
        return s.reset_result

    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "sessions": len(store.sessions),
            "capacity": cfg.max_envs,
            "free": store.free(),
            "version": __version__,
            "session_ttl": cfg.session_ttl,
        }

    @app.get("/envs", dependencies=auth, tags=["service"], responses={401: errors[401]})
    def envs() -> dict[str, list[str]]:
        return {"envs": names()}

    @app.post(f"{API}/create", dependencies=auth, response_model=None, tags=["sessions"],
              responses={200: {"model": ResetResponse}, **{k: errors[k] for k in (401, 409, 413, 422, 503)}})
    def create(body: CreateRequest) -> _JSON:
        items = body.items
        check_batch(len(items))
        sids = [it.session_id or uuid.uuid4().hex for it in items]
        check_unique([it.session_id for it in items if it.session_id])
        existing, _ = store.lookup(sids)
        known = {s.sid: s for s in existing}
        results: list[dict[str, Any] | None] = [None] * len(items)
        for i, (sid, it) in enumerate(zip(sids, items)):
            s = known.get(sid)
            if s is None:
                continue
            with _Locked([s]):
                same = s.config == it.config and s.reset_key == _reset_key(it.seed, it.options)
                if not (same and s.episode == 0 and s.reset_result is not None):
                    raise _error(409, "session_exists", f"items[{i}].session_id: session {sid} already exists with another config, seed or state")
                results[i] = s.reset_result
        new = [i for i in range(len(items)) if results[i] is None]
        if not store.reserve(len(new)):
            raise HTTPException(
                503,
                detail={"error": "capacity", "message": f"no room for {len(new)} new env(s): {store.free()} of {cfg.max_envs} free; retry later"},
                headers={"Retry-After": str(cfg.retry_after)},
            )
        made: list[Session] = []
        try:
            for i in new:
                it = items[i]
                name, kwargs = split_config(it.config)
                try:
                    env = make(name, **kwargs)
                except (ValueError, TypeError) as exc:
                    raise invalid(("items", i, "config"), f"cannot build env {name!r}: {exc}") from exc
                s = Session(sid=sids[i], config=dict(it.config), env=env)
                made.append(s)
                results[i] = do_reset(s, it.seed, it.options, 0, ("items", i, "options"))
        except BaseException:
            close_envs(made)
            store.release(len(new))
            raise
        store.add(made)
        return _JSON({"results": results})

    @app.post(f"{API}/reset", dependencies=auth, response_model=None, tags=["sessions"],
              responses={200: {"model": ResetResponse}, **{k: errors[k] for k in (401, 404, 409, 413, 422)}})
    def reset(body: ResetRequest) -> _JSON:
        items = body.items
        check_batch(len(items))
        check_unique([it.session_id for it in items])
        sessions = lookup([it.session_id for it in items])
        with _Locked(sessions):
            conflicts = [
                f"items[{i}].episode: session {s.sid} is at episode {s.episode}; send {s.episode + 1} for a new reset"
                for i, (s, it) in enumerate(zip(sessions, items))
                if it.episode is not None and it.episode not in (s.episode, s.episode + 1)
            ]
            if conflicts:
                raise _error(409, "episode_conflict", "; ".join(conflicts[:5]), conflicts=conflicts)
            results = []
            for i, (s, it) in enumerate(zip(sessions, items)):
                if (
                    it.episode is not None
                    and it.episode == s.episode
                    and s.reset_key == _reset_key(it.seed, it.options)
                    and s.reset_result is not None
                    and s.index == 0
                ):
                    results.append(s.reset_result)  # a retried reset: nothing happens twice
                    continue
                episode = it.episode if it.episode is not None else s.episode + 1
                results.append(do_reset(s, it.seed, it.options, episode, ("items", i, "options")))
        return _JSON({"results": results})

    @app.post(f"{API}/step", dependencies=auth, response_model=None, tags=["sessions"],
              responses={200: {"model": StepResponse}, **{k: errors[k] for k in (401, 404, 409, 413, 422)}})
    def step(body: StepRequest) -> _JSON:
        items = body.items
        check_batch(len(items))
        for i, it in enumerate(items):
            if len(it.text) > cfg.max_text_chars:
                raise invalid(("items", i, "text"), f"text has {len(it.text)} characters; the limit is {cfg.max_text_chars}", "too_long")
        check_unique([it.session_id for it in items])
        sessions = lookup([it.session_id for it in items])
        with _Locked(sessions):
            conflicts = []
            for i, (s, it) in enumerate(zip(sessions, items)):
                where = f"items[{i}]"
                if it.episode is not None and it.episode != s.episode:
                    conflicts.append(f"{where}.episode: session {s.sid} is at episode {s.episode}, not {it.episode}")
                elif it.index == s.index and s.last_result is not None:
                    if s.last_text != _text_hash(it.text):
                        conflicts.append(f"{where}.index: step {it.index} of session {s.sid} was taken with a different text")
                elif it.index != s.index + 1:
                    conflicts.append(f"{where}.index: session {s.sid} expects step index {s.index + 1} (or {s.index} to repeat), got {it.index}")
                elif s.done:
                    conflicts.append(f"{where}: session {s.sid} finished its episode at step {s.index}; reset it")
            if conflicts:
                raise _error(409, "step_conflict", "; ".join(conflicts[:5]), conflicts=conflicts)
            results: list[dict[str, Any] | None] = [None] * len(items)
            stepped: list[tuple[int, Session, tuple[Any, ...]]] = []
            failure: HTTPException | None = None
            for k, (s, it) in enumerate(zip(sessions, items)):
                if it.index == s.index and s.last_result is not None:
                    results[k] = {**s.last_result, "replayed": True}
                    continue
                try:
                    res = s.env.step(it.text)
                except Exception as exc:
                    failure = _error(500, "env_error", f"session {s.sid} step {it.index}: {type(exc).__name__}: {exc}")
                    break
                s.index = it.index
                s.done = bool(res[2] or res[3])
                s.last_text = _text_hash(it.text)
                stepped.append((k, s, res))
            # PNG encoding (zlib, hashing) releases the GIL: encode the batch's frames on threads
            wires = encode_many([res for _, _, res in stepped])
            for (k, s, _), wire in zip(stepped, wires):
                s.last_result = {"session_id": s.sid, "index": s.index, "episode": s.episode, "replayed": False, **wire}
                results[k] = s.last_result
            if failure is not None:
                raise failure
        return _JSON({"results": results})

    @app.post(f"{API}/close", dependencies=auth, response_model=CloseResponse, tags=["sessions"],
              responses={k: errors[k] for k in (401, 413, 422)})
    def close(body: CloseRequest) -> dict[str, Any]:
        check_batch(len(body.session_ids))
        gone = store.pop(list(body.session_ids))
        for s in gone:
            with _Locked([s]):
                pass  # wait for an in-flight request on it
        close_envs(gone)
        closed = {s.sid for s in gone}
        return {"closed": [s for s in body.session_ids if s in closed], "unknown": [s for s in body.session_ids if s not in closed]}

    app.add_middleware(_BodyLimit, max_bytes=cfg.max_body_bytes)
    return app


# --------------------------------------------------------------------------- atlasva serve


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="atlasva serve",
        description="Serve atlasva environments over HTTP (batched sessions; clients: atlasva.serve.HttpEnvPool).",
    )
    d = ServeConfig()
    p.add_argument("--host", default=d.host, help="bind address (default: %(default)s, loopback only)")
    p.add_argument("--port", type=int, default=d.port, help="TCP port (default: %(default)s)")
    p.add_argument("--max-envs", type=int, default=d.max_envs, help="live sessions at most; more → 503 (default: %(default)s)")
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' (or set ATLASVA_SERVE_TOKEN)")
    p.add_argument("--session-ttl", type=float, default=d.session_ttl, help="close sessions idle this many seconds (default: %(default)s)")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / (1 << 20), help="request body limit in MiB (default: %(default)s)")
    p.add_argument("--max-text-chars", type=int, default=d.max_text_chars, help="step text limit (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="items per request at most (default: %(default)s)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it may register envs); repeatable")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    return p


def serve_main(argv: list[str]) -> int:
    """``atlasva serve --host 127.0.0.1 --port N --max-envs M [--token T] [--session-ttl S]``."""

    args = build_parser().parse_args(argv)
    token = args.token if args.token is not None else os.environ.get("ATLASVA_SERVE_TOKEN") or None
    try:
        cfg = ServeConfig(
            host=args.host,
            port=args.port,
            max_envs=args.max_envs,
            token=token,
            session_ttl=args.session_ttl,
            max_body_bytes=int(args.max_body_mb * (1 << 20)),
            max_text_chars=args.max_text_chars,
            max_batch=args.max_batch,
        )
        for module in args.imports:
            importlib.import_module(module)
    except (ValueError, ImportError) as exc:
        print(f"atlasva serve: {exc}", file=sys.stderr)
        return 2
    if not _is_loopback(cfg.host) and cfg.token is None:
        print(
            f"atlasva serve: WARNING: listening on {cfg.host} without a token: anyone who can reach this port "
            "can run envs here. Pass --token (or ATLASVA_SERVE_TOKEN).",
            file=sys.stderr,
        )
    import uvicorn

    try:
        uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level=args.log_level, access_log=False)
    except SystemExit as exc:  # uvicorn exits on bind errors
        return int(exc.code or 1) if not isinstance(exc.code, str) else 1
    return 0
