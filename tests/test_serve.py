"""The env service against real servers on loopback (subprocesses started and killed here)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serve_support import (
    PROBE,
    TINY,
    ServerProcess,
    TinyGridEnv,
    answer,
    assert_same,
    health,
    run_episodes,
    scripted_texts,
)

from atlasva.envs.pool import InProcessEnvPool
from atlasva.serve.client import HttpEnvPool, ServeError

TOKEN = "s3cret-token"
CREATE, RESET, STEP, CLOSE = (f"/v1/sessions/{x}" for x in ("create", "reset", "step", "close"))


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess("--max-envs", "8", "--max-body-mb", "0.25", "--max-text-chars", "2000", token=TOKEN).start()
    yield srv
    srv.stop()


@pytest.fixture()
def http(server):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10, verify=False, trust_env=False) as c:
        yield c


def _reference(seeds: list[int], configs: list[dict], texts: list[list[str]]) -> list:
    with InProcessEnvPool() as pool:
        return run_episodes(pool, seeds, configs, texts)


def test_health_envs_openapi(server, http) -> None:
    h = health(server.url)  # no token needed for probes
    assert h["status"] == "ok" and h["capacity"] == 8 and h["version"]
    assert "tinygrid" in http.get("/envs").json()["envs"]
    schema = http.get("/openapi.json").json()
    assert {CREATE, RESET, STEP, CLOSE, "/health", "/envs"} <= set(schema["paths"])
    assert "StepItem" in schema["components"]["schemas"]


def test_retried_step_index_does_not_double_step(http) -> None:
    sid = "retry-test-0001"
    r = http.post(CREATE, json={"items": [{"config": TINY, "seed": 7, "session_id": sid}]})
    assert r.status_code == 200, r.text
    again = http.post(CREATE, json={"items": [{"config": TINY, "seed": 7, "session_id": sid}]})
    assert again.json() == r.json(), "a retried create returns the first result"
    text = answer("Down")
    first = http.post(STEP, json={"items": [{"session_id": sid, "index": 1, "text": text}]}).json()["results"][0]
    retry = http.post(STEP, json={"items": [{"session_id": sid, "index": 1, "text": text}]}).json()["results"][0]
    assert first["replayed"] is False and retry["replayed"] is True
    assert {**retry, "replayed": False} == first
    # the env stepped once: its state equals a local env after exactly one step
    env = TinyGridEnv(**{k: v for k, v in TINY.items() if k != "env"})
    env.reset(seed=7)
    _, _, _, _, info = env.step(text)
    assert first["info"]["state"] == info["state"] and first["info"]["turn"] == 1
    second = http.post(STEP, json={"items": [{"session_id": sid, "index": 2, "text": text}]}).json()["results"][0]
    assert second["info"]["turn"] == 2
    # the same index with another text, a skipped index: conflicts, nothing stepped
    clash = http.post(STEP, json={"items": [{"session_id": sid, "index": 2, "text": answer("Up")}]})
    assert clash.status_code == 409 and "different text" in clash.json()["message"]
    skip = http.post(STEP, json={"items": [{"session_id": sid, "index": 5, "text": text}]})
    assert skip.status_code == 409 and "expects step index 3" in skip.json()["message"]
    # a retried reset (same episode number) does not reset twice either
    reset = {"items": [{"session_id": sid, "seed": 8, "episode": 1}]}
    a, b = http.post(RESET, json=reset).json(), http.post(RESET, json=reset).json()
    assert a == b and a["results"][0]["episode"] == 1
    assert http.post(CLOSE, json={"session_ids": [sid, "never-existed-1"]}).json() == {
        "closed": [sid],
        "unknown": ["never-existed-1"],
    }


BAD_INPUTS = [
    # (description, path, kwargs for httpx, expected status, words the message must contain)
    ("malformed JSON", STEP, {"content": b'{"items": [', "headers": {"content-type": "application/json"}}, 422, ["malformed JSON"]),
    ("wrong type", STEP, {"json": {"items": [{"session_id": "abcdefgh", "index": "one", "text": "x"}]}}, 422, ["items[0].index", "integer"]),
    ("text not a string", STEP, {"json": {"items": [{"session_id": "abcdefgh", "index": 1, "text": 5}]}}, 422, ["items[0].text"]),
    ("missing field", STEP, {"json": {"items": [{"session_id": "abcdefgh", "text": "x"}]}}, 422, ["items[0].index", "required"]),
    ("extra field", STEP, {"json": {"items": [{"session_id": "abcdefgh", "index": 1, "text": "x", "oops": 1}]}}, 422, ["items[0].oops"]),
    ("empty batch", STEP, {"json": {"items": []}}, 422, ["items"]),
    ("not an object", STEP, {"json": [1, 2]}, 422, ["body"]),
    ("bad session id", STEP, {"json": {"items": [{"session_id": "../../etc", "index": 1, "text": "x"}]}}, 422, ["items[0].session_id"]),
    ("negative seed", CREATE, {"json": {"items": [{"config": TINY, "seed": -1}]}}, 422, ["items[0].seed"]),
    ("unknown env", CREATE, {"json": {"items": [{"config": {"env": "sokobn"}}]}}, 422, ["items[0].config", "Did you mean 'sokoban'"]),
    ("no env name", CREATE, {"json": {"items": [{"config": {"obs_mode": "text"}}]}}, 422, ["items[0].config", "'env'"]),
    ("unknown config key", CREATE, {"json": {"items": [{"config": {**TINY, "colour": 1}}]}}, 422, ["colour", "accepted"]),
    ("bad config value", CREATE, {"json": {"items": [{"config": {**TINY, "obs_mode": "smell"}}]}}, 422, ["items[0].config", "obs_mode"]),
    ("bad reset option", CREATE, {"json": {"items": [{"config": TINY, "options": {"level": 5}}]}}, 422, ["items[0].options"]),
    ("oversized text", STEP, {"json": {"items": [{"session_id": "abcdefgh", "index": 1, "text": "x" * 2001}]}}, 422, ["items[0].text", "limit is 2000"]),
    ("oversized body", STEP, {"json": {"items": [{"session_id": "abcdefgh", "index": 1, "text": "x" * 300_000}]}}, 413, ["exceeds"]),
    ("unknown session", STEP, {"json": {"items": [{"session_id": "abcdefgh", "index": 1, "text": "x"}]}}, 404, ["unknown session"]),
    ("wrong method", STEP, {"method": "GET"}, 405, []),
    ("unknown path", "/v1/nothing", {"json": {}}, 404, []),
]


@pytest.mark.parametrize("what,path,kwargs,status,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_get_4xx_and_server_keeps_serving(server, http, what, path, kwargs, status, words) -> None:
    kwargs = dict(kwargs)
    r = http.request(kwargs.pop("method", "POST"), path, **kwargs)
    assert r.status_code == status, f"{what}: {r.status_code} {r.text[:300]}"
    body = r.json()
    assert body.get("error") or body.get("detail"), f"{what}: no error code in {body}"
    for word in words:
        assert word in body["message"], f"{what}: {word!r} not in {body['message']!r}"
    assert health(server.url)["status"] == "ok"
    r = http.post(CREATE, json={"items": [{"config": TINY, "seed": 1}]})
    assert r.status_code == 200, r.text
    http.post(CLOSE, json={"session_ids": [r.json()["results"][0]["session_id"]]})


def test_token_required(server) -> None:
    item = {"items": [{"config": TINY, "seed": 0}]}
    missing = PROBE.post(server.url + CREATE, json=item)
    assert missing.status_code == 401 and "missing bearer token" in missing.json()["message"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = PROBE.post(server.url + CREATE, json=item, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "invalid bearer token" in wrong.json()["message"]
    assert PROBE.get(server.url + "/envs").status_code == 401
    with pytest.raises(ServeError, match="401"):
        HttpEnvPool(server.url, token="nope").reset([0], [TINY])
    texts = scripted_texts(2, 6, seed=3)
    with HttpEnvPool(server.url, token=TOKEN) as pool:
        assert_same(_reference([5, 6], [TINY, TINY], texts), run_episodes(pool, [5, 6], [TINY, TINY], texts))


def test_capacity_503_then_client_waits_and_succeeds(server, http) -> None:
    holder = HttpEnvPool(server.url, token=TOKEN)
    holder.reset(list(range(8)), [TINY] * 8)  # the server is full now
    r = http.post(CREATE, json={"items": [{"config": TINY}]})
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "no room" in r.json()["message"]
    timer = threading.Timer(0.5, holder.close)
    timer.start()
    try:
        with HttpEnvPool(server.url, token=TOKEN, capacity_wait=20) as pool:
            t0 = time.monotonic()
            (obs, info), = pool.reset([3], [TINY])
            assert info["seed"] == 3 and obs["images"][0].shape == (30, 30, 3)
            assert pool.stats["retries"] >= 1 and time.monotonic() - t0 >= 0.4
    finally:
        timer.join()


def _run_with_event(pool, seeds, configs, texts, at_turn: int, event) -> list:
    record = [pool.reset(seeds, configs)]
    done = [False] * len(seeds)
    for t in range(len(texts[0])):
        if t == at_turn:
            event()
        res = pool.step([None if done[i] else texts[i][t] for i in range(len(seeds))])
        done = [d or (r is not None and (r[2] or r[3])) for d, r in zip(done, res)]
        record.append(res)
        if all(done):
            break
    return record


def test_idle_sessions_reaped_and_client_rebuilds() -> None:
    seeds, configs = [1, 2], [{**TINY, "size": 8, "max_turns": 20}] * 2
    texts = scripted_texts(2, 4, seed=5)
    ref = _reference(seeds, configs, texts)
    srv = ServerProcess("--max-envs", "4", "--session-ttl", "0.4").start()

    def wait_until_reaped() -> None:
        deadline = time.monotonic() + 10
        while health(srv.url)["sessions"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert health(srv.url)["sessions"] == 0, "idle sessions are reaped"

    try:
        with HttpEnvPool(srv.url) as pool:
            got = _run_with_event(pool, seeds, configs, texts, at_turn=2, event=wait_until_reaped)
            # the next step found its sessions gone: the client rebuilt them by replaying 2 steps each
            assert pool.stats["rebuilt"] == 2 and pool.stats["replayed_steps"] == 4
        assert_same(ref, got)
    finally:
        srv.stop()


def test_sigkill_mid_episode_then_restart_gives_same_trajectory() -> None:
    seeds, configs = [11, 12, 13], [{**TINY, "max_turns": 20, "size": 7}] * 3
    texts = scripted_texts(3, 8, seed=9)
    ref = _reference(seeds, configs, texts)
    srv = ServerProcess("--max-envs", "8").start()
    try:
        def crash_and_restart() -> None:
            srv.kill()  # SIGKILL: the sessions are gone
            srv.start(wait=False)  # back on the same port after a while; the client retries meanwhile

        with HttpEnvPool(srv.url, backoff=0.05, retries=2, failover_wait=30) as pool:
            got = _run_with_event(pool, seeds, configs, texts, at_turn=4, event=crash_and_restart)
            assert pool.stats["rebuilt"] == 3 and pool.stats["replayed_steps"] == 12
        assert_same(ref, got)
    finally:
        srv.stop()


def test_two_servers_one_killed_sessions_fail_over() -> None:
    seeds = list(range(20, 26))
    configs = [{**TINY, "max_turns": 20, "size": 7}] * 6
    texts = scripted_texts(6, 8, seed=4)
    ref = _reference(seeds, configs, texts)
    a, b = ServerProcess("--max-envs", "8").start(), ServerProcess("--max-envs", "8").start()
    try:
        with HttpEnvPool([a.url, b.url], backoff=0.05, retries=1) as pool:
            got = _run_with_event(pool, seeds, configs, texts, at_turn=3, event=lambda: None)
            assert {url for url, _ in pool.placement()} == {a.url, b.url}, "sessions are spread over both servers"
            got = _run_with_event(pool, seeds, configs, texts, at_turn=3, event=a.kill)
            assert {url for url, _ in pool.placement()} == {b.url}
            assert pool.stats["rebuilt"] == 3
        assert_same(ref, got)
        assert health(b.url)["sessions"] == 0
    finally:
        a.stop()
        b.stop()


def test_client_argument_errors() -> None:
    with pytest.raises(ValueError, match="at least one base URL"):
        HttpEnvPool([])
    with pytest.raises(ValueError, match="http://"):
        HttpEnvPool(["localhost:8000"])
    pool = HttpEnvPool("http://127.0.0.1:9")
    with pytest.raises(ValueError, match="'env' name"):
        pool.reset([0], [{"obs_mode": "text"}])
    with pytest.raises(ValueError, match="1 texts for 0 slots"):
        pool.step(["x"])
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.reset([0], [TINY])


def test_serve_main_rejects_bad_arguments(capsys) -> None:
    from atlasva.serve.server import serve_main

    assert serve_main(["--max-envs", "0"]) == 2
    assert "max_envs must be >= 1" in capsys.readouterr().err
    assert serve_main(["--import", "no_such_module_xyz"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err


def test_bad_config_through_the_pool_is_a_value_error(server) -> None:
    from atlasva.serve.client import InvalidRequestError

    with HttpEnvPool(server.url, token=TOKEN) as pool:
        with pytest.raises(ValueError, match=r"items\[1\]\.config.*Did you mean 'tinygrid'") as err:
            pool.reset([0, 1], [TINY, {"env": "tinygird"}])
        assert isinstance(err.value, InvalidRequestError) and err.value.status == 422
        with pytest.raises(ValueError, match="limit is 2000"):
            pool.reset([0], [TINY])
            pool.step(["x" * 2001])
