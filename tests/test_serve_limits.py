"""Resource bounds: each env's own limits (in-process and over HTTP), the server's limits on frame pixels
per response, live sessions and requests in progress, and the session protocol without a server."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from serve_support import (
    TINY,
    ServerProcess,
    TinyGridEnv,
    answer,
    assert_same,
    health,
    rss_mb,
    run_episodes,
    scripted_texts,
)

from atlasva.envs import make
from atlasva.envs.base import LimitError
from atlasva.envs.pool import InProcessEnvPool
from atlasva.serve.client import HttpEnvPool, InvalidRequestError
from atlasva.serve.sessions import Limits, ServiceError, SessionService

SOKOBAN_40 = ["#" * 40] + ["#P" + "_" * 37 + "#", "#X" + "_" * 37 + "#", "#O" + "_" * 37 + "#"] + ["#" * 40]

#: (env, config, reset options, the key named in the refusal, its limit) — the issue's oversized requests and more
OVERSIZED = [
    ("frozenlake", {"size": 128, "tile_size": 64}, None, "size", 32),
    ("frozenlake", {"tile_size": 100000}, None, "tile_size", 64),
    ("frozenlake", {"size": 100_000_000}, None, "size", 32),
    ("frozenlake", {"size": 32, "tile_size": 64}, None, "image_pixels", 1 << 20),
    ("frozenlake", {"max_actions_per_turn": 1000}, None, "max_actions_per_turn", 32),
    ("sokoban", {"dim_room": [400, 400]}, None, "dim_room", 16),
    ("sokoban", {"tile_size": 100000}, None, "tile_size", 64),
    ("sokoban", {"max_gen_tries": 10**9}, None, "max_gen_tries", 1000),
    ("sokoban", {"obs_mode": "text"}, {"level": SOKOBAN_40}, "options.level", 32),
    ("navigation", {"width": 100000}, None, "width", 1024),
    ("navigation", {"size": 4096}, None, "size", 32),
    ("navigation", {"n_objects": [5, 10**6]}, None, "n_objects", 16),
    ("manipulation", {"width": 4096, "height": 4096}, None, "width", 1024),
]
IDS = [f"{env}-{key}" for env, _, _, key, _ in OVERSIZED]


@pytest.mark.parametrize("env,config,options,key,limit", OVERSIZED, ids=IDS)
def test_each_env_refuses_oversized_configs_in_process(env, config, options, key, limit) -> None:
    with pytest.raises(LimitError) as err:
        e = make(env, **config)
        e.reset(seed=0, options=options)
    assert err.value.key == key and err.value.limit == limit
    assert f"{key}" in str(err.value) and str(limit) in str(err.value)


def test_a_larger_given_level_within_limits_still_works_and_its_frame_is_checked() -> None:
    env = make("sokoban", tile_size=64)  # a 6x6 room: 384x384 frames
    rows = ["#" * 20] + ["#" + "_" * 18 + "#"] * 18 + ["#" * 20]
    rows[1], rows[2], rows[3] = "#P" + "_" * 17 + "#", "#X" + "_" * 17 + "#", "#O" + "_" * 17 + "#"
    with pytest.raises(LimitError, match="image_pixels"):
        env.reset(options={"level": rows})  # 1280x1280 frames
    assert env.image_shape == (384, 384, 3), "a refused level leaves the env as it was"
    obs, _ = make("sokoban").reset(options={"level": rows})
    assert obs["images"][0].shape == (560, 560, 3)


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess("--max-envs", "16", "--max-frame-pixels", "2000").start()
    yield srv
    srv.stop()


def test_oversized_configs_over_http_get_422_naming_key_and_limit_and_rss_is_unchanged(server) -> None:
    http = httpx.Client(base_url=server.url, timeout=60, trust_env=False)
    assert set(http.get("/envs").json()["limits"]["sokoban"]) >= {"dim_room", "tile_size", "options.level"}
    before = rss_mb(server.proc.pid)
    for env, config, options, key, limit in OVERSIZED:
        r = http.post("/v1/sessions/create", json={"items": [{"config": {"env": env, **config}, "options": options}]})
        body = r.json()
        assert r.status_code == 422 and body["error"] == "limit_exceeded", (env, key, r.status_code, r.text[:300])
        assert body["key"] == key and body["limit"] == limit and body["env"] == env
        assert body["field"].startswith("items[0].") and key in body["message"] and str(limit) in body["message"]
    after = rss_mb(server.proc.pid)
    assert after - before < 30, f"server RSS grew from {before:.0f} to {after:.0f} MiB"
    assert health(server.url) | {"sessions": 0} == health(server.url)
    with HttpEnvPool(server.url) as pool, pytest.raises(InvalidRequestError, match=r"size=128.*limit of 32"):
        pool.reset([0], [{"env": "frozenlake", "size": 128, "tile_size": 64}])


def test_frame_budget_per_response_splits_batches_and_refuses_a_single_oversized_frame(server) -> None:
    # 30x30 frames (900 pixels) against a 2000-pixel budget: two frames per response at most
    seeds, configs, texts = [1, 2, 3, 4, 5], [TINY] * 5, scripted_texts(5, 5, seed=2)
    with InProcessEnvPool() as pool:
        ref = run_episodes(pool, seeds, configs, texts)
    with HttpEnvPool(server.url) as pool:
        got = run_episodes(pool, seeds, configs, texts)
        assert pool.stats["splits"] >= 2
    assert_same(ref, got)
    r = httpx.post(server.url + "/v1/sessions/create", json={"items": [{"config": TINY}] * 3}, trust_env=False)
    assert r.status_code == 422 and r.json()["error"] == "frame_budget" and r.json()["limit"] == 2000
    assert "2700 image pixels" in r.json()["message"]
    with HttpEnvPool(server.url) as pool, pytest.raises(InvalidRequestError, match="frame_budget"):
        pool.reset([0], [{**TINY, "size": 8}])  # one 48x48 frame = 2304 pixels
    assert health(server.url)["sessions"] == 0, "refused creates leave no session behind"


def test_session_protocol_without_a_server() -> None:
    service = SessionService(Limits(max_envs=2, max_frame_pixels=2000))
    (first,) = service.create([{"config": TINY, "seed": 3, "options": None, "session_id": "abcdefgh"}])
    assert first["episode"] == 0 and first["info"]["seed"] == 3
    sid = first["session_id"]
    step = {"session_id": sid, "index": 1, "text": answer("Down"), "episode": 0}
    (a,) = service.step([step], ttl=60)
    (b,) = service.step([step], ttl=60)  # a retry: the recorded result, not a second step
    assert a["replayed"] is False and b == {**a, "replayed": True} and a["info"]["turn"] == 1
    with pytest.raises(ServiceError, match="different text") as err:
        service.step([{**step, "text": answer("Up")}], ttl=60)
    assert err.value.status == 409
    with pytest.raises(ServiceError, match="expects step index 2") as err:
        service.step([{**step, "index": 3}], ttl=60)
    env = service.store.sessions[sid].env
    assert env.turn == 1, "refused steps ran nothing"
    with pytest.raises(ServiceError, match="no room for 2") as err:
        service.create([{"config": TINY}, {"config": TINY}])
    assert err.value.status == 503 and service.store.free() == 1
    with pytest.raises(ServiceError) as err:
        service.create([{"config": {**TINY, "size": 9}}])  # 54x54 frames: over the 2000-pixel budget
    assert err.value.code == "frame_budget" and service.store.free() == 1, "nothing was kept"
    with pytest.raises(ServiceError) as err:
        service.create([{"config": {"env": "frozenlake", "tile_size": 10**5}}])
    assert err.value.status == 422 and err.value.body()["key"] == "tile_size"
    with pytest.raises(ServiceError, match="items.0..config: cannot build env 'sokoban'.*tried 2 random rooms") as err:
        service.create([{"config": {"env": "sokoban", "min_solution_length": 500, "max_gen_tries": 2}}])
    assert err.value.status == 422, "a generator that gives up is the config's fault, not a server error"
    assert service.close([sid, "nosuchsession"]) == {"closed": [sid], "unknown": ["nosuchsession"]}
    assert isinstance(env, TinyGridEnv)


def test_requests_beyond_max_inflight_wait_then_get_503_busy() -> None:
    from atlasva.serve.server import _Guard

    release = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:
        await receive()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = _Guard(slow_app, max_bytes=1000, max_inflight=1, queue_wait=0.2, retry_after=3)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.create_task(client.post("/v1/sessions/step", content=b"{}"))
            await asyncio.sleep(0.05)
            try:  # waits 0.2 s for the slot, then busy (without the gate it would hang on the slow app)
                second = await asyncio.wait_for(client.post("/v1/sessions/step", content=b"{}"), 5)
            finally:
                release.set()
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.status_code == 200 and guard.inflight == 0
    assert second.status_code == 503 and second.json()["error"] == "busy" and second.headers["retry-after"] == "3"


class _SlowGrid(TinyGridEnv):
    """A tinygrid that takes a while to build (counts its constructions)."""

    built = 0

    def __init__(self, **kw) -> None:
        type(self).built += 1
        time.sleep(0.3)
        super().__init__(**kw)


def test_a_retried_create_racing_its_first_attempt_builds_each_env_once() -> None:
    # found by benchmarks/faults_serve.py: a create that outlived the client's timeout and its retry both
    # built the sessions; the later one replaced a session the client had already stepped
    from concurrent.futures import ThreadPoolExecutor

    from atlasva.envs import register

    register("slowgrid", _SlowGrid, overwrite=True)
    service = SessionService(Limits(max_envs=8))
    items = [{"config": {"env": "slowgrid"}, "seed": i, "options": None, "session_id": f"race-{i:04d}"} for i in range(3)]
    with ThreadPoolExecutor(2) as pool:
        first, retry = pool.map(lambda _: service.create(items), range(2))
    assert first == retry
    assert _SlowGrid.built == 3 and len(service.store.sessions) == 3 and service.store.free() == 5
    assert not service.store.creating
