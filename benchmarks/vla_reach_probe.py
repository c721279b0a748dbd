"""Does a trained AtlasVLA look at reach-v3's goal? Roll it out and print, per seed, the goal, where the hand
ends and how close it came. A policy that ignores the goal ends at the same point whatever the goal.

    .venv/bin/python benchmarks/vla_reach_probe.py runs/metaworld-tiny-<hash> [--seeds 10] [--execute 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run folder of `atlasva vla train`")
    ap.add_argument("--seeds", type=int, default=10, help="evaluation seeds from 100000")
    ap.add_argument("--execute", type=int, default=4, help="actions executed per chunk")
    ap.add_argument("--instruction", default="reach the red goal")
    args = ap.parse_args(argv)

    import torch

    from atlasva.runs import RunFolder
    from atlasva.vla.sim import MetaWorldTask, VLAPolicy

    torch.set_num_threads(1)
    loaded = RunFolder(args.run).load_checkpoint()
    if loaded is None:
        raise SystemExit(f"no checkpoint in {args.run}")
    policy = VLAPolicy(*loaded)
    sim = MetaWorldTask("reach-v3", policy.geometry.image_size, policy.cameras or ["corner2"])
    ends = []
    try:
        for seed in range(100000, 100000 + args.seeds):
            sim.reset(seed)
            goal = np.asarray(sim.env._target_pos, dtype=float).copy()
            closest, success, steps = np.inf, False, 0
            while steps < 150 and not success:
                chunk = policy.act(sim.images(), args.instruction, sim.state())
                for a in chunk[: args.execute]:
                    success = sim.step(a)
                    steps += 1
                    closest = min(closest, float(np.linalg.norm(sim.obs[:3] - goal)))
                    if success or steps >= 150:
                        break
            hand = sim.obs[:3].copy()
            ends.append(hand)
            print(f"seed {seed}: goal {np.round(goal, 3)} hand ends {np.round(hand, 3)} "
                  f"closest {closest:.3f} m, success {success}")
    finally:
        sim.close()
    spread = np.asarray(ends).std(axis=0)
    print(f"spread of the end points over seeds (m): {np.round(spread, 3)} — near 0 means the goal is ignored")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
