"""Fault injection between HttpEnvPool and a real server: kills mid-batch, dropped and slow responses,
corrupted frames. Every run must equal an in-process run of the same texts (``info["turn"]`` counts the
steps an env took, so a step applied twice can never pass unseen)."""

from __future__ import annotations

import pytest
from serve_support import TINY, FaultProxy, ServerProcess, assert_same, health, run_episodes, scripted_texts

from atlasva.envs.pool import InProcessEnvPool
from atlasva.serve.client import HttpEnvPool
from atlasva.serve.codec import FrameError

SEEDS = [31, 32, 33, 34]
CONFIGS = [{**TINY, "size": 7, "max_turns": 20}] * 4
TEXTS = scripted_texts(4, 8, seed=17)


@pytest.fixture(scope="module")
def reference() -> list:
    with InProcessEnvPool() as pool:
        return run_episodes(pool, SEEDS, CONFIGS, TEXTS)


@pytest.fixture(scope="module")
def server():  # shared: the kill tests restart it on the same port
    srv = ServerProcess("--max-envs", "16").start()
    yield srv
    srv.stop()


def _pool(url: str, **kw) -> HttpEnvPool:
    return HttpEnvPool(url, **{"backoff": 0.02, "max_backoff": 0.2, "retries": 3, "failover_wait": 30, **kw})


@pytest.mark.parametrize("kind", ["kill_before", "kill_after"])
def test_sigkill_mid_batch_fails_over_by_replay(reference, server, kind) -> None:
    """SIGKILL while a step batch is in flight: before the server read it, or after it stepped every
    env but before the answer left. The client rebuilds the sessions on the restarted server by replay."""

    def crash() -> None:
        server.kill()
        server.start(wait=False)

    proxy = FaultProxy(server.port, on_kill=crash)
    try:
        proxy.add("/v1/sessions/step", "pass", times=2).add("/v1/sessions/step", kind)  # the third step batch
        with _pool(proxy.url) as pool:
            got = run_episodes(pool, SEEDS, CONFIGS, TEXTS)
            assert proxy.applied[kind] == 1
            # every live session was rebuilt by replaying the two steps it had taken
            taken = sum(r is not None for batch in reference[1:3] for r in batch)
            assert pool.stats["rebuilt"] == 4 and pool.stats["replayed_steps"] == taken
        assert_same(reference, got)
        assert health(server.url)["sessions"] == 0, "the replayed sessions were closed with the pool"
    finally:
        proxy.close()


def test_dropped_and_slow_responses_never_apply_a_step_twice(reference, server) -> None:
    proxy = FaultProxy(server.port)
    proxy.seconds = 1.0
    try:
        proxy.add("/v1/sessions/create", "drop")  # retried create: same session ids, no second env
        proxy.add("/v1/sessions/step", "drop", times=2)  # stepped on the server, the answer cut in half
        proxy.add("/v1/sessions/step", "delay")  # answered after the client's timeout
        with _pool(proxy.url, timeout=0.4) as pool:
            got = run_episodes(pool, SEEDS, CONFIGS, TEXTS)
            assert proxy.applied == {"drop": 3, "delay": 1}
            assert pool.stats["retries"] == 4 and pool.stats["rebuilt"] == 0
            assert health(server.url)["sessions"] == 4, "the dropped create made no extra sessions"
        assert_same(reference, got)
    finally:
        proxy.close()


def test_corrupted_frames_are_detected_and_fetched_again(reference, server) -> None:
    proxy = FaultProxy(server.port)
    try:
        proxy.add("/v1/sessions/create", "corrupt")  # one frame of the first reset
        proxy.add("/v1/sessions/step", "pass", times=3).add("/v1/sessions/step", "corrupt")  # one of the 4th step
        with _pool(proxy.url) as pool:
            got = run_episodes(pool, SEEDS, CONFIGS, TEXTS)
            assert proxy.applied["corrupt"] == 2 and pool.stats["refetched"] == 2
        assert_same(reference, got)
        # a frame damaged on every try (e.g. corrupt in the server's memory) is a clear error
        with _pool(proxy.url) as pool:
            pool.reset(SEEDS[:1], CONFIGS[:1])
            proxy.add("/v1/sessions/step", "corrupt", times=2)
            with pytest.raises(FrameError, match="failed its check twice"):
                pool.step([TEXTS[0][0]])
    finally:
        proxy.close()
