"""Longer schema fuzzing of the env service: the test ``tests/test_serve_fuzz.py`` (schemathesis against a
live ``atlasva serve``; every route; no 5xx, documented status codes and content types, responses that
conform to the schema, a healthy server afterwards) run with many more examples and a random draw.

Prints the examples run, the failures, outcomes per route and the server's RSS before and after; writes
``benchmarks/results/fuzz_serve.json``. Run: ``python benchmarks/fuzz_serve.py --examples 300 [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class _Tally:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            if report.failed:
                self.failed.append(report.nodeid)
            elif report.passed:
                self.passed += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=300, help="examples per route")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "fuzz_serve.json")
    args = p.parse_args(argv)
    report = Path(tempfile.mkdtemp()) / "fuzz.json"
    os.environ.update(ATLASVA_FUZZ_EXAMPLES=str(args.examples), ATLASVA_FUZZ_SEED=str(args.seed),
                      ATLASVA_FUZZ_REPORT=str(report))
    tally = _Tally()
    t0 = time.perf_counter()
    code = pytest.main(["-q", "-p", "no:cacheprovider", f"--hypothesis-seed={args.seed}", "--timeout=3000",
                        str(ROOT / "tests" / "test_serve_fuzz.py")], plugins=[tally])
    wall = time.perf_counter() - t0
    data = json.loads(report.read_text()) if report.exists() else {}
    out = {"examples_per_route": args.examples, "seed": args.seed, "examples_run": data.get("examples"),
           "failed_tests": tally.failed, "passed_tests": tally.passed, "wall_s": wall, **data,
           "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    rss = data.get("server_rss_mb", [])
    print(f"\n{data.get('examples')} examples over {len(data.get('outcomes', {}))} route/status pairs in {wall:.0f}s; "
          f"failures: {len(tally.failed)} {tally.failed}")
    if len(rss) == 2:
        print(f"server RSS {rss[0]:.0f} → {rss[1]:.0f} MiB; sessions left open by the fuzzer: {data['sessions_left']}")
    for k, v in data.get("outcomes", {}).items():
        print(f"  {k}: {v}")
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
