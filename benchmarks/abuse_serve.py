"""Oversized configs against a live env server: every env, every bounded key, each request sent alone.

Starts ``atlasva serve`` on loopback, warms it (``GET /envs`` imports every env), then sends each
oversized create request of the table below (the issue's six and one per bounded key of every env) and
records the status, the error's ``key`` and ``limit``, the time it took and the server's RSS before and
after. Goal: all 4xx naming the key and the limit, RSS unchanged. Also sends a batch over ``--max-batch``
and fills the server past ``--max-envs`` (503 + Retry-After). Writes ``benchmarks/results/abuse_serve.json``.
Run: ``python benchmarks/abuse_serve.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx
from bench_serve import free_port, start_server
from soak_serve import rss_mb

RESULTS = Path(__file__).resolve().parent / "results"
LEVEL_20 = ["#" * 20] + ["#P" + "_" * 17 + "#", "#X" + "_" * 17 + "#", "#O" + "_" * 17 + "#"] + ["#" + "_" * 18 + "#"] * 15 + ["#" * 20]
BIG_LEVEL = ["#" * 40] + ["#P" + "_" * 37 + "#", "#X" + "_" * 37 + "#", "#O" + "_" * 37 + "#"] + ["#" * 40]

#: (env, config, reset options)
OVERSIZED = [
    ("frozenlake", {"size": 128, "tile_size": 64}, None),  # the issue's: 200, 8192x8192 frame, 1.07 GB RSS
    ("frozenlake", {"size": 64}, None),  # the issue's: 283 MB
    ("frozenlake", {"tile_size": 100000}, None),  # the issue's: 500
    ("frozenlake", {"size": 100_000_000}, None),
    ("frozenlake", {"size": 32, "tile_size": 64}, None),  # each within its key, the frame too large
    ("frozenlake", {"max_actions_per_turn": 100000}, None),
    ("sokoban", {"dim_room": [400, 400]}, None),  # the issue's: 200
    ("sokoban", {"tile_size": 100000}, None),  # the issue's: 500
    ("sokoban", {"num_boxes": 50, "dim_room": [16, 16]}, None),
    ("sokoban", {"max_gen_tries": 10**9}, None),
    ("sokoban", {"num_gen_steps": 10**9}, None),
    ("sokoban", {"obs_mode": "text"}, {"level": BIG_LEVEL}),
    ("sokoban", {"obs_mode": "text"}, {"level": ["#" * 5000] * 3}),
    ("sokoban", {"tile_size": 64}, {"level": LEVEL_20}),  # a given 20x20 level: 1280x1280 frames
    ("navigation", {"width": 100000}, None),  # the issue's: refused already
    ("navigation", {"height": 5000}, None),
    ("navigation", {"size": 4096}, None),
    ("navigation", {"n_objects": [5, 100000]}, None),
    ("navigation", {"map_cell_px": 100000}, None),
    ("navigation", {"width": 1024, "height": 1024, "max_actions_per_turn": 64}, None),
    ("manipulation", {"width": 4096, "height": 4096}, None),
    ("manipulation", {"grid": 100000}, None),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "abuse_serve.json")
    args = p.parse_args(argv)
    port = free_port()
    server = start_server(port, 8, "--max-batch", "64")
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=120, trust_env=False) as http:
            http.get("/envs")
            rss_start = rss_mb(server.pid)
            for env, config, options in OVERSIZED:
                before = rss_mb(server.pid)
                t0 = time.perf_counter()
                r = http.post("/v1/sessions/create",
                              json={"items": [{"config": {"env": env, **config}, "options": options}]})
                body = r.json()
                rows.append({"env": env, "config": config, "options": "level" if options else None, "status": r.status_code,
                             "error": body.get("error"), "key": body.get("key"), "limit": body.get("limit"),
                             "ms": 1000 * (time.perf_counter() - t0), "rss_before_mb": before,
                             "rss_after_mb": rss_mb(server.pid), "message": body.get("message", "")[:200]})
            rss_end = rss_mb(server.pid)
            batch = http.post("/v1/sessions/create", json={"items": [{"config": {"env": "sokoban"}}] * 65})
            made = http.post("/v1/sessions/create", json={"items": [{"config": {"env": "sokoban"}}] * 8})
            full = http.post("/v1/sessions/create", json={"items": [{"config": {"env": "sokoban"}}]})
            server_limits = {"over_max_batch": [batch.status_code, batch.json().get("error")],
                             "fill_max_envs": made.status_code,
                             "past_max_envs": [full.status_code, full.json().get("error"), full.headers.get("retry-after")],
                             "health": http.get("/health").json()["status"]}
    finally:
        server.terminate()
        server.wait(timeout=10)
    all_4xx = all(400 <= r["status"] < 500 and r["key"] and r["limit"] is not None for r in rows)
    out = {"requests": rows, "all_4xx_naming_key_and_limit": all_4xx, "server_rss_mb": [rss_start, rss_end],
           "server_limits": server_limits, "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"{'env':<13}{'config':<46}{'status':>7}  {'key':<21}{'limit':>9}{'ms':>8}{'RSS MiB':>9}")
    for r in rows:
        cfg = json.dumps(r["config"]) + (" +level" if r["options"] else "")
        print(f"{r['env']:<13}{cfg[:45]:<46}{r['status']:>7}  {str(r['key']):<21}{str(r['limit']):>9}{r['ms']:>8.1f}"
              f"{r['rss_after_mb']:>9.0f}")
    print(f"all {len(rows)} refused with a 4xx naming key and limit: {all_4xx}; server RSS {rss_start:.1f} → {rss_end:.1f} MiB")
    print(f"server limits: {server_limits}")
    return 0 if all_4xx else 1


if __name__ == "__main__":
    raise SystemExit(main())
