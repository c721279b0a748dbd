"""EnvPool: the one interface the agent loop talks to (DESIGN §3), and the in-process pool.

``reset(seeds, configs) -> list[(obs, info)]`` where each config is ``{"env": NAME, **env_kwargs}``;
``step(texts) -> list[(obs, reward, terminated, truncated, info) | None]`` where ``None`` in the
input marks a finished slot and yields ``None`` (no auto-reset); ``close()``.

The process pool (here) and the Ray pool (``ray_pool.py``) and HTTP pool (``atlasva.serve.client``)
return identical dicts for the same seeds and texts, because every ``info`` value is JSON-native.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from atlasva.envs.base import AtlasEnv
from atlasva.envs.registry import make

StepResult = tuple[dict[str, Any], float, bool, bool, dict[str, Any]]


def split_config(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if not isinstance(config, Mapping) or "env" not in config:
        raise ValueError(f"an env config must be a mapping with an 'env' name, e.g. {{'env': 'sokoban'}}; got {config!r}")
    kwargs = {k: v for k, v in config.items() if k != "env"}
    return str(config["env"]), kwargs


class EnvPool(ABC):
    """A batch of env slots stepped together."""

    @abstractmethod
    def reset(
        self,
        seeds: Sequence[int | None],
        configs: Sequence[Mapping[str, Any]],
        options: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]: ...

    @abstractmethod
    def step(self, texts: Sequence[str | None]) -> list[StepResult | None]: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check_reset_args(seeds, configs, options) -> list:
        if len(seeds) != len(configs):
            raise ValueError(f"reset got {len(seeds)} seeds but {len(configs)} configs; give one config per seed")
        if options is not None and len(options) != len(seeds):
            raise ValueError(f"reset got {len(options)} options for {len(seeds)} seeds")
        return list(options) if options is not None else [None] * len(seeds)


class InProcessEnvPool(EnvPool):
    """Envs in this process. Slots keep their env object across resets when the config is unchanged."""

    def __init__(self) -> None:
        self._envs: list[AtlasEnv] = []
        self._configs: list[dict[str, Any]] = []
        self._done: list[bool] = []

    def reset(self, seeds, configs, options=None):
        opts = self._check_reset_args(seeds, configs, options)
        envs, cfgs = [], []
        for i, cfg in enumerate(configs):
            cfg = dict(cfg)
            if i < len(self._envs) and self._configs[i] == cfg:
                env = self._envs[i]
            else:
                if i < len(self._envs):
                    self._envs[i].close()
                name, kwargs = split_config(cfg)
                env = make(name, **kwargs)
            envs.append(env)
            cfgs.append(cfg)
        for env in self._envs[len(envs):]:
            env.close()
        self._envs, self._configs = envs, cfgs
        self._done = [False] * len(envs)
        return [env.reset(seed=s, options=o) for env, s, o in zip(envs, seeds, opts)]

    def step(self, texts):
        if len(texts) != len(self._envs):
            raise ValueError(f"step got {len(texts)} texts for {len(self._envs)} slots (use None for finished slots)")
        out: list[StepResult | None] = []
        for i, (env, text) in enumerate(zip(self._envs, texts)):
            if text is None:
                out.append(None)
                continue
            if self._done[i]:
                raise ValueError(f"slot {i} has finished its episode; pass None for it or reset the pool")
            res = env.step(text)
            self._done[i] = bool(res[2] or res[3])
            out.append(res)
        return out

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs, self._configs, self._done = [], [], []

    @property
    def envs(self) -> list[AtlasEnv]:
        """The live env objects (in-process only: solvers and renders for evaluation and SFT data)."""
        return list(self._envs)


# --------------------------------------------------------------------------- sharded pools
#
# The process pool (below) and the Ray pool (``ray_pool.py``) split the slots over workers:
# global slot ``i`` lives in worker ``i % W`` at local index ``i // W``. Each worker holds an
# ordinary InProcessEnvPool, so slot semantics (env reuse across resets, finished slots, error
# messages) are exactly the in-process pool's.


def env_entries(configs: Sequence[Mapping[str, Any]]) -> dict[str, type[AtlasEnv]]:
    """The env classes the configs name (so workers can register envs the parent registered)."""
    from atlasva.envs.registry import env_class

    out: dict[str, type[AtlasEnv]] = {}
    for cfg in configs:
        name, _ = split_config(cfg)
        if name not in out:
            out[name] = env_class(name)  # unknown names fail here, in the caller's process
    return out


class ShardWorker:
    """The slots of one worker process or actor: an InProcessEnvPool plus env registration."""

    def __init__(self) -> None:
        self.pool = InProcessEnvPool()

    def reset(
        self,
        entries: Mapping[str, type[AtlasEnv]],
        seeds: Sequence[int | None],
        configs: Sequence[Mapping[str, Any]],
        options: Sequence[Mapping[str, Any] | None],
    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        from atlasva.envs.registry import env_class, register

        for name, cls in entries.items():
            try:
                known = env_class(name)
            except ValueError:
                known = None
            if known is not cls:
                register(name, cls, overwrite=True)
        return self.pool.reset(seeds, configs, options)

    def step(self, texts: Sequence[str | None]) -> list[StepResult | None]:
        return self.pool.step(texts)

    def close(self) -> None:
        self.pool.close()


class ShardedEnvPool(EnvPool):
    """Slots spread round-robin over ``num_workers`` workers; subclasses say how a worker is called."""

    def __init__(self, num_workers: int) -> None:
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = int(num_workers)
        self._n = 0
        self._done: list[bool] = []

    @abstractmethod
    def _call(self, method: str, per_worker: list[tuple[Any, ...] | None]) -> list[Any]:
        """Call ``method(*args)`` on every worker whose args are not None (in parallel); results in order."""

    def _shard(self, items: Sequence[Any]) -> list[list[Any]]:
        return [list(items[w :: self.num_workers]) for w in range(self.num_workers)]

    def _merge(self, shards: list[list[Any]], n: int) -> list[Any]:
        out: list[Any] = [None] * n
        for w, part in enumerate(shards):
            out[w :: self.num_workers] = part
        return out

    def reset(self, seeds, configs, options=None):
        opts = self._check_reset_args(seeds, configs, options)
        configs = [dict(c) for c in configs]
        entries = env_entries(configs)
        for cfg in configs:
            split_config(cfg)
        s_seeds, s_cfgs, s_opts = self._shard(list(seeds)), self._shard(configs), self._shard(opts)
        args: list[tuple[Any, ...] | None] = [
            (entries, s_seeds[w], s_cfgs[w], s_opts[w]) if (s_seeds[w] or w < self._active_workers()) else None
            for w in range(self.num_workers)
        ]
        res = self._call("reset", args)
        self._n = len(seeds)
        self._done = [False] * self._n
        return self._merge([r if r is not None else [] for r in res], self._n)

    def _active_workers(self) -> int:
        return min(self._n, self.num_workers)

    def step(self, texts):
        if len(texts) != self._n:
            raise ValueError(f"step got {len(texts)} texts for {self._n} slots (use None for finished slots)")
        for i, text in enumerate(texts):
            if text is not None and self._done[i]:
                raise ValueError(f"slot {i} has finished its episode; pass None for it or reset the pool")
        shards = self._shard(list(texts))
        args: list[tuple[Any, ...] | None] = [
            (shards[w],) if any(t is not None for t in shards[w]) else None for w in range(self.num_workers)
        ]
        res = self._call("step", args)
        parts = [r if r is not None else [None] * len(shards[w]) for w, r in enumerate(res)]
        out = self._merge(parts, self._n)
        for i, r in enumerate(out):
            if r is not None:
                self._done[i] = bool(r[2] or r[3])
        return out


class RemoteWorkerError(RuntimeError):
    """A worker raised an exception that could not be sent back as itself."""


def _process_worker(conn: Any) -> None:
    import traceback

    worker = ShardWorker()
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if method == "stop":
            worker.close()
            conn.send(("ok", None))
            break
        try:
            result = getattr(worker, method)(*args)
            conn.send(("ok", result))
        except BaseException as exc:  # sent back to the parent, which re-raises it
            tb = traceback.format_exc()
            try:
                conn.send(("err", (exc, tb)))
            except Exception:
                conn.send(("err", (RemoteWorkerError(f"{type(exc).__name__}: {exc}"), tb)))
    conn.close()


def _stop_processes(procs: list[Any], conns: list[Any]) -> None:
    for conn in conns:
        try:
            conn.send(("stop", ()))
        except Exception:
            pass
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
    for conn in conns:
        try:
            conn.close()
        except Exception:
            pass


class ProcessEnvPool(ShardedEnvPool):
    """Envs in ``num_workers`` local worker processes (for slow envs; one machine).

    Observations and ``info`` dicts come back pickled, so they equal the in-process pool's exactly.
    Envs registered in this process (``atlasva.envs.register``) are registered in the workers too,
    provided their classes are importable (module-level classes). ``start_method`` is a
    multiprocessing start method; ``spawn`` (default) is safe with threads in the parent (a
    script that builds the pool needs the usual ``if __name__ == "__main__":`` guard).
    A worker that dies is reported (RuntimeError naming it); build a new pool then.
    """

    def __init__(self, num_workers: int = 2, *, start_method: str = "spawn") -> None:
        import multiprocessing as mp
        import weakref

        super().__init__(num_workers)
        ctx = mp.get_context(start_method)
        self._conns: list[Any] = []
        self._procs: list[Any] = []
        for w in range(self.num_workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_worker, args=(child,), name=f"atlasva-env-worker-{w}", daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._finalizer = weakref.finalize(self, _stop_processes, self._procs, self._conns)

    def _call(self, method: str, per_worker: list[tuple[Any, ...] | None]) -> list[Any]:
        if not self._finalizer.alive:
            raise RuntimeError("this ProcessEnvPool is closed")
        sent = []
        for w, args in enumerate(per_worker):
            if args is None:
                continue
            try:
                self._conns[w].send((method, args))
            except (BrokenPipeError, OSError) as exc:
                raise RuntimeError(self._dead_message(w)) from exc
            sent.append(w)
        out: list[Any] = [None] * len(per_worker)
        error: BaseException | None = None
        for w in sent:
            try:
                status, payload = self._conns[w].recv()
            except (EOFError, OSError) as exc:
                error = error or RuntimeError(self._dead_message(w))
                error.__cause__ = exc
                continue
            if status == "ok":
                out[w] = payload
            elif error is None:
                exc, tb = payload
                exc.__cause__ = RemoteWorkerError(f"in env worker process {w}:\n{tb}")
                error = exc
        if error is not None:
            raise error
        return out

    def _dead_message(self, w: int) -> str:
        proc = self._procs[w]
        proc.join(timeout=0.1)
        return f"env worker process {w} (pid {proc.pid}) died (exit code {proc.exitcode}); create a new pool"

    def close(self) -> None:
        self._finalizer()
