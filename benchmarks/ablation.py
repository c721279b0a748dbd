"""The seeds' central claim, measured: memory {off, heuristics only, full} × estimator {bi-level GAE,
trajectory GRPO}, on the demo's config and step budget, several seeds each.

    .venv/bin/python benchmarks/ablation.py [--config frozenlake-memory] [--seeds 0 1 2] [--steps N] [--jobs 2]

Each arm is an ordinary ``atlasva train`` run (its own run folder under ``runs/ablation/``, so an
interrupted ablation resumes arm by arm), evaluated on the run's held-out levels — distinct levels that
no arm trains on (each run's ``levels.jsonl``; the split report is copied into the JSON). It prints each
arm's held-out success (mean over seeds, the spread, and a 95% Wilson interval over all seeds × levels),
the paired difference "full memory − heuristics only" per estimator (same seeds, same levels; 95%
normal interval of the paired differences), and writes ``benchmarks/ablation.png`` (training success vs
RL step, mean over seeds) and ``benchmarks/ablation.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "memory off": ["memory.enable=false"],
    "heuristics only": ["memory.enable=true", "memory.learn_atlases=false"],
    "full memory": ["memory.enable=true"],
}
ESTIMATORS = {
    "bi-level GAE": ["algorithm.estimator=bi_level_gae", "trainer.group_size=1"],
    "trajectory GRPO": ["algorithm.estimator=grpo", "trainer.group_size=4", "trainer.levels_per_step=4"],
}


def run_arm(config: str, overrides: list[str], name: str) -> dict:
    """One ordinary training run: held-out summary, per-level outcomes, training success per RL step."""
    import torch

    from atlasva.config import load_config
    from atlasva.train import TrainConfig, Trainer

    torch.set_num_threads(1)
    cfg, base = load_config(TrainConfig, config, overrides)
    summary = Trainer(cfg, f"{base}-{name}").train()
    run = Path(summary["run_dir"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    episodes = [json.loads(x) for x in (run / "episodes-rl.jsonl").read_text().splitlines()]
    return {"rl": summary["eval"]["rl"], "splits": summary["splits"], "run_dir": str(run),
            "by_level": {e["level_hash"]: bool(e["success"]) for e in episodes},
            "curve": [r["train/success_rate"] for r in rows]}


def paired_difference(a: list[dict[str, bool]], b: list[dict[str, bool]]) -> dict:
    """Mean of (a − b) over the (seed, level) pairs both arms played, with a 95% normal interval."""
    diffs = [float(x[h]) - float(y[h]) for x, y in zip(a, b) for h in x if h in y]
    from atlasva.stats import Z95

    d = np.asarray(diffs)
    half = Z95 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)], "pairs": len(d)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="frozenlake-memory")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="RL steps (default: the config's)")
    ap.add_argument("--eval-episodes", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each uses one CPU thread)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ablation.json")
    args = ap.parse_args(argv)

    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    jobs: dict[tuple[str, int], tuple[str, list[str], str]] = {}
    for est_name, est_over in ESTIMATORS.items():
        for arm_name, arm_over in ARMS.items():
            key = f"{arm_name} / {est_name}"
            for seed in args.seeds:
                over = [*est_over, *arm_over, f"trainer.seed={seed}", f"eval.episodes={args.eval_episodes}",
                        "eval.stages=[rl]", f"run.root={ROOT / 'runs' / 'ablation'}"]
                if args.steps is not None:
                    over.append(f"trainer.steps={args.steps}")
                jobs[(key, seed)] = (args.config, over, f"{arm_name.replace(' ', '_')}-{est_name.replace(' ', '_')}")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=mp.get_context("spawn")) as pool:
        futures = {k: pool.submit(run_arm, *v) for k, v in jobs.items()}
        done = {k: f.result() for k, f in futures.items()}
    from atlasva.runs import wilson_ci

    results: dict[str, dict] = {}
    for key in dict.fromkeys(k for k, _ in jobs):
        arms = [done[(key, s)] for s in args.seeds]
        finals = [a["rl"]["success_rate"] for a in arms]
        wins = sum(sum(a["by_level"].values()) for a in arms)
        n = sum(len(a["by_level"]) for a in arms)
        steps = min(len(a["curve"]) for a in arms)
        results[key] = {
            "final_success": finals,
            "final_mean": float(np.mean(finals)),
            "final_std": float(np.std(finals)),
            "pooled_ci95": wilson_ci(wins, n),
            "episodes": n,
            "distinct_levels_per_seed": [a["rl"]["distinct_levels"] for a in arms],
            "splits": [a["splits"] for a in arms],
            "curve_mean": np.mean([a["curve"][:steps] for a in arms], axis=0).tolist(),
            "by_level": [a["by_level"] for a in arms],
        }
        lo, hi = results[key]["pooled_ci95"]
        print(f"{key:<36} held-out success {np.mean(finals):.3f} ± {np.std(finals):.3f} over seeds {args.seeds} "
              f"[{lo:.3f}, {hi:.3f}] on {n} episodes = {len(args.seeds)} seeds × "
              f"{arms[0]['rl']['distinct_levels']} distinct levels (train/eval overlap "
              f"{max(a['splits']['overlap'] for a in arms)})")
    differences = {}
    for est_name in ESTIMATORS:
        full, heur = results[f"full memory / {est_name}"], results[f"heuristics only / {est_name}"]
        diff = paired_difference(full["by_level"], heur["by_level"])
        differences[f"full − heuristics / {est_name}"] = diff
        print(f"full memory − heuristics only / {est_name}: {diff['mean']:+.3f} "
              f"[{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}] over {diff['pairs']} (seed, level) pairs")
    for r in results.values():
        r.pop("by_level")
    args.out.write_text(json.dumps({"config": args.config, "seeds": args.seeds, "results": results,
                                    "differences": differences}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, r in results.items():
        curve = np.asarray(r["curve_mean"])
        w = min(5, len(curve))  # each point is 16 sampled episodes per seed: a 5-step moving mean reads better
        smooth = np.convolve(curve, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(w, len(curve) + 1), smooth, label=f"{key} (held-out {r['final_mean']:.2f})",
                linestyle="-" if "GAE" in key else "--")
    ax.set_xlabel("RL step")
    ax.set_ylabel("training success (mean over seeds, 5-step mean)")
    ax.set_title(f"memory × estimator ablation ({args.config})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = args.out.with_suffix(".png")
    fig.savefig(png, dpi=100)
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
