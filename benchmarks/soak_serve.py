"""Soak and load test of the env service: many sessions stepping for minutes through HttpEnvPool.

Starts ``atlasva serve`` on loopback (one subprocess) and runs rounds of episodes: every session resets
to a new seed, then all step together (one batched request per turn) with scripted ``free_think`` texts
(1–2 random moves; one text in ten malformed) until their episodes end, for ``--minutes``. Measures:

- steps/s per ``--window`` seconds and p50/p99 latency of a batched step request;
- the server's RSS after ``--warmup`` seconds (caches full) and at the end, sampled every window: the
  growth bound is ``--rss-bound`` (5 %); beyond it the run fails;
- lost or repeated steps: every step result must carry ``info["turn"]`` = its turn, and afterwards
  every episode is replayed in process (:class:`InProcessEnvPool`, the same loop and texts); each
  session's trajectory (obs text, frame hashes, reward, flags, info) must equal its replay.

Writes ``benchmarks/results/soak_serve.json`` and ``soak_serve.png`` (steps/s and RSS over time).
Run: ``python benchmarks/soak_serve.py --sessions 128 --minutes 10``. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_serve import free_port, pct, start_server
from tqdm import tqdm

from atlasva.envs.pool import EnvPool, InProcessEnvPool
from atlasva.serve.client import HttpEnvPool
from atlasva.serve.codec import image_sha

RESULTS = Path(__file__).resolve().parent / "results"
ACTIONS = ("Up", "Down", "Left", "Right")


def texts_for(seed: int, episode: int, slot: int, turns: int) -> list[str]:
    rng = np.random.default_rng([seed, episode, slot])
    out = []
    for _ in range(turns):
        if rng.random() < 0.1:
            out.append("I will push the box somewhere")  # malformed: no answer tags
        else:
            moves = rng.choice(ACTIONS, size=int(rng.integers(1, 3)))
            out.append("<think>Push the box.</think><answer>" + ",".join(moves) + "</answer>")
    return out


def result_digest(obs: dict[str, Any], *rest: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(obs["text"].encode())
    for im in obs["images"]:
        h.update(image_sha(im).encode())
    h.update(json.dumps(rest, sort_keys=True, default=str).encode())
    return h.hexdigest()


def run_round(pool: EnvPool, seeds: list[int], config: dict[str, Any], texts: list[list[str]],
              latencies: list[float] | None = None) -> tuple[list[str], int, int]:
    """One episode of every session: (trajectory digest per session, steps, turn-counter mismatches)."""
    chains = [hashlib.blake2b(digest_size=16) for _ in seeds]
    for chain, (obs, info) in zip(chains, pool.reset(seeds, [config] * len(seeds))):
        chain.update(result_digest(obs, info).encode())
    done = [False] * len(seeds)
    steps = bad_turns = 0
    for t in range(len(texts[0])):
        batch = [None if done[i] else texts[i][t] for i in range(len(seeds))]
        if all(x is None for x in batch):
            break
        t0 = time.perf_counter()
        results = pool.step(batch)
        if latencies is not None:
            latencies.append(time.perf_counter() - t0)
        for i, res in enumerate(results):
            if res is None:
                continue
            obs, reward, term, trunc, info = res
            chains[i].update(result_digest(obs, reward, term, trunc, info).encode())
            bad_turns += int(info["turn"] != t + 1)  # a lost step lags, a repeated one runs ahead
            steps += 1
            done[i] = done[i] or term or trunc
    return [c.hexdigest() for c in chains], steps, bad_turns


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def plot(series: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_min"] for s in series]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(t, [s["steps_per_s"] for s in series], color="tab:blue")
    ax.set_xlabel("minutes")
    ax.set_ylabel("steps/s", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(t, [s["server_rss_mb"] for s in series], color="tab:red")
    ax2.set_ylabel("server RSS (MiB)", color="tab:red")
    ax2.set_ylim(0, max(s["server_rss_mb"] for s in series) * 1.2)
    ax.set_title("env service soak")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=128, help="64-256 in the issue")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the start RSS is taken")
    p.add_argument("--window", type=float, default=15.0, help="seconds per throughput sample")
    p.add_argument("--turns", type=int, default=20, help="turns per episode (the env's max_turns)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-cache-mb", type=float, default=16.0, help="the server's PNG cache")
    p.add_argument("--rss-bound", type=float, default=0.05, help="allowed RSS growth after the warm-up")
    p.add_argument("--out", type=Path, default=RESULTS / "soak_serve.json")
    args = p.parse_args(argv)
    config = {"env": "sokoban", "obs_mode": "vision", "format": "free_think", "max_turns": args.turns}
    n = args.sessions
    port = free_port()
    server = start_server(port, n + 16, "--image-cache-mb", str(args.image_cache_mb))
    series: list[dict[str, float]] = []
    episodes: list[tuple[list[int], list[list[str]], list[str]]] = []
    latencies: list[float] = []
    steps_total = bad_turns = 0
    rss0 = None
    try:
        with HttpEnvPool(f"http://127.0.0.1:{port}") as pool:
            t_start = time.monotonic()
            end = t_start + args.minutes * 60
            w_start, w_steps = t_start, 0
            bar = tqdm(total=round(args.minutes * 60), unit="s", desc=f"soak {n} sessions")
            while time.monotonic() < end:
                e = len(episodes)
                seeds = [args.seed * 10_000_000 + e * n + i for i in range(n)]
                texts = [texts_for(args.seed, e, i, args.turns) for i in range(n)]
                digests, steps, bad = run_round(pool, seeds, config, texts, latencies)
                episodes.append((seeds, texts, digests))
                steps_total += steps
                bad_turns += bad
                w_steps += steps
                now = time.monotonic()
                bar.n = min(bar.total, round(now - t_start))
                bar.refresh()
                if rss0 is None and now - t_start >= args.warmup:
                    rss0 = rss_mb(server.pid)
                if now - w_start >= args.window:
                    series.append({"t_min": (now - t_start) / 60, "steps_per_s": w_steps / (now - w_start),
                                   "server_rss_mb": rss_mb(server.pid)})
                    w_start, w_steps = now, 0
            bar.close()
            wall = time.monotonic() - t_start
            rss1 = rss_mb(server.pid)
            stats = dict(pool.stats)
    finally:
        server.terminate()
        server.wait(timeout=10)
    rss0 = rss0 if rss0 is not None else series[0]["server_rss_mb"]
    # every episode again in process: the same loop, seeds and texts
    mismatched = 0
    with InProcessEnvPool() as local:
        for seeds, texts, digests in tqdm(episodes, desc="in-process replay"):
            ref, _, _ = run_round(local, seeds, config, texts)
            mismatched += sum(a != b for a, b in zip(ref, digests))
    growth = (rss1 - rss0) / rss0
    out = {
        "sessions": n, "minutes": wall / 60, "episodes": len(episodes) * n, "steps": steps_total,
        "steps_per_s": steps_total / wall, "step_request_ms": {"p50": pct(latencies, 50), "p99": pct(latencies, 99)},
        "server_rss_mb": {"after_warmup": rss0, "end": rss1, "growth": growth, "bound": args.rss_bound},
        "turn_counter_mismatches": bad_turns, "trajectories_differing_from_replay": mismatched,
        "client_stats": stats, "series": series, "config": config, "warmup_s": args.warmup,
        "image_cache_mb": args.image_cache_mb, "command": " ".join(sys.argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    plot(series, args.out.with_suffix(".png"))
    print(f"{n} sessions, {wall / 60:.1f} min, {len(episodes) * n} episodes, {steps_total} steps, "
          f"{steps_total / wall:.0f} steps/s; step request p50 {pct(latencies, 50):.1f} ms, p99 {pct(latencies, 99):.1f} ms")
    print(f"server RSS {rss0:.0f} MiB after {args.warmup:g}s warm-up → {rss1:.0f} MiB at the end ({growth:+.1%}, "
          f"bound {args.rss_bound:.0%}); turn-counter mismatches {bad_turns}; trajectories differing from the "
          f"in-process replay {mismatched} of {len(episodes) * n}")
    ok = growth <= args.rss_bound and bad_turns == 0 and mismatched == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
