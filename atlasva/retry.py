"""Bounded retries with exponential backoff and jitter — the one helper every network client here uses
(the env-service client :mod:`atlasva.serve.client` and the OpenAI-compatible generation backend).

An attempt that may succeed when tried again raises :class:`RetryableError`; anything else propagates
at once. The wait before retry ``k`` (k = 1 for the first retry) is

    delay_k = min(cap, base · 2^(k-1)) · (1 − jitter · u),   u ~ U[0, 1)

("equal jitter" at the default 0.5: many clients failing together do not retry in lockstep, and no
wait is shorter than half its step). A server's ``Retry-After`` wins over the schedule, capped at
``max_retry_after``. Two budgets: failures (``counts=True``: refused connections, timeouts, 5xx) get
``retries`` retries; a server that says it is busy (``counts=False``: 503 + Retry-After) is waited for
up to ``patience`` seconds. When a budget runs out :class:`RetriesExhausted` is raised at once: the
helper never sleeps after the last attempt. Check: with ``retries=2`` and a call that always fails, the
call runs 3 times and sleeps exactly twice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_sleep = time.sleep  # module-level so tests can count the waits


def retry_after_seconds(header: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (None when absent or given as an HTTP date)."""
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None


class RetryableError(Exception):
    """Raised by an attempt that may succeed later. ``retry_after``: seconds the server asked for;
    ``counts=False``: the server is busy rather than failing (bounded by ``patience``, not ``retries``)."""

    def __init__(self, reason: str, *, retry_after: float | None = None, counts: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.retry_after, self.counts = reason, retry_after, counts


class RetriesExhausted(RuntimeError):
    """The budget ran out; ``last`` is the final :class:`RetryableError`, ``attempts`` how many calls ran."""

    def __init__(self, attempts: int, last: RetryableError, waited: float) -> None:
        kind = "retries" if last.counts else f"{waited:.1f}s of patience"
        super().__init__(f"gave up after {attempts} attempt(s) ({kind} spent): {last.reason}")
        self.attempts, self.last, self.waited = attempts, last, waited


@dataclass(frozen=True)
class Backoff:
    """How long and how often to retry (see the module docstring for the schedule)."""

    retries: int = 3
    base: float = 0.1  # seconds before the first retry
    cap: float = 2.0  # longest scheduled wait
    jitter: float = 0.5  # share of each wait drawn at random
    patience: float = 0.0  # seconds to keep waiting on a busy server (non-counting failures)
    max_retry_after: float = 30.0  # longest wait a server's Retry-After may ask for

    def __post_init__(self) -> None:
        if int(self.retries) < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.base < 0 or self.cap < 0 or self.patience < 0 or self.max_retry_after < 0:
            raise ValueError("base, cap, patience and max_retry_after must be >= 0 seconds")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The scheduled wait before retry ``attempt`` (1-based)."""
        step = min(self.cap, self.base * 2.0 ** max(0, attempt - 1))
        u = (rng or random).random()
        return step * (1.0 - self.jitter * u)


def call_with_retries(
    fn: Callable[[], T],
    backoff: Backoff,
    *,
    rng: random.Random | None = None,
    on_retry: Callable[[RetryableError, float], None] | None = None,
) -> T:
    """``fn()``, retried on :class:`RetryableError` within ``backoff``'s budgets.

    ``on_retry(error, delay)`` runs before each wait (logging, counters). Raises
    :class:`RetriesExhausted` (from the last error) when a budget is spent — without a final wait.
    """
    failures = 0
    calls = 0
    busy_since: float | None = None
    while True:
        calls += 1
        try:
            return fn()
        except RetryableError as exc:
            now = time.monotonic()
            if exc.counts:
                failures += 1
                if failures > backoff.retries:
                    raise RetriesExhausted(calls, exc, 0.0) from exc
                delay = backoff.delay(failures, rng)
                if exc.retry_after is not None:
                    delay = min(max(0.0, exc.retry_after), backoff.max_retry_after)
            else:
                busy_since = now if busy_since is None else busy_since
                left = busy_since + backoff.patience - now
                if left <= 0:
                    raise RetriesExhausted(calls, exc, now - busy_since) from exc
                wanted = exc.retry_after if exc.retry_after is not None else backoff.delay(1, rng)
                delay = min(max(0.01, wanted), backoff.max_retry_after, left)
            if on_retry is not None:
                on_retry(exc, delay)
            _sleep(delay)
