"""The env service: a FastAPI server holding env sessions, and the HTTP EnvPool client.

Server: ``atlasva serve --port 8001 --max-envs 64`` (:func:`serve_main`, :func:`create_app`).
Client: :class:`HttpEnvPool` (``base_urls=[...]``) implements :class:`atlasva.envs.pool.EnvPool`.
Needs the ``serve`` extra (fastapi, uvicorn, httpx, pydantic).
"""

from __future__ import annotations

from typing import Any

__all__ = ["HttpEnvPool", "InvalidRequestError", "ServeConfig", "ServeError", "create_app", "serve_main"]


def __getattr__(name: str) -> Any:  # lazy: importing atlasva.serve must not need the extra
    if name in ("HttpEnvPool", "InvalidRequestError", "ServeError"):
        from atlasva.serve import client

        return getattr(client, name)
    if name in ("ServeConfig", "create_app", "serve_main"):
        from atlasva.serve import server

        return getattr(server, name)
    raise AttributeError(f"module 'atlasva.serve' has no attribute {name!r}")
