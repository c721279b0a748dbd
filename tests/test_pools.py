"""The four EnvPool kinds (in-process, process, HTTP, Ray) return identical results."""

from __future__ import annotations

import pytest
from serve_support import (
    TESTS_DIR,
    TINY,
    ServerProcess,
    assert_same,
    free_think,
    health,
    run_episodes,
    scripted_texts,
)

from atlasva.envs.pool import InProcessEnvPool, ProcessEnvPool
from atlasva.serve.client import HttpEnvPool

SOKOBAN = {"env": "sokoban", "max_turns": 5}
SEEDS = [0, 1, 2, 3, 4]
# A mix of envs and configs in one batch: tiny grid walks (text+image) and Sokoban frames.
CONFIGS = [TINY, {**TINY, "obs_mode": "both"}, SOKOBAN, SOKOBAN, {**TINY, "size": 4}]


def _texts(n_turns: int = 6, seed: int = 0) -> list[list[str]]:
    tiny = scripted_texts(len(SEEDS), n_turns, seed)
    soko = scripted_texts(len(SEEDS), n_turns, seed + 1, actions=("Up", "Down", "Left", "Right"), wrap=free_think)
    return [soko[i] if c["env"] == "sokoban" else tiny[i] for i, c in enumerate(CONFIGS)]


@pytest.fixture(scope="module")
def reference() -> list:
    with InProcessEnvPool() as pool:
        return [run_episodes(pool, SEEDS, CONFIGS, _texts(seed=k)) for k in range(2)]


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess("--max-envs", "16").start()
    yield srv
    srv.stop()


def _check_pool(pool, reference: list) -> None:
    # Two rounds on the same pool: the second reuses the sessions/env objects (reset path).
    for k in range(2):
        record = run_episodes(pool, SEEDS, CONFIGS, _texts(seed=k))
        assert_same(reference[k], record)
    assert any(r is not None and r[0]["images"] for r in record[1]), "the batch should carry images"


def test_process_pool_matches_in_process(reference) -> None:
    with ProcessEnvPool(num_workers=2) as pool:
        _check_pool(pool, reference)
        # fewer slots, then more: workers close and rebuild their envs
        small = run_episodes(pool, SEEDS[:1], CONFIGS[:1], [_texts()[0]])
        assert len(small[0]) == 1
        _check_pool(pool, reference)


def test_http_pool_matches_in_process(server, reference) -> None:
    with HttpEnvPool([server.url]) as pool:
        _check_pool(pool, reference)
        assert pool.stats["rebuilt"] == 0 and pool.stats["retries"] == 0
        assert server.url and all(url == server.url for url, _ in pool.placement())
    assert health(server.url)["sessions"] == 0, "closing the pool closes its sessions"


@pytest.mark.slow
def test_ray_pool_matches_in_process(reference) -> None:
    import ray

    from atlasva.envs.ray_pool import RayEnvPool

    started = not ray.is_initialized()
    # the actors import the test env's module, so they need the tests folder on their path
    init = {"num_cpus": 2, "runtime_env": {"env_vars": {"PYTHONPATH": str(TESTS_DIR)}}}
    try:
        with RayEnvPool(num_workers=2, init_kwargs=init, actor_options={"num_cpus": 0.5}) as pool:
            _check_pool(pool, reference)
    finally:
        if started:
            ray.shutdown()


def test_process_pool_errors() -> None:
    with pytest.raises(ValueError, match="Did you mean 'sokoban'"):
        ProcessEnvPool(num_workers=1).reset([0], [{"env": "sokobn"}])
    with ProcessEnvPool(num_workers=2) as pool:
        with pytest.raises(ValueError, match="obs_mode"):
            pool.reset([0, 1], [TINY, {**TINY, "obs_mode": "smell"}])
        pool.reset([0], [{**TINY, "max_turns": 1}])
        (res,) = pool.step([free_think("Up")])
        assert res is not None and (res[2] or res[3])  # ended after one turn (max_turns=1)
        with pytest.raises(ValueError, match="slot 0 has finished"):
            pool.step(["<answer>Up</answer>"])
        assert pool.step([None]) == [None]
        with pytest.raises(ValueError, match="2 texts for 1 slots"):
            pool.step([None, None])
    with pytest.raises(RuntimeError, match="closed"):
        pool.step([None])
