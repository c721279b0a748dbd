"""Memory ablation: cheap learners on fresh Sokoban, slippery FrozenLake, navigation and manipulation
levels, four memory arms, the same budget per arm.

Arms (same budget of primitive env steps; 10 fresh test levels × 3 learner seeds per env by default):

- ``none``       — no memory (no shaping);
- ``heuristics`` — the env's grid heuristics only (``MemoryConfig(learn_atlases=False)``; on Sokoban
  this includes the box layer's push-distance heuristic);
- ``canonical``  — memory learned beforehand on *other* levels (goal-relative scope), frozen on the test level;
- ``instance``   — memory learned on the test level while the agent plays it (instance scope), updated
  every ``batch`` episodes (a new snapshot each time);
- ``oracle``     — not a memory: the upper bound of what any potential can do for the learner, Φ(s) =
  0.1·V*(s) with V* the optimal value (γ^(d−1) for the fewest d actions to success on Sokoban and
  navigation; value iteration on the slippery lake; none for manipulation): the exact value's shape, a
  reference for what a potential over the full state can do — not a strict bound (on navigation the
  heuristic potential learns faster than it).

Learners (one primitive action per turn, driving the real envs through ``env.step(formats.answer([a],
"no_think"))``; the reward they learn from is ``r_env + F`` with ``F = snapshot.shaping(meta,
info["cells"], terminated, gamma)`` — the rollout's contract; the memory is fed real Episode records):

- Sokoban, slippery FrozenLake, navigation: ε-greedy **tabular Q-learning** over the env's structured
  state (player + boxes; cell; cell + heading — navigation uses the four moves and two turns);
- manipulation (``align_two_cubes``): a **scripted-noisy learner** — it follows the task's script (pick
  the green cube, place it right of the red one) but sees positions through a per-run calibration error
  of 3.5–5 cm, and learns by tabular Q-learning which of 25 target corrections (a 5×5 grid, 1.5 cm
  apart) to apply in each phase. The memory's grasp atlas (2 cm cells) records where picks and places
  succeeded or failed.

Printed per env: final success (mean over the episodes that end in the last 10 % of the budget) per arm
with a 95 % bootstrap interval over the levels × seeds, steps to target, episodes to first success, the
learned arms' difference to ``heuristics`` (paired by level and seed) with its 95 % interval,
``speedup: N.Nx`` (steps the ``none`` arm needs to reach its final rate ÷ steps the best learned arm
needs to reach it, on the mean success curve) and ``vs heuristics: N.Nx`` (steps the ``heuristics`` arm
needs to reach *its* final rate ÷ steps the best learned arm needs to reach that rate); then the cost of a
memory update per episode step and of an injection per observation, as ratios to one env step + render.

    .venv/bin/python benchmarks/memory_ablation.py              # full (about 75 min at one process on a loaded 2-core box)
    .venv/bin/python benchmarks/memory_ablation.py --quick      # smoke run
    .venv/bin/python benchmarks/memory_ablation.py --costs-only # the cost ratios alone
    .venv/bin/python benchmarks/memory_ablation.py --panel-only # docs/memory_panel.png alone
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlasva import formats  # noqa: E402
from atlasva.envs import make  # noqa: E402
from atlasva.memory import MemoryConfig, SkillMemory, episode_meta  # noqa: E402
from atlasva.rollout.episode import Episode, Turn  # noqa: E402

UPDATE_BATCH = 16  # episodes per memory update in the cost measurement
REPEATS = 5  # cost passes; the median is reported
ARMS = ("none", "heuristics", "canonical", "instance")
LEARNED = ("canonical", "instance")
ORACLE_ENVS = ("sokoban", "frozenlake-slippery", "frozenlake", "navigation")
TEST_SEED0, TRAIN_SEED0 = 100_000, 1  # test levels 100000 + 17 i; canonical training levels 1 + 31 i (disjoint)
ENVS: dict[str, dict[str, Any]] = {
    "sokoban": {"config": {"dim_room": (6, 6), "num_boxes": 1, "min_solution_length": 8}, "max_turns": 60,
                "budget": 12000},
    # slippery lake: a move goes sideways with probability 0.2, so cells next to holes are risky in a
    # way the env's hazard list (the holes themselves) does not say
    "frozenlake-slippery": {"env": "frozenlake", "config": {"size": 8, "slip_prob": 0.2}, "max_turns": 60,
                            "budget": 6000},
    "navigation": {"config": {"size": 12, "width": 64}, "max_turns": 60, "budget": 4000,
                   "actions": ("move_forward", "move_backward", "move_left", "move_right", "turn_left", "turn_right")},
    # grid 25: 2 cm table cells; speed 2: the gripper moves 2 m/s (half the simulated steps of the default 0.8)
    "manipulation": {"config": {"task": "align_two_cubes", "grid": 25, "width": 96, "speed": 2.0}, "max_turns": 6,
                     "budget": 600,
                     "learner": "corrections"},
    "frozenlake": {"config": {"size": 8}, "max_turns": 60, "budget": 6000},  # not in the default run
}
DEFAULT_ENVS = "sokoban,frozenlake-slippery,navigation,manipulation"


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


# --------------------------------------------------------------------------- learners


class GridLearner:
    """ε-greedy tabular Q-learning over the env's structured state and its (grid or navigation) actions."""

    def __init__(self, env, spec: dict[str, Any], rng: np.random.Generator) -> None:
        self.actions = tuple(spec.get("actions", env.action_names))
        self.rng = rng

    @staticmethod
    def key(state: dict[str, Any]) -> tuple:
        if "agent" in state:  # navigation
            return (tuple(state["agent"]["cell"]), state["agent"]["heading"])
        return (tuple(state["player"]), tuple(tuple(b) for b in state.get("boxes", [])))

    def text(self, a: int, state: dict[str, Any]) -> str:
        return formats.answer([self.actions[a]], "no_think")


