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
import sys
from pathlib import Path

from atlasva.stats import wilson_interval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation import paired_difference  # noqa: E402  (the ablation's paired interval, one implementation)


def outcomes(run: Path, stage: str) -> dict[str, bool]:
    """Held-out success per level hash of one stage's evaluation."""
    rows = [json.loads(x) for x in (run / f"episodes-{stage}.jsonl").read_text().splitlines() if x.strip()]
    return {r["level_hash"]: bool(r["success"]) for r in rows}


def summary(sft: list[dict[str, bool]], rl: list[dict[str, bool]]) -> str:
    """Both stages' rates with Wilson intervals and the paired RL − SFT over every (seed, level) pair."""
    n = sum(len(x) for x in sft)
    s_wins, r_wins = sum(sum(x.values()) for x in sft), sum(sum(x.values()) for x in rl)
    (s_lo, s_hi), (r_lo, r_hi) = wilson_interval(s_wins, n), wilson_interval(r_wins, n)
    diff = paired_difference(rl, sft)
    lo, hi = diff["ci95"]
    return (f"SFT {s_wins / n:.3f} [{s_lo:.3f}, {s_hi:.3f}] → RL {r_wins / n:.3f} [{r_lo:.3f}, {r_hi:.3f}] on {n} "
            f"(seed, level) pairs; RL − SFT {diff['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", help="SFT_RUN:RL_RUN (run folders)")
    args = ap.parse_args(argv)
    all_rl: list[dict[str, bool]] = []
    all_sft: list[dict[str, bool]] = []
    for pair in args.pairs:
        if ":" not in pair:
            raise SystemExit(f"expected SFT_RUN:RL_RUN, got {pair!r}")
        sft_run, rl_run = (Path(p) for p in pair.split(":", 1))
        sft, rl = outcomes(sft_run, "sft"), outcomes(rl_run, "rl")
        if set(sft) != set(rl):
            raise SystemExit(f"{sft_run} and {rl_run} evaluated different levels ({len(set(sft) ^ set(rl))} differ)")
        diffs = [rl[h] - sft[h] for h in sft]
        print(f"{rl_run.name}: {summary([sft], [rl])} ({sum(d > 0 for d in diffs)} gained, {sum(d < 0 for d in diffs)} lost)")
        all_sft.append(sft)
        all_rl.append(rl)
    print(f"pooled over {len(args.pairs)} seed(s): {summary(all_sft, all_rl)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
