"""RayEnvPool: env slots in Ray actors (many machines; the ``ray`` extra).

Slots are spread round-robin over ``num_workers`` actors, each holding an ordinary
InProcessEnvPool (:class:`atlasva.envs.pool.ShardWorker`), so observations and ``info`` dicts are
the in-process pool's exactly. Envs registered in the driver are registered in the actors too
(their classes must be importable there: install the package on the cluster, or pass a Ray
``runtime_env``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from atlasva.envs.pool import ShardedEnvPool, ShardWorker


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("RayEnvPool needs Ray: pip install 'atlasva[ray]'") from exc
    return ray


class RayEnvPool(ShardedEnvPool):
    """Envs in ``num_workers`` Ray actors.

    If Ray is not initialised yet, it is started locally with ``init_kwargs`` (e.g.
    ``{"address": "auto"}`` to join a cluster). ``actor_options`` go to ``.options()`` of each actor
    (default ``{"num_cpus": 1}``).
    """

    def __init__(
        self,
        num_workers: int = 2,
        *,
        init_kwargs: Mapping[str, Any] | None = None,
        actor_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(num_workers)
        ray = _ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if not init_kwargs or "address" not in init_kwargs:
                kwargs["num_cpus"] = max(os.cpu_count() or 1, self.num_workers)
            kwargs.update(init_kwargs or {})
            ray.init(**kwargs)
        options = {"num_cpus": 1, **(actor_options or {})}
        actor_cls = ray.remote(ShardWorker)
        self._actors = [actor_cls.options(**options).remote() for _ in range(self.num_workers)]
        self._closed = False

    def _call(self, method: str, per_worker: list[tuple[Any, ...] | None]) -> list[Any]:
        if self._closed:
            raise RuntimeError("this RayEnvPool is closed")
        ray = _ray()
        refs = {w: getattr(self._actors[w], method).remote(*args) for w, args in enumerate(per_worker) if args is not None}
        values = ray.get(list(refs.values()))
        out: list[Any] = [None] * len(per_worker)
        for w, value in zip(refs, values):
            out[w] = value
        return out

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = _ray()
        try:
            ray.get([a.close.remote() for a in self._actors], timeout=30)
        except Exception:  # best effort: the actors are killed next anyway
            pass
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