CUBE_HALF = 0.02
ALIGN_DX = 0.045  # the green cube's centre sits this far right of the red one when aligned
CORRECTIONS = [(0.015 * (i // 5 - 2), 0.015 * (i % 5 - 2)) for i in range(25)]


class CorrectionLearner:
    """The scripted-noisy manipulation learner: script + per-run calibration error + learned correction."""

    actions = tuple(range(len(CORRECTIONS)))

    def __init__(self, env, spec: dict[str, Any], rng: np.random.Generator) -> None:
        self.rng = rng
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.035, 0.05)
        self.bias = np.array([radius * np.cos(angle), radius * np.sin(angle)])  # fixed for the whole run

    @staticmethod
    def key(state: dict[str, Any]) -> tuple:
        return (state["gripper"]["holding"] is not None, state["stage"])

    def text(self, a: int, state: dict[str, Any]) -> str:
        pos = {o["name"]: np.asarray(o["position"][:2]) + self.bias for o in state["objects"]}  # as perceived
        dx, dy = CORRECTIONS[a]
        if state["gripper"]["holding"] is None:
            (x, y), verb = pos["green cube"], "pick"
        else:
            (x, y), verb = pos["red cube"] + [ALIGN_DX, 0.0], "place"
        x, y = float(np.clip(x + dx, -0.25, 0.25)), float(np.clip(y + dy, -0.25, 0.25))
        return formats.answer([f"{verb}({x:.3f}, {y:.3f}, {CUBE_HALF:.3f})"], "no_think")


LEARNERS = {"q": GridLearner, "corrections": CorrectionLearner}


def make_env(name: str, spec: dict[str, Any], obs_mode: str = "text"):
    return make(spec.get("env", name), format="no_think", max_actions_per_turn=1, max_turns=spec["max_turns"],
                obs_mode=obs_mode, **spec["config"])


def make_learner(env, spec: dict[str, Any], rng: np.random.Generator):
    return LEARNERS[spec.get("learner", "q")](env, spec, rng)


class Oracle:
    """Φ(s) = 0.1 × V*(s) of the state the env is in (cached per level and state): the benchmark's upper
    bound on shaping, not a memory."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma
        self.cache: dict[Any, Any] = {}

    def potential(self, env, state_key: tuple) -> float:
        key = (env.level_hash, state_key)
        v = self.cache.get(key)
        if v is None:
            if env.env_name == "frozenlake":  # value iteration with the slips, at the learner's γ
                q = self.cache.get(("q", env.level_hash))
                if q is None:
                    q = self.cache[("q", env.level_hash)] = env._q_values(self.gamma)
                v = float(q[tuple(env.pos)].max())
            else:  # deterministic: the fewest primitive actions d to success, reward γ^(d−1) away
                try:
                    plan = env.solve()
                except RuntimeError:  # unreachable from here
                    plan = []
                v = self.gamma ** (len(plan) - 1) if plan else 0.0
            self.cache[key] = v
        return 0.1 * v


def run_episode(env, seed: int, learner, q: dict, qc: QConfig, snap, steps_left: int, frames: bool = False,
                oracle: Oracle | None = None) -> Episode:
    """One ε-greedy Q-learning episode on the real env; returns its Episode record (events attached)."""
    obs, info = env.reset(seed=seed)
    if getattr(env, "slip_prob", 0) > 0:
        # FrozenLake re-seeds its slips at every reset (reproducible episodes); draw a fresh slip stream per
        # episode so that repeated episodes of one level are independent, as in gymnasium
        env._slip_rng = np.random.default_rng(learner.rng.integers(2**63))
    heur = info["heuristics"]
    meta = episode_meta(env.env_name, info["level_hash"], heur, info["cells"][0], seed)
    ep = Episode(env_name=env.env_name, seed=seed, level_hash=info["level_hash"], start_cell=info["cells"][0],
                 heuristics=heur, start_state=info["state"])
    n_act = len(learner.actions)
    state = info["state"]
    s = learner.key(state)
    rng = learner.rng
    phi = oracle.potential(env, s) if oracle is not None else 0.0
    term = trunc = False
    while not (term or trunc) and steps_left > 0:
        qs = q.setdefault(s, np.zeros(n_act))
        if rng.random() < qc.epsilon:
            a = int(rng.integers(n_act))
        else:
            best = np.flatnonzero(qs == qs.max())
            a = int(best[rng.integers(len(best))])
        text = learner.text(a, state)
        shown = list(obs["images"]) if frames else []
        obs, _, term, trunc, info = env.step(text)
        steps_left -= 1
        f = snap.shaping(meta, info["cells"], term, qc.gamma) if snap is not None else 0.0
        meta["cell"] = info["cells"][-1]
        state = info["state"]
        s2 = learner.key(state)
        if oracle is not None:
            phi2 = 0.0 if term else oracle.potential(env, s2)
            f, phi = qc.gamma * phi2 - phi, phi2
        target = info["reward_components"]["env"] + f + (0.0 if term else qc.gamma * q.setdefault(s2, np.zeros(n_act)).max())
        qs[a] += qc.alpha * (target - qs[a])
        turn = Turn(prompt_text="", response_text=text, actions=info["actions"], cells=info["cells"],
                    metrics=info["metrics"], state=state, terminated=term, truncated=trunc, events=info["events"],
                    frames=shown)
        ep.turns.append(turn)
        s = s2
    if ep.turns and info["metrics"].get("success", False):
        ep.finish("success")
    elif term:
        ep.finish("failure", info.get("failure") or "failed")
    else:
        ep.finish("truncated", "max_turns")
    return ep


def learn(env, spec: dict[str, Any], seed: int, budget: int, qc: QConfig, rng: np.random.Generator,
          memory: SkillMemory | None, update: bool, frames: bool = False, oracle: Oracle | None = None) -> RunLog:
    log = RunLog()
    q: dict = {}
    learner = make_learner(env, spec, rng)
    used = 0
    batch: list[Episode] = []
    snap = memory.snapshot() if memory is not None else None
    while used < budget:
        ep = run_episode(env, seed, learner, q, qc, snap, budget - used, frames, oracle)
        used += ep.n_turns
        if used >= budget and not (ep.turns[-1].terminated or ep.turns[-1].truncated):
            break  # cut short by the budget, not finished: not an outcome
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


# --------------------------------------------------------------------------- arms and runs


MEMORY_OVERRIDES: dict[str, Any] = {}  # --memory KEY=VALUE: options for every memory arm (ablations)


def arm_config(arm: str) -> MemoryConfig | None:
    common: dict[str, Any] = {"exemplars": False, "skills": False}  # only the atlases act on a tabular learner
    common.update(MEMORY_OVERRIDES)
    if arm == "none":
        return None
    if arm == "heuristics":
        return MemoryConfig(learn_atlases=False, **common)
    return MemoryConfig(scope=arm, **common)


def pretrain_canonical(name: str, spec: dict[str, Any], seeds: list[int], budget: int, qc: QConfig) -> SkillMemory:
    """Canonical memory from *other* levels: learners (with the memory's own shaping) on training levels."""
    mem = SkillMemory(arm_config("canonical"))
    env = make_env(name, spec)
    for s in seeds:
        learn(env, spec, s, budget, qc, np.random.default_rng([s, 7]), mem, update=True)
    env.close()
    return mem


_WORKER_ENVS: dict[str, Any] = {}


def one_run(job: tuple) -> tuple:
    """(env name, level seed, learner seed index, arm) -> (those, RunLog): one learner on one level."""
    name, spec, level, k, arm, budget, qc, canonical, overrides = job
    MEMORY_OVERRIDES.clear()
    MEMORY_OVERRIDES.update(overrides)
    env = _WORKER_ENVS.get(name)
    if env is None:
        env = _WORKER_ENVS[name] = make_env(name, spec)
    cfg = arm_config(arm) if arm != "oracle" else None
    mem = canonical if arm == "canonical" else (SkillMemory(cfg) if cfg is not None else None)
    # the learner's stream depends on (level, seed), not on the arm: paired runs see the same calibration
    # error (manipulation) and start from the same random numbers
    rng = np.random.default_rng([level, k])
    oracle = Oracle(qc.gamma) if arm == "oracle" else None
    return (name, level, k, arm), learn(env, spec, level, budget, qc, rng, mem, update=arm == "instance", oracle=oracle)


# --------------------------------------------------------------------------- statistics


def curve(log: RunLog, grid: np.ndarray, window: int) -> np.ndarray:
    """Moving-average success (last ``window`` episodes) as a function of primitive steps."""
    succ = np.asarray(log.success, dtype=float)
    ends = np.asarray(log.ends)
    out = np.zeros(len(grid))
    for i, g in enumerate(grid):
        k = int(np.searchsorted(ends, g, side="right"))
        out[i] = succ[max(0, k - window) : k].mean() if k else 0.0
    return out


def final_success(log: RunLog, budget: int) -> float:
    """Mean success of the episodes that end in the last 10 % of the budget (the last episode if none)."""
    ends = np.asarray(log.ends)
    late = ends > 0.9 * budget
    succ = np.asarray(log.success, dtype=float)
    return float(succ[late].mean()) if late.any() else float(succ[-1])


def steps_to(c: np.ndarray, grid: np.ndarray, target: float) -> float:
    hit = np.flatnonzero(c >= target - 1e-12)
    return float(grid[hit[0]]) if len(hit) else float("inf")


def bootstrap_ci(values: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean over the runs (levels × seeds)."""
    v = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(len(v), size=(n, len(v)))
    means = v[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def ratio_ci(curves_h: np.ndarray, curves_l: np.ndarray, grid: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of ``vs heuristics`` (runs resampled in pairs, curves re-averaged)."""
    rng = np.random.default_rng(seed)
    tail = grid >= 0.9 * grid[-1]
    out = []
    for _ in range(n):
        idx = rng.integers(len(curves_h), size=len(curves_h))
        ch, cl = curves_h[idx].mean(0), curves_l[idx].mean(0)
        target = float(ch[tail].mean())
        sh, sl = steps_to(ch, grid, target), steps_to(cl, grid, target)
        out.append(sh / sl if math.isfinite(sl) else 0.0)
    return float(np.quantile(out, 0.025)), float(np.quantile(out, 0.975))


def summarize(name: str, spec: dict[str, Any], logs: dict[str, list[RunLog]], budget: int) -> dict[str, Any]:
    arms = list(logs)
    compared = [a for a in arms if a in LEARNED or a == "oracle"]  # set against the heuristics arm
    grid = np.linspace(budget / 100, budget, 100)
    window = 10
    per_run = {a: np.stack([curve(lg, grid, window) for lg in logs[a]]) for a in arms}
    mean = {a: per_run[a].mean(0) for a in arms}
    tail = grid >= 0.9 * budget
    final = {a: np.asarray([final_success(lg, budget) for lg in logs[a]]) for a in arms}
    auc = {a: per_run[a].mean(1) for a in arms}  # mean success over the whole budget, per run
    target = float(mean["none"][tail].mean())
    reach = {a: steps_to(mean[a], grid, target) for a in arms}
    target_h = float(mean["heuristics"][tail].mean())
    reach_h = {a: steps_to(mean[a], grid, target_h) for a in arms}
    vs_h = {a: (reach_h["heuristics"] / reach_h[a] if math.isfinite(reach_h[a]) else 0.0) for a in compared}
    best = max(LEARNED, key=lambda a: (vs_h[a], final[a].mean()))
    first = {a: float(np.mean([next((i + 1 for i, s in enumerate(lg.success) if s), len(lg.success) + 1)
                               for lg in logs[a]])) for a in arms}
    diff = {a: final[a] - final["heuristics"] for a in compared}
    diff_auc = {a: auc[a] - auc["heuristics"] for a in compared}
    return {
        "budget": budget, "runs": len(logs["none"]), "arms": arms, "grid": grid.tolist(),
        "mean_curve": {a: mean[a].tolist() for a in arms},
        "final_success": {a: float(final[a].mean()) for a in arms},
        "final_success_ci95": {a: bootstrap_ci(final[a]) for a in arms},
        "final_success_per_run": {a: final[a].tolist() for a in arms},
        "diff_vs_heuristics": {a: float(diff[a].mean()) for a in compared},
        "diff_vs_heuristics_ci95": {a: bootstrap_ci(diff[a]) for a in compared},
        "mean_success_over_budget": {a: float(auc[a].mean()) for a in arms},
        "auc_diff_vs_heuristics": {a: float(diff_auc[a].mean()) for a in compared},
        "auc_diff_vs_heuristics_ci95": {a: bootstrap_ci(diff_auc[a]) for a in compared},
        "target_rate": target, "steps_to_target": reach, "heuristics_final_rate": target_h,
        "steps_to_heuristics_final": reach_h, "vs_heuristics_by_arm": vs_h,
        "vs_heuristics_ci95": ratio_ci(per_run["heuristics"], per_run[best], grid),
        "episodes_to_first_success": first, "best_learned_arm": best,
        "speedup": reach["none"] / reach[best] if target > 0 and math.isfinite(reach[best]) else float("nan"),
        "vs_heuristics": vs_h[best],
    }


# --------------------------------------------------------------------------- costs


def perf(name: str, spec: dict[str, Any], seed: int, n_episodes: int) -> dict[str, float]:
    """Cost ratios in one run: env step+render (vision), memory update per episode step, injection per obs."""
    env = make_env(name, spec, "vision")
    rng = np.random.default_rng(seed)
    learner = make_learner(env, spec, rng)
    eps: list[Episode] = []
    observations = []
    step_s, steps = 0.0, 0
    for k in range(n_episodes):
        obs, info = env.reset(seed=seed)
        ep = Episode(env_name=env.env_name, seed=seed, level_hash=info["level_hash"], start_cell=info["cells"][0],
                     heuristics=info["heuristics"], start_state=info["state"], group_id=f"g{k // 4}")
        state = info["state"]
        term = trunc = False
        while not (term or trunc):
            text = learner.text(int(rng.integers(len(learner.actions))), state)
            t = time.perf_counter()
            new_obs, _, term, trunc, info = env.step(text)  # the vision obs includes the render
            step_s += time.perf_counter() - t
            steps += 1
            turn = Turn(prompt_text=obs["text"], actions=info["actions"], cells=info["cells"], metrics=info["metrics"],
                        state=info["state"], terminated=term, truncated=trunc, events=info["events"],
                        frames=list(obs["images"]))
            ep.turns.append(turn)
            observations.append(obs)
            obs, state = new_obs, info["state"]
        ep.finish("success" if info["metrics"]["success"] else ("failure" if term else "truncated"), info.get("failure"))
        eps.append(ep)
    env.close()
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


def costs_only(envs: list[str], n_episodes: int) -> dict[str, dict[str, float]]:
    """Just the cost ratios (seconds, not minutes): the same ``perf`` the full run reports."""
    out = {}
    for name in envs:
        p = out[name] = perf(name, ENVS[name], TEST_SEED0, n_episodes)
        print(f"{name:<20} env step+render {p['env_step_render_us']:8.1f} us | "
              f"update {p['update_ratio']:.3f}x ({p['update_per_step_us']:.1f} us per episode step, "
              f"batches of {UPDATE_BATCH}) | injection {p['inject_ratio']:.3f}x ({p['inject_per_obs_us']:.1f} us, "
              f"{p['images_injected']} images injected)")
    return out


# --------------------------------------------------------------------------- output


def report(name: str, r: dict[str, Any], n_levels: int, n_seeds: int, n_train: int, learner: str) -> None:
    print(f"\n== {name}: {n_levels} fresh levels x {n_seeds} seeds, budget {r['budget']} primitive steps per arm, "
          f"canonical memory from {n_train} other levels, learner: {learner} ==")
    print(f"{'arm':<11} {'final success [95% CI]':>24} {'mean over budget':>17} {'steps to target':>16} "
          f"{'ep. to 1st success':>19}   mean success at 25/50/75/100% of budget")
    for a in r["arms"]:
        c = np.asarray(r["mean_curve"][a])
        marks = " ".join(f"{c[min(len(c) - 1, int(len(c) * q) - 1)]:.2f}" for q in (0.25, 0.5, 0.75, 1.0))
        lo, hi = r["final_success_ci95"][a]
        rs = f"{r['steps_to_target'][a]:.0f}" if math.isfinite(r["steps_to_target"][a]) else "never"
        fs = f"{r['final_success'][a]:.2f} [{lo:.2f}, {hi:.2f}]"
        print(f"{a:<11} {fs:>24} {r['mean_success_over_budget'][a]:>17.2f} {rs:>16} "
              f"{r['episodes_to_first_success'][a]:>19.1f}   {marks}")
    compared = list(r["diff_vs_heuristics"])
    for key, what in (("diff_vs_heuristics", "final success"), ("auc_diff_vs_heuristics", "mean success over the budget")):
        diffs = "; ".join(f"{a} {r[key][a]:+.3f} [{r[key + '_ci95'][a][0]:+.3f}, {r[key + '_ci95'][a][1]:+.3f}]"
                          for a in compared)
        print(f"{what} minus heuristics (paired over {r['runs']} runs, 95% CI): {diffs}")
    by_arm = ", ".join(f"{a} {r['vs_heuristics_by_arm'][a]:.1f}x" for a in compared)
    print(f"target (none's final rate) = {r['target_rate']:.2f}; heuristics' final rate = {r['heuristics_final_rate']:.2f}; "
          f"vs heuristics by arm: {by_arm}; best learned arm: {r['best_learned_arm']}")
    print(f"speedup: {r['speedup']:.1f}x")
    lo, hi = r["vs_heuristics_ci95"]
    print(f"vs heuristics: {r['vs_heuristics']:.1f}x  (95% CI [{lo:.1f}, {hi:.1f}])")
    best = r["best_learned_arm"]
    met = r["diff_vs_heuristics_ci95"][best][0] > 0 and r["vs_heuristics"] >= 1.5
    worse = [a for a in LEARNED if r["diff_vs_heuristics_ci95"][a][1] < 0]
    print(f"goal (final-success difference CI above 0 and vs heuristics >= 1.5x): {'met' if met else 'not met'}; "
          f"learned arms worse than heuristics beyond noise: {', '.join(worse) if worse else 'none'}")
    p = r["perf"]
    print(f"update cost: {p['update_ratio']:.3f}x of an env step+render per episode step (batches of {UPDATE_BATCH} episodes) "
          f"({p['update_per_step_us']:.1f} us vs {p['env_step_render_us']:.1f} us)")
    print(f"injection cost: {p['inject_ratio']:.3f}x of an env step+render per observation "
          f"({p['inject_per_obs_us']:.1f} us, {p['images_injected']} images injected)")


def plot(results: dict[str, Any], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for a in r["arms"]:
            ax.plot(r["grid"], r["mean_curve"][a], label=a, ls="--" if a == "oracle" else "-")
        ax.axhline(r["heuristics_final_rate"], color="grey", ls=":", lw=1)
        ax.set_title(f"{name}: speedup {r['speedup']:.1f}x, vs heuristics {r['vs_heuristics']:.1f}x", fontsize=10)
        ax.set_xlabel("primitive env steps")
        ax.set_ylabel(f"success (moving avg of 10 episodes, mean of {r['runs']} runs)")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower right")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def render_panel(envs: list[str], qc: QConfig, path: str, scale: float) -> None:
    """One evolved memory over the envs (default config, frames kept) drawn as docs/memory_panel.png."""
    mem = SkillMemory(MemoryConfig(skill_min_support=10))
    for name in envs:
        spec = ENVS[name]
        env = make_env(name, spec, "vision")
        learn(env, spec, TEST_SEED0, int(spec["budget"] * scale) // 2, qc, np.random.default_rng(0), mem, update=True,
              frames=True)
        env.close()
    mem.render_png(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=int, default=10, help="fresh test levels per env")
    ap.add_argument("--seeds", type=int, default=3, help="learner seeds per test level")
    ap.add_argument("--train-levels", type=int, default=8, help="other levels the canonical memory learns from")
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--envs", default=DEFAULT_ENVS)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes for the runs")
    ap.add_argument("--no-oracle", dest="oracle", action="store_false", help="leave out the oracle-potential arm")
    ap.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    ap.add_argument("--costs-only", action="store_true",
                    help="only the cost measurement (update per episode step, injection per observation)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory_ablation.png"))
    ap.add_argument("--panel", default=str(ROOT / "docs" / "memory_panel.png"), help="'' to skip the panel")
    ap.add_argument("--panel-only", action="store_true", help="only draw the panel of a memory evolved on --envs")
    ap.add_argument("--memory", nargs="*", default=[], metavar="KEY=VALUE",
                    help="MemoryConfig overrides for every memory arm, e.g. box_weight=1.0")
    args = ap.parse_args()
    for kv in args.memory:
        k, _, v = kv.partition("=")
        MEMORY_OVERRIDES[k] = json.loads(v) if v not in ("True", "False") else v == "True"
    MemoryConfig(**MEMORY_OVERRIDES)  # a bad override fails here, naming the key
    envs = args.envs.split(",")
    unknown = [e for e in envs if e not in ENVS]
    if unknown:
        raise SystemExit(f"unknown env(s) {unknown}; accepted: {sorted(ENVS)}")
    if args.quick:
        args.levels, args.seeds, args.train_levels, args.budget_scale = 2, 1, 2, 0.15
    if args.costs_only:
        costs_only(envs, 32 if args.quick else 96)
        return
    qc = QConfig()
    if args.panel_only:
        render_panel(envs, qc, args.panel, args.budget_scale)
        print(f"panel: {args.panel}")
        return
    results: dict[str, Any] = {}
    for name in envs:
        spec = ENVS[name]
        budget = int(spec["budget"] * args.budget_scale)
        test_levels = [TEST_SEED0 + 17 * i for i in range(args.levels)]
        train_levels = [TRAIN_SEED0 + 31 * i for i in range(args.train_levels)]
        t0 = time.perf_counter()
        canonical = pretrain_canonical(name, spec, train_levels, budget // 2, qc)
        arms = ARMS + (("oracle",) if args.oracle and name in ORACLE_ENVS else ())
        jobs = [(name, spec, lv, k, arm, budget, qc, canonical if arm == "canonical" else None, dict(MEMORY_OVERRIDES))
                for lv in test_levels for k in range(args.seeds) for arm in arms]
        logs: dict[str, list[RunLog]] = {a: [] for a in arms}
        bar = tqdm(total=len(jobs), desc=f"{name} runs", file=sys.stderr)
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                done = []
                for res in pool.map(one_run, jobs, chunksize=1):
                    done.append(res)
                    bar.update()
        else:
            done = []
            for j in jobs:
                done.append(one_run(j))
                bar.update()
        bar.close()
        for (_, _, _, arm), log in done:  # in job order: runs are paired by (level, seed) across arms
            logs[arm].append(log)
        r = summarize(name, spec, logs, budget)
        r["perf"] = perf(name, spec, test_levels[0], 32 if args.quick else 96)
        upd = logs["instance"]
        r["instance_update_us_per_step_during_learning"] = 1e6 * sum(lg.update_s for lg in upd) / max(
            1, sum(lg.update_steps for lg in upd))
        r["levels"] = {"test": test_levels, "train": train_levels, "seeds": args.seeds, "overlap": len(set(test_levels) & set(train_levels))}
        r["wall_s"] = time.perf_counter() - t0
        r["memory_overrides"] = dict(MEMORY_OVERRIDES)
        results[name] = r
        learner = "scripted-noisy (tabular Q over 25 target corrections)" if spec.get("learner") == "corrections" \
            else "tabular Q-learning"
        report(name, r, args.levels, args.seeds, args.train_levels, learner)
        sys.stdout.flush()
    plot(results, args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
    print(f"\nplot: {args.out}")
    if args.panel:
        render_panel(envs, qc, args.panel, args.budget_scale)
        print(f"panel: {args.panel}")


if __name__ == "__main__":
    main()
