"""Fault injection at scale: many faults of each kind, each run compared with the uninterrupted one.

``--sessions`` Sokoban sessions (vision) step one episode of scripted texts through HttpEnvPool, with a
loopback proxy (``tests/serve_support.FaultProxy``) between the pool and ``atlasva serve`` that injects
one fault at a random step batch of each run: ``kill_before`` / ``kill_after`` (SIGKILL the server before
it reads the batch, or after it stepped every env but before the answer leaves; the server is restarted
on the same port), ``drop`` (the connection closes halfway through the answer), ``delay`` (the answer
comes after the client's timeout), ``corrupt`` (one pixel of a frame changed, sent as a valid PNG under
the original hash). Each run's trajectories (same loop and digests as ``soak_serve.py``) must equal the
in-process run of the same seeds and texts, and every step must carry its turn number.
Writes ``benchmarks/results/faults_serve.json``. Run: ``python benchmarks/faults_serve.py --runs 10``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from soak_serve import run_round, texts_for
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_support import FaultProxy, ServerProcess  # noqa: E402

from atlasva.envs.pool import InProcessEnvPool  # noqa: E402
from atlasva.serve.client import HttpEnvPool  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
KINDS = ("kill_before", "kill_after", "drop", "delay", "corrupt")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="runs per fault kind")
    p.add_argument("--sessions", type=int, default=32)
    p.add_argument("--turns", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "faults_serve.json")
    args = p.parse_args(argv)
    config = {"env": "sokoban", "obs_mode": "vision", "format": "free_think", "max_turns": args.turns}
    n = args.sessions
    rng = np.random.default_rng(args.seed)
    server = ServerProcess("--max-envs", str(2 * n + 8)).start()

    def crash() -> None:
        server.kill()
        server.start(wait=False)

    rows = []
    try:
        for kind in KINDS:
            for run in tqdm(range(args.runs), desc=kind):
                e = KINDS.index(kind) * 1000 + run
                seeds = [args.seed * 1_000_000 + e * n + i for i in range(n)]
                texts = [texts_for(args.seed, e, i, args.turns) for i in range(n)]
                with InProcessEnvPool() as local:
                    ref, _, _ = run_round(local, seeds, config, texts)
                at = int(rng.integers(0, args.turns - 1))  # the step batch that meets the fault
                proxy = FaultProxy(server.port, on_kill=crash)
                proxy.seconds = 1.5
                if at:
                    proxy.add("/v1/sessions/step", "pass", times=at)
                proxy.add("/v1/sessions/step", kind)
                t0 = time.perf_counter()
                try:
                    with HttpEnvPool(proxy.url, backoff=0.05, max_backoff=0.5, retries=3, failover_wait=60,
                                     timeout=0.8 if kind == "delay" else 60.0) as pool:
                        got, steps, bad_turns = run_round(pool, seeds, config, texts)
                        stats = dict(pool.stats)
                finally:
                    proxy.close()
                rows.append({"kind": kind, "run": run, "at_batch": at, "injected": proxy.applied.get(kind, 0),
                             "identical": got == ref, "turn_mismatches": bad_turns, "steps": steps,
                             "wall_s": time.perf_counter() - t0, "client": stats})
    finally:
        server.stop()
    summary = {}
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        summary[kind] = {"runs": len(rs), "faults_injected": sum(r["injected"] for r in rs),
                         "identical": sum(r["identical"] and r["turn_mismatches"] == 0 for r in rs),
                         "rebuilt_sessions": sum(r["client"]["rebuilt"] for r in rs),
                         "retries": sum(r["client"]["retries"] for r in rs),
                         "refetched_frames": sum(r["client"]["refetched"] for r in rs)}
    out = {"sessions": n, "turns": args.turns, "config": config, "summary": summary, "runs": rows,
           "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"{'fault':<12}{'injected':>9}{'identical':>10}{'rebuilt':>9}{'retries':>9}{'refetched':>10}")
    for kind, s in summary.items():
        print(f"{kind:<12}{s['faults_injected']:>9}{s['identical']:>7}/{s['runs']:<3}{s['rebuilt_sessions']:>8}"
              f"{s['retries']:>9}{s['refetched_frames']:>10}")
    ok = all(s["identical"] == s["runs"] and s["faults_injected"] == s["runs"] for s in summary.values())
    print("all runs identical to the uninterrupted run" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
