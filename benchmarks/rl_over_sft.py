"""Does RL beat its own warm start, seed by seed, on the same held-out levels? Paired RL − SFT per seed and pooled.

    .venv/bin/python benchmarks/rl_over_sft.py SFT_RUN:RL_RUN [SFT_RUN:RL_RUN ...]

Each pair is two run folders of the same config and training seed: one whose ``episodes-sft.jsonl`` holds the SFT
stage's held-out evaluation (e.g. ``atlasva train trainer.seed=S trainer.steps=0 'eval.stages=[sft]'``) and one whose
``episodes-rl.jsonl`` holds the RL stage's (e.g. the ablation's heuristics-only arm of seed S); a single demo run
that evaluated both stages can be given as ``RUN:RUN``. The two must have played exactly the same levels (checked).
Prints each seed's success rates with 95% Wilson intervals and the paired difference (95% normal interval, levels
gained / lost), then the same pooled over every (seed, level) pair.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from atlasva.stats import Z95, wilson_interval


def outcomes(run: Path, stage: str) -> dict[str, float]:
    """Held-out success per level hash of one stage's evaluation."""
    rows = [json.loads(x) for x in (run / f"episodes-{stage}.jsonl").read_text().splitlines() if x.strip()]
    return {r["level_hash"]: float(r["success"]) for r in rows}


def paired(diffs: list[float]) -> tuple[float, float, float]:
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else float("nan")
    half = Z95 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", help="SFT_RUN:RL_RUN (run folders)")
    args = ap.parse_args(argv)
    all_diffs: list[float] = []
    sft_wins = rl_wins = 0.0
    for pair in args.pairs:
        if ":" not in pair:
            raise SystemExit(f"expected SFT_RUN:RL_RUN, got {pair!r}")
        sft_run, rl_run = (Path(p) for p in pair.split(":", 1))
        sft, rl = outcomes(sft_run, "sft"), outcomes(rl_run, "rl")
        if set(sft) != set(rl):
            raise SystemExit(f"{sft_run} and {rl_run} evaluated different levels ({len(set(sft) ^ set(rl))} differ)")
        diffs = [rl[h] - sft[h] for h in sft]
        n = len(diffs)
        mean, lo, hi = paired(diffs)
        s_lo, s_hi = wilson_interval(sum(sft.values()), n)
        r_lo, r_hi = wilson_interval(sum(rl.values()), n)
        print(f"{rl_run.name}: SFT {sum(sft.values()) / n:.3f} [{s_lo:.3f}, {s_hi:.3f}] → RL {sum(rl.values()) / n:.3f} "
              f"[{r_lo:.3f}, {r_hi:.3f}] on {n} levels; RL − SFT {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] "
              f"({sum(d > 0 for d in diffs)} gained, {sum(d < 0 for d in diffs)} lost)")
        all_diffs += diffs
        sft_wins += sum(sft.values())
        rl_wins += sum(rl.values())
    n = len(all_diffs)
    mean, lo, hi = paired(all_diffs)
    s_lo, s_hi = wilson_interval(sft_wins, n)
    r_lo, r_hi = wilson_interval(rl_wins, n)
    print(f"pooled over {len(args.pairs)} seed(s), {n} (seed, level) pairs: SFT {sft_wins / n:.3f} [{s_lo:.3f}, {s_hi:.3f}] "
          f"→ RL {rl_wins / n:.3f} [{r_lo:.3f}, {r_hi:.3f}]; RL − SFT {mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
