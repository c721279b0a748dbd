"""What each piece of AtlasVLA's perception buys: {patch tokens only, + keypoints} × {L1, MSE} × {auxiliary
goal/object loss off, on}, plus keypoints + MSE with the auxiliary targets relative to the hand
(``kp-mse-aux-hand``), closed-loop success and held-out goal error, on one shared demo dataset.

    .venv/bin/python benchmarks/vla_ablation.py [--config metaworld-tiny] [--steps 1500] [--episodes 30] [--jobs 2]

Each arm is an ordinary ``atlasva vla train`` + ``atlasva vla eval`` of the config with three switches
(``model.keypoints``, ``model.head``, ``model.aux_dim`` / ``train.aux_weight`` / ``model.aux_frame``), its own run folder under
``--root`` (default ``runs/vla-ablation/``; ``--root runs`` reuses a finished default training of the same identity),
the config's dataset (collect it first:
``atlasva vla collect metaworld-tiny``) and evaluation seeds. The held-out goal error is
``vla_goal_probe.policy_goal_error``: a ridge read-out of reach-v3's goal from the trained decoder's outputs,
fitted on frames of training seeds and scored on held-out seeds (and the auxiliary head's own error where
there is one). Writes ``benchmarks/results/vla_perception.json`` after each arm; a re-run keeps the arms already
there under the same settings and resumes an interrupted training from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# without keypoints the auxiliary head can only read a decoder query
VISION = {"patch": ["model.keypoints=0", "model.aux_source=decoder"],
          "kp": ["model.keypoints=16", "model.aux_source=keypoints"]}
LOSS = {"l1": ["model.head=l1"], "mse": ["model.head=mse"]}
AUX = {"aux-off": ["model.aux_dim=0", "train.aux_weight=0"],
       "aux-on": ["model.aux_dim=6", "train.aux_weight=1.0", "model.aux_frame=world"]}
# the keypoint + MSE arm with the aux targets relative to the hand (model.aux_frame=hand, what the wrist camera shows)
AUX_HAND = ["model.aux_dim=6", "train.aux_weight=1.0", "model.aux_frame=hand"]


def arms() -> dict[str, list[str]]:
    table = {f"{v}-{lo}-{a}": [*VISION[v], *LOSS[lo], *AUX[a]] for v in VISION for lo in LOSS for a in AUX}
    table["kp-mse-aux-hand"] = [*VISION["kp"], *LOSS["mse"], *AUX_HAND]
    return table


def run_arm(config: str, overrides: list[str]) -> dict[str, Any]:
    """Train and evaluate one arm exactly as the CLI does; its run folder, timings and evaluation."""
    import os

    os.environ.setdefault("MUJOCO_GL", "osmesa")
    from atlasva.config import load_config
    from atlasva.vla import sim
    from atlasva.vla.config import VLAConfig

    cfg, name = load_config(VLAConfig, config, overrides, subdir="vla")
    cfg._name = name  # type: ignore[attr-defined]
    t0 = time.time()
    run = sim.train(cfg)
    t1 = time.time()
    summary = sim.evaluate(cfg)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = [r for r in rows if "train/loss" in r][-1]
    return {"run": str(run), "train_s": t1 - t0, "eval_s": time.time() - t1, "steps_per_s": last.get("train/steps_per_s"),
            "final_loss": last.get("train/loss"), "final_aux_loss": last.get("train/aux_loss"),
            "eval": {t: {k: s[k] for k in ("episodes", "successes", "success_rate", "success_ci95") if k in s}
                     for t, s in summary["eval"][cfg.eval.stage]["per_task"].items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="metaworld-tiny")
    ap.add_argument("--arms", default=",".join(arms()), help="comma-separated arm names")
    ap.add_argument("--steps", type=int, default=1500, help="training steps per arm (metaworld-tiny trains 1500)")
    ap.add_argument("--episodes", type=int, default=30, help="evaluation episodes per task")
    ap.add_argument("--seed", type=int, default=0, help="training seed (model init and batches)")
    ap.add_argument("--keypoint-lr", type=float, default=0.001,
                    help="train.keypoint_lr of every arm (the table in benchmarks/README.md ran at 1e-3)")
    ap.add_argument("--jobs", type=int, default=2, help="arms at once (one torch thread each)")
    ap.add_argument("--root", default="runs/vla-ablation",
                    help="run.root of the arms; `runs` reuses a finished `atlasva vla train` run of the same identity")
    ap.add_argument("--probe-cache", type=Path, default=Path("runs/probe-frames"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vla_perception.json")
    args = ap.parse_args(argv)

    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vla_goal_probe import policy_goal_error, probe_frames

    table = arms()
    chosen = [a for a in args.arms.split(",") if a]
    unknown = [a for a in chosen if a not in table]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {sorted(table)}")
    common = [f"train.steps={args.steps}", f"train.keypoint_lr={args.keypoint_lr}", f"train.seed={args.seed}",
              "model.seed=" + str(args.seed),
              f"eval.episodes_per_task={args.episodes}", "train.num_threads=1", "eval.num_threads=1",
              "eval.expert_baseline=false", "eval.save_media=false", f"run.root={args.root}"]
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("arms", {})
    results.update({"config": args.config, "steps": args.steps, "episodes_per_task": args.episodes,
                    "common_overrides": common})
    # an arm already trained and evaluated under these settings is kept (delete its entry in --out to redo it)
    done = {arm for arm in chosen if results["arms"].get(f"{arm}/seed{args.seed}", {}).get("common_overrides") == common}
    if done:
        print(f"kept from {args.out}: {sorted(done)}", flush=True)
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {arm: pool.submit(run_arm, args.config, [*table[arm], *common]) for arm in chosen if arm not in done}
        for arm, fut in futures.items():
            res = fut.result()
            res["overrides"] = table[arm]
            res["common_overrides"] = common
            results["arms"][f"{arm}/seed{args.seed}"] = res
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
            print(f"{arm}: {res['eval']} ({res['train_s']:.0f}s train)", flush=True)
    train, held = probe_frames(args.config, 200, 100, 4, args.probe_cache)
    for arm in chosen:
        res = results["arms"][f"{arm}/seed{args.seed}"]
        res["goal_error"] = policy_goal_error(Path(res["run"]), train, held)
        args.out.write_text(json.dumps(results, indent=1))
        g = res["goal_error"]
        aux = f", aux head {g['aux_head']['held_out']['error_m']:.3f} m" if "aux_head" in g else ""
        print(f"{arm}: held-out goal error (ridge on the decoder) {g['ridge']['held_out']['error_m']:.3f} m{aux}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
