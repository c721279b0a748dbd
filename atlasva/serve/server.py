"""The env service: a FastAPI app holding env sessions, and ``atlasva serve`` (:func:`serve_main`).

Endpoints (JSON; images as PNG, see :mod:`atlasva.serve.codec`):

- ``GET /health`` — status, live sessions, capacity, limits, version (no token needed: for probes);
- ``GET /envs`` — registered env names and each env's resource bounds (``AtlasEnv.limits``);
- ``POST /v1/sessions/create`` — create and reset many sessions (``{"items": [{"config", "seed",
  "options", "session_id"?}]}``). A client-chosen ``session_id`` makes a retried create return
  the first result instead of creating a second env. Over capacity → 503 + ``Retry-After``;
- ``POST /v1/sessions/reset`` — reset many sessions (``episode`` numbers make retries idempotent);
- ``POST /v1/sessions/step`` — step many sessions (``{"session_id", "index", "text"}``; ``index`` is
  1 + the number of steps the session took since its reset). A repeated index with the same text
  returns the recorded result without stepping again;
- ``POST /v1/sessions/close`` — close many sessions (unknown ids are reported, not an error).

Errors are JSON ``{"error": CODE, "message": TEXT, ...}``; invalid bodies give 422 naming the field
(``items[3].text``), never a 500. Limits: each env's own bounds (422 ``limit_exceeded`` naming the
config key and the limit), items per request, characters per text, live sessions (503 ``capacity``),
image pixels per response (422 ``frame_budget``), body bytes (413) and requests processed at once
(503 ``busy`` after waiting ``queue_wait`` seconds). Sessions idle longer than the TTL are closed by a
reaper thread. A bearer token (if set) is compared in constant time. The server binds to loopback unless
told otherwise. The protocol itself lives in :mod:`atlasva.serve.sessions`; this module is transport.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import importlib
import ipaddress
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from atlasva import __version__, formats
from atlasva.envs.registry import env_class, names
from atlasva.serve.sessions import Limits, ServiceError, SessionService, check_config

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
    max_frame_pixels: int = 32 << 20  # image pixels in one response
    max_inflight: int = 8  # session requests processed at once; more wait
    queue_wait: float = 30.0  # seconds a request waits for a slot before a 503 "busy"
    retry_after: int = 1  # seconds, sent with 503 when the server is full or busy
    image_cache_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        for name in ("max_envs", "max_body_bytes", "max_text_chars", "max_batch", "max_frame_pixels", "max_inflight",
                     "retry_after"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.session_ttl > 0:
            raise ValueError(f"session_ttl must be > 0 seconds, got {self.session_ttl}")
        if not self.queue_wait >= 0:
            raise ValueError(f"queue_wait must be >= 0 seconds, got {self.queue_wait}")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty (leave it unset to disable authentication)")

    def limits(self) -> Limits:
        return Limits(max_envs=self.max_envs, max_batch=self.max_batch, max_text_chars=self.max_text_chars,
                      max_frame_pixels=self.max_frame_pixels)


# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


SessionId = Annotated[str, Field(pattern=SESSION_ID_PATTERN, description="8-64 characters of [A-Za-z0-9_-]")]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED, description="level seed; null: the env picks one")]
_CONFIG_EXAMPLES = [{"env": "sokoban"}, {"env": "frozenlake", "size": 4, "obs_mode": "vision"},
                    {"env": "frozenlake", "size": 128, "tile_size": 64}, {"env": "sokoban", "dim_room": [400, 400]}]


class CreateItem(_Body):
    config: dict[str, JsonValue] = Field(description='env config, e.g. {"env": "sokoban", "obs_mode": "vision"}',
                                         examples=_CONFIG_EXAMPLES)
    seed: Seed = None
    options: dict[str, JsonValue] | None = Field(None, description='reset options, e.g. {"level": [...]}')
    session_id: SessionId | None = Field(None, description="client-chosen id: makes a retried create idempotent")

    @field_validator("config")
    @classmethod
    def _valid_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_config(value)


class CreateRequest(_Body):
    items: list[CreateItem] = Field(min_length=1)


class ResetItem(_Body):
    session_id: SessionId
    seed: Seed = None
    options: dict[str, JsonValue] | None = None
    episode: int | None = Field(
        None, ge=0, description="the session's next episode number; repeating the current one returns its reset "
        "(0: the reset its create did)"
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
    limits: dict[str, int] = Field(description="server limits: max_envs, max_batch, max_text_chars, max_frame_pixels, "
                                               "max_body_bytes, max_inflight")


class EnvsResponse(BaseModel):
    envs: list[str]
    limits: dict[str, dict[str, int]] = Field(description="each env's resource bounds by config key")


# --------------------------------------------------------------------------- errors


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


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


class _Guard:
    """ASGI middleware for the session routes: at most ``max_inflight`` requests at once (others wait up
    to ``queue_wait`` s, then 503 ``busy``), then the body read up to ``max_bytes`` (413 beyond).
    The slot is taken before the body is read, so waiting requests hold no bodies in memory."""

    def __init__(self, app: Any, max_bytes: int, max_inflight: int, queue_wait: float, retry_after: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_inflight, self.queue_wait, self.retry_after = max_inflight, queue_wait, retry_after
        self.inflight = 0  # only touched on the event loop thread

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.queue_wait
        while self.inflight >= self.max_inflight:
            if time.monotonic() >= deadline:
                await self._reject(send, 503, "busy", f"{self.inflight} requests in progress (limit {self.max_inflight}, "
                                   f"--max-inflight) for {self.queue_wait:g}s; retry later",
                                   [(b"retry-after", str(self.retry_after).encode())])
                return
            await asyncio.sleep(0.005)
        self.inflight += 1
        try:
            await self._limited(scope, receive, send)
        finally:
            self.inflight -= 1

    async def _limited(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
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
    async def _reject(send: Callable[..., Any], status: int, code: str, message: str,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        data = json.dumps({"error": code, "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   (b"connection", b"close"), *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except ValueError:  # a non-finite float in an info dict: Python clients still read it
            text = json.dumps(content, ensure_ascii=False, allow_nan=True, separators=(",", ":"))
        return text.encode("utf-8")


# --------------------------------------------------------------------------- routes

_BEARER = HTTPBearer(auto_error=False, description="the server's --token, if it was started with one")
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


def authorize(request: Request, cred: BearerCredentials) -> None:
    token = request.app.state.config.token
    if token is None:
        return
    if cred is None or not cred.credentials:
        raise HTTPException(
            401,
            detail={"error": "unauthorized", "message": "missing bearer token: send 'Authorization: Bearer <token>'"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(cred.credentials.encode("utf-8"), token.encode("utf-8")):
        raise HTTPException(
            401,
            detail={"error": "unauthorized", "message": "invalid bearer token"},
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def _service(request: Request) -> SessionService:
    return request.app.state.service


Service = Annotated[SessionService, Depends(_service)]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "a body that cannot be read as JSON (e.g. not UTF-8)"},
    401: {"model": ErrorResponse, "description": "missing or invalid bearer token"},
    404: {"model": ErrorResponse, "description": "unknown session ids (listed in `session_ids`)"},
    409: {"model": ErrorResponse, "description": "step index / episode conflicts (listed in `conflicts`)"},
    413: {"model": ErrorResponse, "description": "body too large"},
    422: {"model": ErrorResponse, "description": "invalid body (`errors[].field` names the field), an env bound "
          "(`limit_exceeded`: `key`, `limit`), too many items or image pixels for one response (`frame_budget`)"},
    503: {"model": ErrorResponse, "description": "no free env capacity, or too many requests in progress; retry after "
          "`Retry-After` seconds"},
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {k: ERRORS[k] for k in codes}


health_router = APIRouter(tags=["service"])
router = APIRouter(dependencies=[Depends(authorize)])


@health_router.get("/health", response_model=Health)
def health(request: Request) -> dict[str, Any]:
    cfg: ServeConfig = request.app.state.config
    service: SessionService = request.app.state.service
    return {
        "status": "ok",
        "sessions": len(service.store.sessions),
        "capacity": cfg.max_envs,
        "free": service.store.free(),
        "version": __version__,
        "session_ttl": cfg.session_ttl,
        "limits": {"max_envs": cfg.max_envs, "max_batch": cfg.max_batch, "max_text_chars": cfg.max_text_chars,
                   "max_frame_pixels": cfg.max_frame_pixels, "max_body_bytes": cfg.max_body_bytes,
                   "max_inflight": cfg.max_inflight},
    }


@router.get("/envs", tags=["service"], response_model=EnvsResponse, responses=_errors(401, 503))
def envs() -> dict[str, Any]:
    return {"envs": names(), "limits": {n: dict(env_class(n).limits) for n in names()}}


@router.post(f"{API}/create", tags=["sessions"], response_model=None,
             responses={200: {"model": ResetResponse}, **_errors(400, 401, 409, 413, 422, 503)})
def create(body: CreateRequest, service: Service) -> _JSON:
    items = [it.model_dump() for it in body.items]
    return _JSON({"results": service.create(items)})


@router.post(f"{API}/reset", tags=["sessions"], response_model=None,
             responses={200: {"model": ResetResponse}, **_errors(400, 401, 404, 409, 413, 422, 503)})
def reset(body: ResetRequest, service: Service, request: Request) -> _JSON:
    items = [it.model_dump() for it in body.items]
    return _JSON({"results": service.reset(items, request.app.state.config.session_ttl)})


@router.post(f"{API}/step", tags=["sessions"], response_model=None,
             responses={200: {"model": StepResponse}, **_errors(400, 401, 404, 409, 413, 422, 503)})
def step(body: StepRequest, service: Service, request: Request) -> _JSON:
    items = [it.model_dump() for it in body.items]
    return _JSON({"results": service.step(items, request.app.state.config.session_ttl)})


@router.post(f"{API}/close", tags=["sessions"], response_model=CloseResponse, responses=_errors(400, 401, 413, 422, 503))
def close(body: CloseRequest, service: Service) -> dict[str, Any]:
    return service.close(list(body.session_ids))


def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app of the env service (sessions live in this process, in ``app.state.service``)."""
    cfg = config or ServeConfig()
    service = SessionService(cfg.limits(), cfg.image_cache_bytes, threads=max(1, min(4, os.cpu_count() or 1)))
    stop = threading.Event()

    def reaper() -> None:
        period = max(0.05, min(cfg.session_ttl / 4.0, 5.0))
        while not stop.wait(period):
            service.close_envs(service.store.reap(cfg.session_ttl))

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        thread = threading.Thread(target=reaper, name="atlasva-session-reaper", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            service.shutdown()

    app = FastAPI(title="atlasva env service", version=__version__, description=__doc__, lifespan=lifespan,
                  default_response_class=_JSON)
    app.state.config = cfg
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def _on_refused(request: Request, exc: ServiceError) -> JSONResponse:
        headers = exc.headers or ({"Retry-After": str(cfg.retry_after)} if exc.status == 503 else None)
        return _JSON(status_code=exc.status, content=exc.body(), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's own 400/404/405 are Starlette's
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict):
            content = exc.detail
        else:
            phrase = HTTPStatus(exc.status_code).phrase if exc.status_code in HTTPStatus._value2member_map_ else "error"
            content = {"error": phrase.lower().replace(" ", "_"), "message": str(exc.detail)}
        return JSONResponse(status_code=exc.status_code, content=content, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=500, content={"error": "internal", "message": f"{type(exc).__name__}: {exc}"})

    app.include_router(health_router)
    app.include_router(router)
    app.add_middleware(_Guard, max_bytes=cfg.max_body_bytes, max_inflight=cfg.max_inflight, queue_wait=cfg.queue_wait,
                       retry_after=cfg.retry_after)
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
    p.add_argument("--max-frame-pixels", type=int, default=d.max_frame_pixels,
                   help="image pixels in one response at most; more → 422 frame_budget (default: %(default)s)")
    p.add_argument("--max-inflight", type=int, default=d.max_inflight,
                   help="session requests processed at once; others wait (default: %(default)s)")
    p.add_argument("--queue-wait", type=float, default=d.queue_wait,
                   help="seconds a request waits for a slot before 503 busy (default: %(default)s)")
    p.add_argument("--image-cache-mb", type=float, default=d.image_cache_bytes / (1 << 20),
                   help="PNG encodings of recent frames kept, MiB (default: %(default)s)")
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
            max_frame_pixels=args.max_frame_pixels,
            max_inflight=args.max_inflight,
            queue_wait=args.queue_wait,
            image_cache_bytes=int(args.image_cache_mb * (1 << 20)),
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
