"""Simulator work spread over processes, results in job order (so output never depends on the count)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any


def ordered_map(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int,
                initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()) -> Iterator[Any]:
    """``fn(job)`` for every job, yielded in job order: in this process for one worker, else from
    ``workers`` spawned processes (spawn: a forked child would share the parent's GL and MuJoCo state).
    ``initializer(*initargs)`` runs once per process first (e.g. to load a policy)."""
    if workers < 1:
        raise ValueError(f"the number of workers must be ≥ 1, got {workers}")
    if workers == 1 or len(jobs) <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, jobs)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer, initargs) as pool:
        yield from pool.imap(fn, jobs)
