"""Environment benchmarks: atlasva's envs against the tools VAGEN uses.

Run from the repository root::

    .venv/bin/python benchmarks/bench_envs.py            # every comparison
    .venv/bin/python benchmarks/bench_envs.py --only sokoban --quick

Each comparison is one function in ``COMPARISONS``; it returns result records and the script prints
one ratio line per record (``sokoban generation (6x6, 1 box, ...): 44.1x gym-sokoban``) and writes all
records to ``benchmarks/results/bench_envs.json`` (with ``--only``, replacing just the records of the
comparisons that ran). Ratios are measured in one run on one machine; they are figures to record,
not timed tests.

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


def _peer_bfs_length(room_fixed: Any, room_state: Any, max_depth: int) -> int | None:
    """Fewest primitive moves (pushes included) that solve a gym-sokoban room, or ``None`` beyond
    ``max_depth``: a plain breadth-first search over (player cell, box cells) states, no pruning.

    gym-sokoban's codes: ``room_fixed`` 0 wall, 1 floor, 2 target; ``room_state`` 3 box on target,
    4 box, 5 player.
    """
    h, w = room_fixed.shape
    fixed, state = room_fixed.ravel().tolist(), room_state.ravel().tolist()
    walls = {i for i, v in enumerate(fixed) if v == 0}
    targets = frozenset(i for i, v in enumerate(fixed) if v == 2)
    boxes = frozenset(i for i, v in enumerate(state) if v in (3, 4))
    player = state.index(5)
    if boxes == targets:
        return 0
    seen = {(player, boxes)}
    frontier = [(player, boxes)]
    for depth in range(1, max_depth + 1):
        nxt = []
        for pos, bxs in frontier:
            for d in (-w, w, -1, 1):  # up, down, left, right
                q = pos + d
                if q in walls:
                    continue
                if q in bxs:  # push: the cell behind the box must be free
                    b = q + d
                    if b in walls or b in bxs:
                        continue
                    bxs2 = (bxs - {q}) | {b}
                    if bxs2 == targets:
                        return depth
                else:
                    bxs2 = bxs
                st = (q, bxs2)
                if st not in seen:
                    seen.add(st)
                    nxt.append(st)
        if not nxt:
            return None  # unsolvable
        frontier = nxt
    return None


def _peer_sokoban_generation_vagen(p: dict[str, Any]) -> dict[str, Any]:
    """gym-sokoban as VAGEN's reset uses it: under a seed, ``generate_room`` then a BFS for the
    shortest solution length (depth cap 200); a room whose length is outside ``[min_len, max_len]``
    (or that ``generate_room`` rejects, or deeper than the cap) is redrawn under the next seed of a
    hash chain, up to ``max_tries``. Timed per produced level, redraws included."""
    import zlib

    import numpy as np
    from gym_sokoban.envs.room_utils import generate_room

    dim = tuple(p["dim_room"])
    steps = int(1.7 * (dim[0] + dim[1]))
    lo, hi = int(p["min_len"]), p.get("max_len")
    max_depth, max_tries = int(p.get("max_depth", 200)), int(p.get("max_tries", 10000))
    times, lengths, bfs_s = [], [], 0.0
    tries = length_redraws = gen_errors = depth_misses = 0
    budget = float(p.get("budget_s", float("inf")))
    start = time.perf_counter()
    for level_seed in range(p["levels"]):
        if times and time.perf_counter() - start > budget:
            break
        t0 = time.perf_counter()
        seed, length = level_seed, None
        for _ in range(max_tries):
            tries += 1
            random.seed(seed)
            np.random.seed(seed)
            try:
                room_fixed, room_state, _ = generate_room(dim=dim, num_steps=steps, num_boxes=p["num_boxes"])
            except (RuntimeError, RuntimeWarning):
                gen_errors += 1
            else:
                tb = time.perf_counter()
                length = _peer_bfs_length(room_fixed, room_state, max_depth)
                bfs_s += time.perf_counter() - tb
                if length is None:
                    depth_misses += 1
                elif lo <= length and (hi is None or length <= hi):
                    break
                else:
                    length_redraws += 1
                length = None
            # VAGEN: abs(hash(str(seed))) % 2**32, salted per process; crc32 is the same idea, reproducible.
            seed = zlib.crc32(str(seed).encode())
        if length is None:
            raise RuntimeError(f"no level in [{lo}, {hi}] after {max_tries} tries from seed {level_seed}")
        times.append(time.perf_counter() - t0)
        lengths.append(length)
    n = len(times)
    return {
        "levels": n,
        "s_per_level": sum(times) / n,
        "median_s": sorted(times)[n // 2],
        "max_s": max(times),
        "bfs_share": bfs_s / sum(times),
        "tries_per_level": tries / n,
        "length_redraws": length_redraws,
        "generate_room_errors": gen_errors,
        "depth_cap_misses": depth_misses,
        "mean_solution_length": sum(lengths) / n,
        "max_solution_length": max(lengths),
        "length_range": [lo, hi],
    }


PEER_TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "sokoban_generation": _peer_sokoban_generation,
    "sokoban_generation_vagen": _peer_sokoban_generation_vagen,
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


def _ours_generation(
    dim: tuple[int, int], num_boxes: int, levels: int, lo: int = 1, hi: int | None = None
) -> dict[str, Any]:
    from atlasva.envs.sokoban import generate_level, solve_level

    t0 = time.perf_counter()
    made = [generate_level(seed, dim, num_boxes, lo, hi) for seed in range(levels)]
    dt = time.perf_counter() - t0
    # Every level solvable, with the optimal length the generator claims (checked outside the timing).
    for seed, level in enumerate(made):
        plan = solve_level(level.rows())
        assert plan is not None, f"level of seed {seed} is unsolvable"
        assert len(plan) == level.optimal_length, f"seed {seed}: solver {len(plan)} != {level.optimal_length}"
        assert lo <= len(plan) and (hi is None or len(plan) <= hi), f"seed {seed}: length {len(plan)}"
    lengths = [lv.optimal_length for lv in made]
    return {
        "levels": levels,
        "s_per_level": dt / levels,
        "all_solvable": True,
        "length_range": [lo, hi],
        "mean_optimal_length": sum(lengths) / levels,
        "max_optimal_length": max(lengths),
    }


def bench_sokoban_generation(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Level generation, 6x6 with one box, against gym-sokoban two ways.

    * as VAGEN uses it (the comparison the >= 300x goal is for): ``generate_room`` + a BFS for the
      shortest solution length + redraw while the length is outside the range; ours is asked for the
      same range. Once with VAGEN's train range [1, 5], once unbounded (theirs then never redraws).
    * bare ``generate_room`` (no solution length), for reference; plus, unless ``--quick``, the bare
      generator at gym-sokoban's default 10x10 with 4 boxes.
    """
    dim, boxes = (6, 6), 1
    n_ours, n_peer = (300, 50) if args.quick else (3000, 500)
    base = {"dim_room": list(dim), "num_boxes": boxes, "levels": n_peer, "budget_s": 120.0}
    ours_any = _ours_generation(dim, boxes, n_ours)
    ours_1_5 = _ours_generation(dim, boxes, n_ours, 1, 5)
    vagen_1_5 = run_peer(GYM_SOKOBAN, "sokoban_generation_vagen", {**base, "min_len": 1, "max_len": 5})
    vagen_any = run_peer(GYM_SOKOBAN, "sokoban_generation_vagen", {**base, "min_len": 1, "max_len": None})
    bare = run_peer(GYM_SOKOBAN, "sokoban_generation", base)
    usage = "as VAGEN uses it: generate + BFS length"
    cases = [
        (f"6x6, 1 box, {usage}, range [1,5]", ours_1_5, vagen_1_5, 300.0),
        (f"6x6, 1 box, {usage}, range [1,inf): no redraws", ours_any, vagen_any, None),
        ("6x6, 1 box, bare generate_room: no solution length", ours_any, bare, None),
    ]
    out = []
    for label, o, t, goal in cases:
        ratio = t["s_per_level"] / o["s_per_level"]
        out.append(_record(f"sokoban generation ({label})", o, t, ratio, goal, "gym-sokoban"))
    if not args.quick:  # gym-sokoban's own default room; its generator needs ~a minute per level here
        ours = _ours_generation((10, 10), 4, 60)
        params = {"dim_room": [10, 10], "num_boxes": 4, "levels": 8, "budget_s": args.peer_budget}
        theirs = run_peer(GYM_SOKOBAN, "sokoban_generation", params)
        ratio = theirs["s_per_level"] / ours["s_per_level"]
        label = "10x10, 4 boxes, gym-sokoban's default, bare generate_room"
        out.append(_record(f"sokoban generation ({label})", ours, theirs, ratio, None, "gym-sokoban"))
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


