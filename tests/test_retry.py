"""The one retry/backoff helper (atlasva/retry.py) and its two users: the env-service client and the
OpenAI-compatible backend. Waits are counted through a fake sleep, never slept."""

from __future__ import annotations

import random

import httpx
import pytest

from atlasva import retry
from atlasva.retry import Backoff, RetriesExhausted, RetryableError, call_with_retries, retry_after_seconds


@pytest.fixture()
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(retry, "_sleep", waits.append)
    return waits


def _failing(calls: list[int], error: RetryableError, succeed_on: int | None = None):
    def fn() -> str:
        calls.append(1)
        if succeed_on is not None and len(calls) == succeed_on:
            return "ok"
        raise error

    return fn


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_never_sleeps_after_the_last_attempt(sleeps, retries) -> None:
    calls: list[int] = []
    with pytest.raises(RetriesExhausted, match=f"after {retries + 1} attempt") as err:
        call_with_retries(_failing(calls, RetryableError("refused")), Backoff(retries=retries, base=0.1))
    assert len(calls) == retries + 1 and len(sleeps) == retries
    assert err.value.attempts == retries + 1 and err.value.last.reason == "refused"


def test_schedule_doubles_up_to_the_cap_with_bounded_jitter(sleeps) -> None:
    b = Backoff(retries=6, base=0.1, cap=0.5, jitter=0.5)
    calls: list[int] = []
    assert call_with_retries(_failing(calls, RetryableError("x"), succeed_on=7), b, rng=random.Random(0)) == "ok"
    steps = [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]  # min(cap, base * 2^(k-1))
    assert len(sleeps) == 6
    for wait, step in zip(sleeps, steps):
        assert step * 0.5 <= wait <= step
    assert len({round(w / s, 6) for w, s in zip(sleeps, steps)}) > 1, "jitter varies the waits"
    no_jitter = Backoff(base=0.1, cap=10.0, jitter=0.0)
    assert [no_jitter.delay(k) for k in (1, 2, 3)] == [0.1, 0.2, 0.4]


def test_retry_after_wins_and_a_busy_server_is_waited_for_up_to_patience(sleeps, monkeypatch) -> None:
    calls: list[int] = []
    b = Backoff(retries=1, base=0.1, max_retry_after=5.0)
    call_with_retries(_failing(calls, RetryableError("429", retry_after=3.0), succeed_on=2), b)
    assert sleeps == [3.0]
    sleeps.clear()
    call_with_retries(_failing([], RetryableError("429", retry_after=60.0), succeed_on=2), b)
    assert sleeps == [5.0], "Retry-After is capped"
    # busy (not counted against retries): waits until patience runs out, then gives up without a last wait
    clock = [0.0]
    monkeypatch.setattr(retry.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(retry, "_sleep", lambda d: (sleeps.append(d), clock.__setitem__(0, clock[0] + d)))
    sleeps.clear()
    busy: list[int] = []
    with pytest.raises(RetriesExhausted, match="patience"):
        call_with_retries(_failing(busy, RetryableError("503", retry_after=1.0, counts=False)), Backoff(retries=0, patience=2.5))
    assert sleeps == [1.0, 1.0, 0.5] and len(busy) == 4
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=2.0)


def test_openai_backend_uses_the_helper_and_stops_without_a_final_wait(sleeps) -> None:
    from atlasva.policy.backends import OpenAIBackend, OpenAIError
    from atlasva.policy.config import OpenAIConfig

    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(503, json={"error": "busy"})

    client = httpx.Client(base_url="http://llm.test/v1", transport=httpx.MockTransport(handler))
    backend = OpenAIBackend(OpenAIConfig(base_url="http://llm.test/v1", model="m", api_key_env="", max_retries=2,
                                         backoff_s=0.5), client=client)
    with pytest.raises(OpenAIError, match="after 3 attempts"):
        backend.generate([[{"role": "user", "content": "hi"}]])
    assert len(requests) == 3 and len(sleeps) == 2 and backend.retries == 2


def test_env_client_uses_the_helper_and_stops_without_a_final_wait(sleeps) -> None:
    from atlasva.serve.client import HttpEnvPool, _Down

    pool = HttpEnvPool("http://127.0.0.1:9", retries=2, backoff=0.5)  # port 9: nothing listens
    try:
        with pytest.raises(_Down, match="unreachable"):
            pool._post(0, "/v1/sessions/step", {"items": []})
        assert pool.stats["requests"] == 3 and pool.stats["retries"] == 2 and len(sleeps) == 2
        assert all(0.25 <= s <= 1.0 for s in sleeps)
    finally:
        pool.close()
