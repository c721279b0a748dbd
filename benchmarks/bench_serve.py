"""Env service throughput: batched requests vs one request per step, and HTTP pool vs process pool.

64 Sokoban sessions with image observations (PNG over loopback). The same scripted texts are
stepped four ways:

- ``batched``: :class:`atlasva.serve.HttpEnvPool` — one request per server per round of steps,
  on one server (and on ``--servers`` servers when that is more than one);
- ``per-step``: one request per env step, all sessions' agent loops running concurrently
  (asyncio + httpx), as VAGEN's remote env client does (one server);
- ``process``: :class:`atlasva.envs.pool.ProcessEnvPool` with ``--workers`` worker processes;
- ``in-process``: :class:`atlasva.envs.pool.InProcessEnvPool` (for reference).

Prints steps/s and p50/p99 request latency, then ``batched: N.Nx per-step`` and the HTTP pool /
process pool ratio. Run: ``python benchmarks/bench_serve.py [--sessions 64] [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from atlasva.envs.pool import EnvPool, InProcessEnvPool, ProcessEnvPool
from atlasva.serve.client import HttpEnvPool
from atlasva.serve.codec import ImageDecoder, decode_step

ACTIONS = ("Up", "Down", "Left", "Right")


def scripted(n: int, rounds: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [
        [
            "<think>Push the box.</think><answer>" + ",".join(rng.choice(ACTIONS, size=int(rng.integers(1, 3)))) + "</answer>"
            for _ in range(rounds)
        ]
        for _ in range(n)
    ]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q)) if xs else float("nan")


def run_pool(pool: EnvPool, seeds: list[int], configs: list[dict[str, Any]], texts: list[list[str]]) -> dict[str, Any]:
    pool.reset(seeds, configs)
    done = [False] * len(seeds)
    steps, lat = 0, []
    t0 = time.perf_counter()
    for t in range(len(texts[0])):
        batch = [None if done[i] else texts[i][t] for i in range(len(seeds))]
        if all(b is None for b in batch):
            break
        t1 = time.perf_counter()
        res = pool.step(batch)
        lat.append(time.perf_counter() - t1)
        for i, r in enumerate(res):
            if r is not None:
                steps += 1
                done[i] = bool(r[2] or r[3])
    wall = time.perf_counter() - t0
    return {"steps": steps, "wall": wall, "lat": lat}


async def run_per_step(url: str, seeds: list[int], configs: list[dict[str, Any]], texts: list[list[str]]) -> dict[str, Any]:
    """One request per env step; every session's loop runs concurrently (VAGEN's remote client)."""
    limits = httpx.Limits(max_connections=len(seeds), max_keepalive_connections=len(seeds))
    decoder = ImageDecoder()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120, verify=False, trust_env=False) as client:
        created = await asyncio.gather(
            *[client.post("/v1/sessions/create", json={"items": [{"config": c, "seed": s}]}) for s, c in zip(seeds, configs)]
        )
        sids = [r.json()["results"][0]["session_id"] for r in created]
        lat: list[float] = []
        steps = 0

        async def loop(i: int) -> None:
            nonlocal steps
            for index, text in enumerate(texts[i], start=1):
                t1 = time.perf_counter()
                r = await client.post("/v1/sessions/step", json={"items": [{"session_id": sids[i], "index": index, "text": text}]})
                r.raise_for_status()
                obs, _, term, trunc, _ = decode_step(r.json()["results"][0], decoder)
                lat.append(time.perf_counter() - t1)
                steps += 1
                if term or trunc:
                    break

        t0 = time.perf_counter()
        await asyncio.gather(*[loop(i) for i in range(len(seeds))])
        wall = time.perf_counter() - t0
        await client.post("/v1/sessions/close", json={"session_ids": sids})
    return {"steps": steps, "wall": wall, "lat": lat}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, max_envs: int, *extra: str) -> subprocess.Popen[bytes]:
    """``atlasva serve`` on loopback in a subprocess (``extra``: more serve flags), once it is healthy."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "atlasva.serve", "--port", str(port), "--max-envs", str(max_envs), *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    with httpx.Client(verify=False, trust_env=False) as c:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if c.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return proc
            except httpx.TransportError:
                time.sleep(0.1)
    proc.kill()
    raise TimeoutError("server did not start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--rounds", type=int, default=30, help="turns per session (episodes may end earlier)")
    p.add_argument("--workers", type=int, default=2, help="process pool workers")
    p.add_argument("--servers", type=int, default=1, help="env servers for the HTTP pool (>1 adds a multi-server run)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode; the best is reported")
    args = p.parse_args(argv)

    n = args.sessions
    seeds = list(range(n))
    configs = [{"env": "sokoban", "obs_mode": "vision"}] * n
    texts = scripted(n, args.rounds, seed=0)
    warm = [t[:2] for t in texts]
    ports = [free_port() for _ in range(max(1, args.servers))]
    servers = [start_server(port, max_envs=4 * n) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    results: dict[str, dict[str, Any]] = {}

    def keep_best(name: str, r: dict[str, Any]) -> None:
        r["sps"] = r["steps"] / r["wall"]
        if name not in results or r["sps"] > results[name]["sps"]:
            results[name] = r

    one, many = "batched, 1 server", f"batched, {len(urls)} servers"
    try:
        with HttpEnvPool(urls[:1]) as pool:
            run_pool(pool, seeds, configs, warm)
            for _ in range(args.repeats):
                keep_best(one, run_pool(pool, seeds, configs, texts))
        asyncio.run(run_per_step(urls[0], seeds[:4], configs[:4], [t[:2] for t in texts[:4]]))  # warm-up
        for _ in range(args.repeats):
            keep_best("per-step, 1 server", asyncio.run(run_per_step(urls[0], seeds, configs, texts)))
        if len(urls) > 1:
            with HttpEnvPool(urls) as pool:
                run_pool(pool, seeds, configs, warm)
                for _ in range(args.repeats):
                    keep_best(many, run_pool(pool, seeds, configs, texts))
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
    with ProcessEnvPool(num_workers=args.workers) as pool:
        run_pool(pool, seeds, configs, warm)
        for _ in range(args.repeats):
            keep_best(f"process pool, {args.workers} workers", run_pool(pool, seeds, configs, texts))
    with InProcessEnvPool() as pool:
        for _ in range(args.repeats):
            keep_best("in-process pool", run_pool(pool, seeds, configs, texts))

    print(f"{n} Sokoban sessions, vision obs ({args.rounds} turns max), {os.cpu_count()} CPU(s), loopback")
    print(f"{'mode':30s} {'steps':>6s} {'steps/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}   (latency per request)")
    for name, r in results.items():
        print(f"{name:30s} {r['steps']:6d} {r['sps']:9.1f} {pct(r['lat'], 50):8.2f} {pct(r['lat'], 99):8.2f}")
    batched, per_step = results[one]["sps"], results["per-step, 1 server"]["sps"]
    best = max((k for k in (one, many) if k in results), key=lambda k: results[k]["sps"])
    http = results[best]["sps"]
    process = results[f"process pool, {args.workers} workers"]["sps"]
    print(f"batched: {batched / per_step:.1f}x per-step")
    print(f"http pool ({best}) vs process pool ({args.workers} workers): process pool is "
          f"{process / http:.2f}x faster (goal <= 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