def bench_navigation_render(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Navigation frames/s at 224 px vs MuJoCo offscreen rendering at the same size, on one core, and
    manipulation turns/s. Runs ``bench_nav.py`` in its own process (it pins itself to one core and must
    choose MuJoCo's GL backend before MuJoCo is imported)."""
    import re
    import subprocess

    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_nav.py"), "--frames", "300" if args.quick else "2000"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout

    def grab(pattern: str) -> float:
        m = re.search(pattern, out)
        if m is None:
            raise RuntimeError(f"bench_nav.py printed no line matching {pattern!r}:\n{out}")
        return float(m.group(1))

    nav = grab(r"navigation raycaster \d+px: ([\d.]+) frames/s")
    mj = grab(r"mujoco offscreen \d+px[^:]*: ([\d.]+) frames/s")
    turns = grab(r"manipulation .*: ([\d.]+) turns/s")
    rec = _record("navigation (224 px, one core)", {"frames_per_s": nav, "manipulation_turns_per_s": turns},
                  {"frames_per_s": mj}, nav / mj, 20.0, "MuJoCo offscreen")
    return [rec]


#: Every comparison, in run order; each takes the parsed args and returns result records.
COMPARISONS: list[Callable[[argparse.Namespace], list[dict[str, Any]]]] = [
    bench_sokoban_generation,
    bench_sokoban_step_render,
    bench_frozenlake_step_render,
    bench_navigation_render,
]


def ratio_line(rec: dict[str, Any]) -> str:
    line = f"{rec['name']}: {rec['ratio']:.1f}x {rec['peer']}"
    if rec["goal"] is not None:
        line += f" (goal >= {rec['goal']:g}x: {'met' if rec['goal_met'] else 'NOT met'})"
    return line


def _merge_records(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with every record of the kinds just run (same name up to `` (``) replaced by ``new``."""
    kinds = {rec["name"].split(" (")[0] for rec in new}
    merged: list[dict[str, Any]] = []
    for rec in old:
        if rec["name"].split(" (")[0] not in kinds:
            merged.append(rec)
        elif new:  # new records go where the first replaced one was
            merged.extend(new)
            new = []
    return merged + new


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
    command = " ".join([Path(sys.executable).name, *sys.argv])
    for rec in records:
        rec["command"], rec["quick"] = command, bool(args.quick)
    if args.only and args.out.exists():  # a partial run replaces only its own records in the file
        previous = json.loads(args.out.read_text())
        for rec in previous.get("results", []):
            rec.setdefault("command", previous.get("command"))
            rec.setdefault("quick", previous.get("quick"))
        records = _merge_records(previous.get("results", []), records)
    result = {
        "command": command,
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
