"""Environment benchmarks: atlasva's envs against the tools VAGEN uses.

Run from the repository root::

    .venv/bin/python benchmarks/bench_envs.py            # every comparison
    .venv/bin/python benchmarks/bench_envs.py --only sokoban --quick

Each comparison is one function in ``COMPARISONS``; it returns result records and the script prints
one ratio line per record (``sokoban generation (6x6, 1 box): 18.3x gym-sokoban``) and writes all
records to ``benchmarks/results/bench_envs.json``. Ratios are measured in one run on one machine;
they are figures to record, not timed tests.

Peers that need an old stack run in their own small venv inside this folder, created on first use
(``benchmarks/.venv-<peer>``, git-ignored). This same file is the peer's entry point
(``--peer-task``), so its top level imports only the standard library; timing happens inside the
peer process and comes back as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "bench_envs.json"


# --------------------------------------------------------------------------- peer venvs


@dataclass(frozen=True)
class Peer:
    name: str
    requirements: tuple[str, ...]

    @property
    def venv(self) -> Path:
        return BENCH_DIR / f".venv-{self.name}"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


#: gym-sokoban 0.0.6 (the generator VAGEN calls) needs old gym and ``pkg_resources`` (setuptools < 81).
GYM_SOKOBAN = Peer("gym-sokoban", ("gym-sokoban==0.0.6", "gym==0.26.2", "setuptools<70", "numpy<2"))


def ensure_peer(peer: Peer) -> Path:
    """Create the peer's venv on first use (or when its requirements changed); return its python."""
    marker = peer.venv / ".requirements.json"
    wanted = json.dumps(list(peer.requirements))
    if peer.python.exists() and marker.exists() and marker.read_text() == wanted:
        return peer.python
    print(f"[bench] creating {peer.venv.relative_to(ROOT)} with {', '.join(peer.requirements)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(peer.venv)], check=True)
    subprocess.run(
        [str(peer.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *peer.requirements],
        check=True,
    )
    marker.write_text(wanted)
    return peer.python


def run_peer(peer: Peer, task: str, params: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """Run ``task`` of this file inside the peer's venv and return its JSON result."""
    python = ensure_peer(peer)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(
        [
            str(python),
            str(Path(__file__).resolve()),
            "--peer-task",
            task,
            "--peer-params",
            json.dumps(params),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(BENCH_DIR),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"peer task {task!r} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(
            f"peer task {task!r} printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- peer tasks (run in the peer venv)


def _peer_sokoban_generation(p: dict[str, Any]) -> dict[str, Any]:
    """gym-sokoban ``generate_room`` as its env's reset() calls it (retrying its RuntimeWarnings)."""
    import numpy as np
    from gym_sokoban.envs.room_utils import generate_room

    dim = tuple(p["dim_room"])
    steps = int(1.7 * (dim[0] + dim[1]))  # gym-sokoban's (and VAGEN's) num_gen_steps
    times, retries = [], 0
    budget = float(p.get("budget_s", float("inf")))
    start = time.perf_counter()
    for seed in range(p["levels"]):
        if times and time.perf_counter() - start > budget:
            break  # heavy-tailed at large sizes: stop between levels once the budget is spent
        random.seed(seed)
        np.random.seed(seed)
        t0 = time.perf_counter()
        while True:
            try:
                generate_room(dim=dim, num_steps=steps, num_boxes=p["num_boxes"])
                break
            except (RuntimeError, RuntimeWarning):
                retries += 1
        times.append(time.perf_counter() - t0)
    return {
        "levels": len(times),
        "s_per_level": sum(times) / len(times),
        "median_s": sorted(times)[len(times) // 2],
        "max_s": max(times),
        "retries": retries,
    }


def _peer_sokoban_step_render(p: dict[str, Any]) -> dict[str, Any]:
    """gym-sokoban ``step(action)``, which returns the rgb frame (16 px tiles)."""
    import numpy as np
    from gym_sokoban.envs.sokoban_env import SokobanEnv

    random.seed(0)
    np.random.seed(0)
    env = SokobanEnv(dim_room=tuple(p["dim_room"]), num_boxes=p["num_boxes"], max_steps=10**9, reset=False)
    obs = env.reset()
    rng = random.Random(0)
    for _ in range(20):  # warm-up
        env.step(rng.randint(1, 4))
    n = p["steps"]
    actions = [rng.randint(1, 4) for _ in range(n)]  # 1..4 = push/move up, down, left, right
    t0 = time.perf_counter()
    for a in actions:
        obs, _, _, _ = env.step(a)
    dt = time.perf_counter() - t0
    return {"steps": n, "s_per_step": dt / n, "image_shape": list(obs.shape)}


PEER_TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "sokoban_generation": _peer_sokoban_generation,
    "sokoban_step_render": _peer_sokoban_step_render,
}


# --------------------------------------------------------------------------- our side


def _record(name: str, ours: dict, peer: dict, ratio: float, goal: float | None, peer_name: str) -> dict:
    return {
        "name": name,
        "peer": peer_name,
        "ratio": ratio,
        "goal": goal,
        "goal_met": None if goal is None else bool(ratio >= goal),
        "ours": ours,
        "theirs": peer,
    }


def _ours_generation(dim: tuple[int, int], num_boxes: int, levels: int) -> dict[str, Any]:
    from atlasva.envs.sokoban import generate_level, solve_level

    t0 = time.perf_counter()
    made = [generate_level(seed, dim, num_boxes) for seed in range(levels)]
    dt = time.perf_counter() - t0
    # Every level solvable, with the optimal length the generator claims (checked outside the timing).
    for seed, level in enumerate(made):
        plan = solve_level(level.rows())
        assert plan is not None, f"level of seed {seed} is unsolvable"
        assert len(plan) == level.optimal_length, f"seed {seed}: solver {len(plan)} != {level.optimal_length}"
    lengths = [lv.optimal_length for lv in made]
    return {
        "levels": levels,
        "s_per_level": dt / levels,
        "all_solvable": True,
        "mean_optimal_length": sum(lengths) / levels,
        "max_optimal_length": max(lengths),
    }


def bench_sokoban_generation(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Level generation: ours (solvable, optimal length known) vs gym-sokoban's generate_room."""
    out = []
    configs = [
        # (label, dim, boxes, our levels, peer levels, peer time budget in s, goal)
        ("6x6, 1 box", (6, 6), 1, 300 if args.quick else 3000, 20 if args.quick else 200, 600.0, 300.0),
    ]
    if not args.quick:  # gym-sokoban's own default room; its generator needs ~a minute per level here
        configs.append(("10x10, 4 boxes, gym-sokoban's default", (10, 10), 4, 60, 8, args.peer_budget, None))
    for label, dim, boxes, n_ours, n_peer, budget, goal in configs:
        ours = _ours_generation(dim, boxes, n_ours)
        params = {"dim_room": list(dim), "num_boxes": boxes, "levels": n_peer, "budget_s": budget}
        theirs = run_peer(GYM_SOKOBAN, "sokoban_generation", params)
        ratio = theirs["s_per_level"] / ours["s_per_level"]
        out.append(_record(f"sokoban generation ({label})", ours, theirs, ratio, goal, "gym-sokoban"))
    return out


def _ours_step_render(tile_size: int, steps: int, core: bool) -> dict[str, Any]:
    """Our step with an rgb frame: the full text step (parse, execute, info, vision obs) or, with
    ``core``, just one primitive action plus ``render_rgb()``."""
    from atlasva import formats
    from atlasva.envs.sokoban import SokobanEnv

    env = SokobanEnv(tile_size=tile_size, obs_mode="vision")
    env.reset(seed=0)
    rng = random.Random(0)
    names = env.action_names
    texts = [formats.answer([a], env.format) for a in names]
    picks = [rng.randrange(4) for _ in range(steps)]
    total = 0.0
    frame = env.render_rgb()
    for i, k in enumerate(picks):
        t0 = time.perf_counter()
        if core:
            _, _, done = env._execute(names[k])
            frame = env.render_rgb()
        else:
            obs, _, done, _, _ = env.step(texts[k])
            frame = obs["images"][0]
        total += time.perf_counter() - t0
        if done:  # resets stay outside the timing
            env.reset(seed=i + 1)
    return {
        "steps": steps,
        "s_per_step": total / steps,
        "image_shape": list(frame.shape),
        "tile_size": tile_size,
    }


def bench_sokoban_step_render(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Step + rgb render, 6x6 with one box: at each tool's default size and at equal size."""
    n_ours, n_peer = (2000, 200) if args.quick else (20000, 2000)
    theirs = run_peer(
        GYM_SOKOBAN, "sokoban_step_render", {"dim_room": [6, 6], "num_boxes": 1, "steps": n_peer}
    )
    out = []
    cases = [
        ("default sizes: ours 168x168 vs theirs 96x96, full text step", 28, False, None),
        ("equal size 96x96, full text step", 16, False, 10.0),
        ("equal size 96x96, primitive step + render_rgb", 16, True, None),
    ]
    for label, tile, core, goal in cases:
        ours = _ours_step_render(tile, n_ours, core)
        ratio = theirs["s_per_step"] / ours["s_per_step"]
        out.append(_record(f"sokoban step+render ({label})", ours, theirs, ratio, goal, "gym-sokoban"))
    return out


def _frozenlake_ours(tile_size: int, steps: int) -> dict[str, Any]:
    """Our FrozenLake 8x8 full text step with a vision observation (parse, execute, info, frame)."""
    from atlasva import envs

    env = envs.make("frozenlake", size=8, tile_size=tile_size, obs_mode="vision", random_start_goal=False)
    env.reset(seed=0)
    rng = random.Random(0)
    texts = [f"<think>.</think><answer>{a}</answer>" for a in env.action_names]
    total, frame = 0.0, env.render_rgb()
    for i in range(steps):
        t0 = time.perf_counter()
        obs, _, term, trunc, _ = env.step(texts[rng.randrange(4)])
        frame = obs["images"][0]
        total += time.perf_counter() - t0
        if term or trunc:  # resets stay outside the timing
            env.reset(seed=i + 1)
    return {"steps": steps, "s_per_step": total / steps, "image_shape": list(frame.shape), "tile_size": tile_size}


def _frozenlake_gymnasium(steps: int) -> dict[str, Any]:
    """gymnasium's FrozenLake-v1 8x8 step + ``render()`` in ``rgb_array`` mode (pygame)."""
    try:
        import gymnasium as gym
        import pygame  # noqa: F401  (gymnasium's toy-text renderer needs it)
    except ImportError as exc:
        raise SystemExit(f"the FrozenLake peer needs gymnasium[toy-text] (pygame): {exc}") from None
    env = gym.make("FrozenLake-v1", map_name="8x8", is_slippery=False, render_mode="rgb_array")
    env.reset(seed=0)
    env.action_space.seed(0)
    frame = env.render()
    total = 0.0
    for _ in range(steps):
        a = env.action_space.sample()
        t0 = time.perf_counter()
        _, _, term, trunc, _ = env.step(a)
        frame = env.render()
        total += time.perf_counter() - t0
        if term or trunc:
            env.reset()
    env.close()
    return {"steps": steps, "s_per_step": total / steps, "image_shape": list(frame.shape)}


def bench_frozenlake_step_render(args: argparse.Namespace) -> list[dict[str, Any]]:
    """FrozenLake 8x8 step + rgb render vs gymnasium's rgb_array: default sizes and equal size."""
    n_ours, n_peer = (1000, 100) if args.quick else (10000, 1000)
    theirs = _frozenlake_gymnasium(n_peer)
    side = theirs["image_shape"][0]
    out = []
    for label, tile, goal in (
        (f"default sizes: ours 224x224 vs theirs {side}x{side}", 28, None),
        (f"equal size {side}x{side}", side // 8, 10.0),
    ):
        ours = _frozenlake_ours(tile, n_ours)
        ratio = theirs["s_per_step"] / ours["s_per_step"]
        out.append(_record(f"frozenlake step+render ({label})", ours, theirs, ratio, goal, "gymnasium FrozenLake"))
    return out


#: Every comparison, in run order; each takes the parsed args and returns result records.
COMPARISONS: list[Callable[[argparse.Namespace], list[dict[str, Any]]]] = [
    bench_sokoban_generation,
    bench_sokoban_step_render,
    bench_frozenlake_step_render,
]


def ratio_line(rec: dict[str, Any]) -> str:
    line = f"{rec['name']}: {rec['ratio']:.1f}x {rec['peer']}"
    if rec["goal"] is not None:
        line += f" (goal >= {rec['goal']:g}x: {'met' if rec['goal_met'] else 'NOT met'})"
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small samples (a smoke run, not figures to record)")
    ap.add_argument("--only", default="", help="run only comparisons whose function name contains this")
    ap.add_argument(
        "--peer-budget", type=float, default=240.0, help="seconds for the slow gym-sokoban 10x10 sample"
    )
    ap.add_argument(
        "--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS.relative_to(ROOT)})"
    )
    ap.add_argument("--peer-task", help=argparse.SUPPRESS)
    ap.add_argument("--peer-params", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.peer_task:  # we are the peer process
        print(json.dumps(PEER_TASKS[args.peer_task](json.loads(args.peer_params))))
        return 0

    sys.path.insert(0, str(ROOT))
    records: list[dict[str, Any]] = []
    for bench in COMPARISONS:
        if args.only and args.only not in bench.__name__:
            continue
        t0 = time.perf_counter()
        recs = bench(args)
        for rec in recs:
            print(ratio_line(rec), flush=True)
        print(f"[bench] {bench.__name__} took {time.perf_counter() - t0:.1f} s", flush=True)
        records.extend(recs)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": bool(args.quick),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "results": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
