"""Memory ablation: tabular Q-learning on fresh FrozenLake and Sokoban levels, four arms.

Arms (same budget of primitive env steps, several seeds = several fresh test levels):

- ``none``       — no memory (no shaping);
- ``heuristics`` — the env's grid heuristics only (``MemoryConfig(learn_atlases=False)``);
- ``canonical``  — memory learned beforehand on *other* levels (goal-relative scope), frozen on the test level;
- ``instance``   — memory learned on the same level as the agent plays it (instance scope), updated every
  ``batch`` episodes (a new snapshot each time).

The learner is ε-greedy tabular Q-learning over the env's structured state (player, boxes). It drives
the real envs: every primitive step is ``env.step(formats.answer([a], "no_think"))`` (one action per
turn), and the reward it learns from is ``r_env + F`` with ``F = snapshot.shaping(meta, info["cells"],
terminated, gamma)`` — the rollout's contract. The memory is fed real Episode records.

Printed per env: episodes to first success, success rate vs steps, ``speedup: N.Nx`` (steps the
no-memory arm needs to reach its final success rate — the mean over the last 10 % of the budget — over
the steps the best learned-memory arm needs to reach the same rate, moving average) and
``vs heuristics: N.Nx`` (the same ratio against the heuristics-only arm); then the cost of a memory
update per episode step and of an injection per observation, as ratios to one env step + render.

    .venv/bin/python benchmarks/memory_ablation.py            # full (a few minutes on one core)
    .venv/bin/python benchmarks/memory_ablation.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlasva import formats  # noqa: E402
from atlasva.envs import make  # noqa: E402
from atlasva.memory import MemoryConfig, SkillMemory, episode_meta  # noqa: E402
from atlasva.rollout.episode import Episode, Turn  # noqa: E402

UPDATE_BATCH = 16  # episodes per memory update in the cost measurement
REPEATS = 5  # cost passes; the median is reported
ARMS = ("none", "heuristics", "canonical", "instance")
ENVS: dict[str, dict[str, Any]] = {
    "frozenlake": {"config": {"size": 8}, "max_turns": 60, "budget": 6000},
    # slippery lake: a move goes sideways with probability 0.2, so cells next to holes are risky in a
    # way the env's hazard list (the holes themselves) does not say
    "frozenlake-slippery": {"env": "frozenlake", "config": {"size": 8, "slip_prob": 0.2}, "max_turns": 60,
                            "budget": 6000},
    "sokoban": {"config": {"dim_room": (6, 6), "num_boxes": 1, "min_solution_length": 8}, "max_turns": 60, "budget": 12000},
}


@dataclass
class QConfig:
    alpha: float = 0.5
    gamma: float = 0.95
    epsilon: float = 0.1
    batch: int = 4  # episodes per memory update (instance arm) = one rollout batch


@dataclass
class RunLog:
    ends: list[int] = field(default_factory=list)  # cumulative primitive steps at each episode end
    success: list[bool] = field(default_factory=list)
    update_s: float = 0.0
    update_steps: int = 0


def state_key(state: dict[str, Any]) -> tuple:
    return (tuple(state["player"]), tuple(tuple(b) for b in state.get("boxes", [])))


def run_episode(env, seed: int, q: dict, qc: QConfig, rng: np.random.Generator, snap, steps_left: int,
                gamma_turn: float) -> Episode:
    """One ε-greedy Q-learning episode on the real env; returns its Episode record."""
    obs, info = env.reset(seed=seed)
    heur = env.grid_heuristics()
    meta = episode_meta(env.env_name, info["level_hash"], heur, seed=seed)
    ep = Episode(env_name=env.env_name, seed=seed, level_hash=info["level_hash"], start_cell=info["cells"][0],
                 heuristics=heur)
    n_act = len(env.action_names)
    s = state_key(info["state"])
    term = trunc = False
    while not (term or trunc) and steps_left > 0:
        qs = q.setdefault(s, np.zeros(n_act))
        if rng.random() < qc.epsilon:
            a = int(rng.integers(n_act))
        else:
            best = np.flatnonzero(qs == qs.max())
            a = int(best[rng.integers(len(best))])
        text = formats.answer([env.action_names[a]], "no_think")
        obs, r, term, trunc, info = env.step(text)
        steps_left -= 1
        f = snap.shaping(meta, info["cells"], term, gamma_turn) if snap is not None else 0.0
        r_env = info["reward_components"]["env"]
        s2 = state_key(info["state"])
        target = r_env + f + (0.0 if term else qc.gamma * q.setdefault(s2, np.zeros(n_act)).max())
        qs[a] += qc.alpha * (target - qs[a])
        ep.turns.append(Turn(prompt_text="", response_text=text, actions=info["actions"], cells=info["cells"],
                             metrics=info["metrics"], terminated=term, truncated=trunc))
        s = s2
    if info["metrics"].get("success", False) if ep.turns else False:
        ep.finish("success")
    elif term:
        ep.finish("failure", info.get("failure") or "failed")
    else:
        ep.finish("truncated", "max_turns")
    return ep


def make_env(name: str, spec: dict[str, Any], obs_mode: str = "text"):
    return make(spec.get("env", name), format="no_think", max_actions_per_turn=1, max_turns=spec["max_turns"], obs_mode=obs_mode,
                **spec["config"])


def learn(env, seed: int, budget: int, qc: QConfig, rng: np.random.Generator, memory: SkillMemory | None,
          update: bool) -> RunLog:
    log = RunLog()
    q: dict = {}
    used = 0
    batch: list[Episode] = []
    snap = memory.snapshot() if memory is not None else None
    while used < budget:
        ep = run_episode(env, seed, q, qc, rng, snap, budget - used, qc.gamma)
        used += ep.n_turns
        log.ends.append(used)
        log.success.append(ep.success)
        batch.append(ep)
        if memory is not None and update and len(batch) >= qc.batch:
            t = time.perf_counter()
            memory.update(batch)
            log.update_s += time.perf_counter() - t
            log.update_steps += sum(e.n_turns for e in batch)
            snap = memory.snapshot()
            batch = []
    return log


def curve(log: RunLog, grid: np.ndarray, window: int) -> np.ndarray:
    """Moving-average success (last ``window`` episodes) as a function of primitive steps."""
    succ = np.asarray(log.success, dtype=float)
    ends = np.asarray(log.ends)
    out = np.zeros(len(grid))
    for i, g in enumerate(grid):
        k = int(np.searchsorted(ends, g, side="right"))
        out[i] = succ[max(0, k - window) : k].mean() if k else 0.0
    return out


def steps_to(c: np.ndarray, grid: np.ndarray, target: float) -> float:
    hit = np.flatnonzero(c >= target - 1e-12)
    return float(grid[hit[0]]) if len(hit) else float("inf")


# The learned arms credit a terminal failure to the cells it was entered from (0.5, 0.25 on the one and
# two cells before the hole): the hole itself is already full danger from the env's hazard list, so
# without a trace the learned danger could never say anything the heuristics do not.
LEARNED_DEFAULTS: dict[str, Any] = {"failure_trace": 0.5}
LEARNED_OVERRIDES: dict[str, Any] = {}


def arm_config(arm: str) -> MemoryConfig | None:
    common = {"exemplars": False, "skills": False}
    if arm in ("canonical", "instance"):
        common.update(LEARNED_DEFAULTS)
        common.update(LEARNED_OVERRIDES)
    if arm == "none":
        return None
    if arm == "heuristics":
        return MemoryConfig(learn_atlases=False, **common)
    if arm == "canonical":
        return MemoryConfig(scope="canonical", **common)
    return MemoryConfig(scope="instance", **common)


def pretrain_canonical(name: str, spec: dict[str, Any], seeds: list[int], budget: int, qc: QConfig) -> SkillMemory:
    """Canonical memory from *other* levels: Q-learners (with the memory's own shaping) on training levels."""
    mem = SkillMemory(arm_config("canonical"))
    env = make_env(name, spec)
    for s in seeds:
        learn(env, s, budget, qc, np.random.default_rng(s), mem, update=True)
    return mem


def perf(name: str, spec: dict[str, Any], seed: int, n_episodes: int) -> dict[str, float]:
    """Cost ratios in one run: env step+render (vision), memory update per episode step, injection per obs."""
    env = make_env(name, spec, "vision")
    rng = np.random.default_rng(seed)
    eps: list[Episode] = []
    observations = []
    step_s, steps = 0.0, 0
    for k in range(n_episodes):
        obs, info = env.reset(seed=seed)
        ep = Episode(env_name=env.env_name, seed=seed, level_hash=info["level_hash"], start_cell=info["cells"][0],
                     heuristics=env.grid_heuristics(), group_id=f"g{k // 4}")
        term = trunc = False
        while not (term or trunc):
            a = env.action_names[int(rng.integers(len(env.action_names)))]
            text = formats.answer([a], "no_think")
            t = time.perf_counter()
            new_obs, _, term, trunc, info = env.step(text)  # the vision obs includes the render
            step_s += time.perf_counter() - t
            steps += 1
            ep.turns.append(Turn(prompt_text=obs["text"], actions=info["actions"], cells=info["cells"],
                                 metrics=info["metrics"], terminated=term, truncated=trunc, frames=list(obs["images"])))
            observations.append(obs)
            obs = new_obs
        ep.finish("success" if info["metrics"]["success"] else ("failure" if term else "truncated"), info.get("failure"))
        eps.append(ep)
    t_env = step_s / steps
    n_upd = sum(e.n_turns for e in eps)
    # each cost is the median of REPEATS identical passes (a fresh memory / a fresh snapshot each time):
    # one pass takes tens of milliseconds, and on a shared CPU a single pass is at the mercy of the load
    passes = []
    for _ in range(REPEATS):
        mem = SkillMemory(MemoryConfig())
        t = time.perf_counter()
        for i in range(0, len(eps), UPDATE_BATCH):  # a rollout batch: 4 groups of 4 episodes
            mem.update(eps[i : i + UPDATE_BATCH])
        passes.append((time.perf_counter() - t) / n_upd)
    t_update = float(np.median(passes))
    meta = episode_meta(env.env_name, eps[0].level_hash, eps[0].heuristics, cell=eps[0].start_cell)
    sample = observations[:: max(1, len(observations) // 200)]
    passes = []
    for _ in range(REPEATS):
        snap = mem.snapshot()
        snap.inject(meta, observations[0], 0)  # warm the per-level cache (one per level per batch)
        t = time.perf_counter()
        for o in sample:
            text, images = snap.inject(meta, o, 0)
            assert text.count("<image>") == len(images)
        passes.append((time.perf_counter() - t) / len(sample))
    t_inject = float(np.median(passes))
    return {"env_step_render_us": t_env * 1e6, "update_per_step_us": t_update * 1e6, "inject_per_obs_us": t_inject * 1e6,
            "update_ratio": t_update / t_env, "inject_ratio": t_inject / t_env, "images_injected": len(images) - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="fresh test levels (= seeds) per env")
    ap.add_argument("--train-levels", type=int, default=8, help="other levels the canonical memory learns from")
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--envs", default="frozenlake,frozenlake-slippery,sokoban")
    ap.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    ap.add_argument("--costs-only", action="store_true",
                    help="only the cost measurement (update per episode step, injection per observation)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "memory_ablation.png"))
    ap.add_argument("--panel", default=str(ROOT / "docs" / "memory_panel.png"))
    ap.add_argument("--memory", nargs="*", default=[], metavar="KEY=VALUE",
                    help="MemoryConfig overrides for the learned arms, e.g. ineffective_weight=0")
    args = ap.parse_args()
    for kv in args.memory:
        k, _, v = kv.partition("=")
        LEARNED_OVERRIDES[k] = json.loads(v) if v not in ("True", "False") else v == "True"
    if args.quick:
        args.seeds, args.train_levels, args.budget_scale = 2, 2, 0.15
    if args.costs_only:
        costs_only(args.envs.split(","), 32 if args.quick else 96)
        return
    qc = QConfig()
    results: dict[str, Any] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    grids: dict[str, np.ndarray] = {}
    for name in args.envs.split(","):
        spec = ENVS[name]
        budget = int(spec["budget"] * args.budget_scale)
        grid = np.linspace(budget / 100, budget, 100)
        test_seeds = [100_000 + 17 * i for i in range(args.seeds)]
        train_seeds = [1 + 31 * i for i in range(args.train_levels)]
        t0 = time.perf_counter()
        canonical = pretrain_canonical(name, spec, train_seeds, budget // 2, qc)
        env = make_env(name, spec)
        logs: dict[str, list[RunLog]] = {a: [] for a in ARMS}
        for seed in test_seeds:
            for arm in ARMS:
                cfg = arm_config(arm)
                if arm == "canonical":
                    mem = canonical  # frozen on the test level: learned from other levels only
                else:
                    mem = SkillMemory(cfg) if cfg is not None else None
                rng = np.random.default_rng([seed, ARMS.index(arm)])
                logs[arm].append(learn(env, seed, budget, qc, rng, mem, update=arm == "instance"))
        window = 10
        curves[name] = {a: np.mean([curve(lg, grid, window) for lg in logs[a]], axis=0) for a in ARMS}
        grids[name] = grid
        target = float(curves[name]["none"][grid >= 0.9 * budget].mean())
        reach = {a: steps_to(curves[name][a], grid, target) for a in ARMS}
        best_arm = min(("canonical", "instance"), key=lambda a: reach[a])
        first = {a: float(np.mean([next((i + 1 for i, s in enumerate(lg.success) if s), len(lg.success) + 1)
                                   for lg in logs[a]])) for a in ARMS}
        final = {a: float(curves[name][a][grid >= 0.9 * budget].mean()) for a in ARMS}
        speedup = reach["none"] / reach[best_arm] if target > 0 else float("nan")
        vs_h = reach["heuristics"] / reach[best_arm] if target > 0 else float("nan")
        p = perf(name, spec, test_seeds[0], 32 if args.quick else 96)
        upd = logs["instance"]
        results[name] = {
            "budget": budget, "seeds": len(test_seeds), "target_rate": target, "steps_to_target": reach,
            "episodes_to_first_success": first, "final_success": final, "best_learned_arm": best_arm,
            "speedup": speedup, "vs_heuristics": vs_h, "perf": p,
            "instance_update_us_per_step_during_learning": 1e6 * sum(lg.update_s for lg in upd) / max(1, sum(lg.update_steps for lg in upd)),
            "wall_s": time.perf_counter() - t0,
        }
        print(f"\n== {name}: {len(test_seeds)} fresh levels, budget {budget} primitive steps per arm, "
              f"canonical memory from {len(train_seeds)} other levels ==")
        print(f"{'arm':<11} {'ep. to 1st success':>18} {'steps to target':>16} {'final success':>14}   success rate at 25/50/75/100% of budget")
        for a in ARMS:
            c = curves[name][a]
            marks = " ".join(f"{c[min(len(c) - 1, int(len(c) * q) - 1)]:.2f}" for q in (0.25, 0.5, 0.75, 1.0))
            rs = f"{reach[a]:.0f}" if np.isfinite(reach[a]) else "never"
            print(f"{a:<11} {first[a]:>18.1f} {rs:>16} {final[a]:>14.2f}   {marks}")
        print(f"target (no-memory final rate) = {target:.2f}; best learned arm: {best_arm}")
        print(f"speedup: {speedup:.1f}x")
        print(f"vs heuristics: {vs_h:.1f}x")
        print(f"update cost: {p['update_ratio']:.3f}x of an env step+render per episode step (batches of {UPDATE_BATCH} episodes) "
              f"({p['update_per_step_us']:.1f} us vs {p['env_step_render_us']:.1f} us)")
        print(f"injection cost: {p['inject_ratio']:.3f}x of an env step+render per observation "
              f"({p['inject_per_obs_us']:.1f} us, {p['images_injected']} images injected)")
        envs = args.envs.split(",")
        if name == ("frozenlake-slippery" if "frozenlake-slippery" in envs else envs[0]):
            # an evolved memory: the canonical one plus instance learning on one test level (with frames)
            panel_mem = SkillMemory(MemoryConfig(skill_min_support=10, **LEARNED_DEFAULTS))
            venv = make_env(name, spec, "vision")
            learn_panel(venv, test_seeds[0], qc, panel_mem, budget // 2)
            panel_mem.render_png(args.panel)
    plot(curves, grids, results, args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
    print(f"\nplot: {args.out}\npanel: {args.panel}")


def costs_only(envs: list[str], n_episodes: int) -> dict[str, dict[str, float]]:
    """Just the cost ratios (seconds, not minutes): the same ``perf`` the full run reports."""
    out = {}
    for name in envs:
        p = out[name] = perf(name, ENVS[name], 100_000, n_episodes)
        print(f"{name:<20} env step+render {p['env_step_render_us']:7.1f} us | "
              f"update {p['update_ratio']:.3f}x ({p['update_per_step_us']:.1f} us per episode step, "
              f"batches of {UPDATE_BATCH}) | injection {p['inject_ratio']:.3f}x ({p['inject_per_obs_us']:.1f} us, "
              f"{p['images_injected']} images injected)")
    return out


def learn_panel(env, seed: int, qc: QConfig, mem: SkillMemory, budget: int) -> None:
    """Instance learning with frames kept (vision obs), so the panel shows exemplars too."""
    rng = np.random.default_rng(seed)
    q: dict = {}
    used, batch = 0, []
    snap = mem.snapshot()
    while used < budget:
        ep = run_episode(env, seed, q, qc, rng, snap, budget - used, qc.gamma)
        # re-run the same actions to attach the frames the agent saw (deterministic env)
        obs, _ = env.reset(seed=seed)
        for turn in ep.turns:
            turn.frames = list(obs["images"])
            obs, *_ = env.step(turn.response_text)
        used += ep.n_turns
        batch.append(ep)
        if len(batch) >= qc.batch:
            mem.update(batch)
            snap, batch = mem.snapshot(), []


def plot(curves, grids, results, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (name, cs) in zip(axes[0], curves.items()):
        for a in ARMS:
            ax.plot(grids[name], cs[a], label=a)
        r = results[name]
        ax.axhline(r["target_rate"], color="grey", ls=":", lw=1)
        ax.set_title(f"{name}: speedup {r['speedup']:.1f}x, vs heuristics {r['vs_heuristics']:.1f}x")
        ax.set_xlabel("primitive env steps")
        ax.set_ylabel("success rate (moving avg, 10 episodes)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower right")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
