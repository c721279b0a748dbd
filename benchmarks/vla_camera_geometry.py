"""How well can each Meta-World camera see where reach-v3's goal is? For every camera, the pixels the
goal's image moves per 5 cm (reach-v3's success radius) along x, y and z at the centre of the goal box,
and how many pixels the whole goal box spans. A camera where 5 cm is ~2 pixels asks a policy to localise
a 4–6-pixel dot to within a pixel or two. Cameras on the hand (behindGripper, gripperPOV) are measured at
the reset pose; they move with the hand. Projections agree with rendered frames to under a pixel.

    .venv/bin/python benchmarks/vla_camera_geometry.py [--size 96] [--task reach-v3]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=96, help="image size in pixels")
    ap.add_argument("--task", default="reach-v3")
    args = ap.parse_args(argv)

    from atlasva.vla.sim import MetaWorldTask

    sim = MetaWorldTask(args.task, args.size, ["corner2"])
    try:
        sim.reset(0)
        m, d = sim.env.model, sim.env.data
        lo, hi = np.asarray(sim.env.goal_space.low, float), np.asarray(sim.env.goal_space.high, float)

        def project(cam_id: int, p: np.ndarray) -> np.ndarray:
            pos, rot = d.cam_xpos[cam_id], d.cam_xmat[cam_id].reshape(3, 3)
            v = rot.T @ (p - pos)  # camera frame: x right, y up, looking along -z
            f = 0.5 * args.size / np.tan(np.deg2rad(m.cam_fovy[cam_id]) / 2)
            return np.array([args.size / 2 + f * v[0] / -v[2], args.size / 2 - f * v[1] / -v[2]])

        centre = (lo + hi) / 2
        print(f"{args.task}: goal box {np.round(lo, 3)} .. {np.round(hi, 3)}, {args.size} px images")
        print(f"{'camera':14s} {'px per 5 cm (x, y, z)':>24s} {'box spans (px)':>16s}  in view")
        for i in range(m.ncam):
            step = [float(np.linalg.norm(project(i, centre + 0.05 * e) - project(i, centre))) for e in np.eye(3)]
            corners = np.array([project(i, np.array(c)) for c in itertools.product(*zip(lo, hi))])
            span = corners.max(0) - corners.min(0)
            inside = bool((corners >= 0).all() and (corners < args.size).all())
            print(f"{m.camera(i).name:14s} {np.round(step, 1)!s:>24s} {np.round(span, 1)!s:>16s}  {inside}")
    finally:
        sim.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
