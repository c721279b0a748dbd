"""Navigation raycaster vs MuJoCo offscreen rendering, and manipulation turns/s (one CPU core).

    python benchmarks/bench_nav.py [--frames 2000] [--size 224]

Prints ``navigation: N.Nx`` — first-person navigation frames/s at SIZE px (distinct poses, no frame
cache; the raycaster's tables that do not depend on the cell — per heading, pitch and position inside a
cell — are built by the untimed warm-up, like MuJoCo's context) divided by MuJoCo's offscreen rendering
of the manipulation tabletop at the same size (atlasva.sim.render.OffscreenRenderer, OSMesa on a CPU) — and manipulation turns/s with one rendered
frame per turn (report only). Pinned to one core; OSMesa's llvmpipe limited to one thread.
"""

from __future__ import annotations

import argparse
import os
import time


def _one_core() -> None:
    os.environ.setdefault("LP_NUM_THREADS", "1")  # llvmpipe (OSMesa) threads
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[0]})


def render_rates(size: int, frames: int, mujoco_frames: int, rounds: int = 5) -> tuple[float, float]:
    """(navigation frames/s, MuJoCo frames/s) at ``size`` px, timed in alternating rounds so that both
    see the same machine load (shared CPUs make back-to-back timings drift)."""
    import numpy as np

    from atlasva import envs
    from atlasva.envs.navigation import Raycaster, generate_scene

    scene = generate_scene(3, "base")
    rc = Raycaster(scene, size, size)
    free = np.argwhere(~scene.blocked)
    poses = [(scene.centre(int(r), int(c)), 90.0 * h, p) for r, c in free for h in range(4) for p in (-30.0, 0.0, 30.0)]
    env = envs.make("manipulation", task="stack_three_cubes", width=size, obs_mode="vision")
    env.reset(seed=0)
    mj = env._renderer
    for (x, z), h, p in poses[:20]:
        rc.render(x, z, h, p)
    for _ in range(3):
        mj.render(env.data)
    t_nav = t_mj = 0.0
    n_nav = max(1, frames // rounds)
    n_mj = max(1, mujoco_frames // rounds)
    k = 0
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n_nav):
            (x, z), h, p = poses[k % len(poses)]
            rc.render(x, z, h, p)
            k += 1
        t_nav += time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(n_mj):
            mj.render(env.data)
        t_mj += time.perf_counter() - t
    env.close()
    return n_nav * rounds / t_nav, n_mj * rounds / t_mj


def bench_manipulation_turns(turns: int) -> float:
    from atlasva import envs, formats

    env = envs.make("manipulation", task="stack_three_cubes", obs_mode="vision")
    done_turns, seed = 0, 0
    t = time.perf_counter()
    while done_turns < turns:
        env.reset(seed=seed)
        plan, done = env.solve(), False
        while plan and not done and done_turns < turns:
            _, _, done, _, _ = env.step(formats.answer(plan[:2], "free_think", action_sep="|"))
            plan = plan[2:]
            done_turns += 1
        seed += 1
    rate = done_turns / (time.perf_counter() - t)
    env.close()
    return rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)  # ~0.7 s at ~3000 frames/s: steadier than 300
    ap.add_argument("--mujoco-frames", type=int, default=30)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args(argv)
    _one_core()
    from atlasva.sim.render import configure_headless

    configure_headless()
    nav, mj = render_rates(args.size, args.frames, args.mujoco_frames)
    print(f"navigation raycaster {args.size}px: {nav:.1f} frames/s")
    print(f"mujoco offscreen {args.size}px ({os.environ.get('MUJOCO_GL')}): {mj:.1f} frames/s")
    print(f"navigation: {nav / mj:.1f}x")
    turns = bench_manipulation_turns(args.turns)
    print(f"manipulation (stack_three_cubes, 128px, 2 primitives + 1 frame per turn): {turns:.1f} turns/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
