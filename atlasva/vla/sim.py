"""Meta-World for AtlasVLA: scripted-expert demos -> LeRobot dataset -> chunked BC -> closed-loop eval.

Meta-World (``metaworld``, MuJoCo 3.3) ships its assets and a scripted expert per task
(``metaworld.policies.ENV_POLICY_MAP``). Each episode seed fixes the task's random initial
configuration (goal / object position) through the env's seeded ``rand_vec``. Frames come from the
shared :class:`atlasva.sim.render.OffscreenRenderer`, and only when the policy is queried.

Actions are Meta-World's 4-D ``[dx, dy, dz, gripper]`` in [-1, 1]; proprioception is the hand
position and gripper opening (``obs[:4]``). Each frame also records the simulator's object and goal
positions (``observation.environment_state``, LeRobot's name for privileged state): never a policy
input, only the target of the optional auxiliary loss (``train.aux_weight``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atlasva.envs.base import level_hash
from atlasva.envs.registry import scan_levels
from atlasva.sim.render import OffscreenRenderer, configure_headless
from atlasva.vla.config import VLAConfig
from atlasva.vla.data import (
    ChunkData,
    LeRobotDataset,
    LeRobotWriter,
    Normalizer,
    compute_stats,
    hwc_shape,
    libero_hdf5_files,
    load_lerobot_column,
    load_training_data,
)
from atlasva.vla.parallel import ordered_map

IMAGE_KEY = "observation.image"  # one camera; several cameras: observation.images.<camera> (LeRobot's naming)
STATE_KEY = "observation.state"
ENV_STATE_KEY = "observation.environment_state"
ENV_STATE_NAMES = ["object_x", "object_y", "object_z", "goal_x", "goal_y", "goal_z"]
ACTION_KEY = "action"
#: one JSON line per recorded episode: {"task", "seed", "level_hash"} (the levels a dataset trains on)
LEVELS_FILE = "meta/atlasva_levels.jsonl"


def image_keys(cameras: Sequence[str]) -> list[str]:
    """Dataset keys of the camera frames: ``observation.image`` for one camera, else one key per camera."""
    if not cameras:
        raise ValueError("sim.cameras is empty; give at least one camera, e.g. [corner2]")
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"sim.cameras lists a camera twice: {list(cameras)}")
    return [IMAGE_KEY] if len(cameras) == 1 else [f"observation.images.{c}" for c in cameras]


class MetaWorldTask:
    """One Meta-World task with seeded resets, its scripted expert and one offscreen renderer per camera.

    Several cameras give the policy several views of one moment, which the VGGT-style aggregator
    relates through its global attention — a single fixed view cannot tell how far away a floating
    goal is (reach-v3's goal varies in depth along the camera ray)."""

    def __init__(self, task: str, image_size: int = 128, cameras: Sequence[str] | str = ("corner2",),
                 flip_vertical: bool = True, max_steps: int = 150) -> None:
        self.task = task
        self.env = _metaworld_env(task, max_steps)
        from metaworld.policies import ENV_POLICY_MAP

        self.expert = ENV_POLICY_MAP[task]()
        self.max_steps = max_steps
        self.cameras = [cameras] if isinstance(cameras, str) else list(cameras)
        image_keys(self.cameras)  # validates the list
        self.renderers = [OffscreenRenderer(self.env.model, image_size, image_size, c, flip_vertical) for c in self.cameras]
        self.obs: np.ndarray | None = None
        self.level_hash = ""
        #: Meta-World's own ``info["obj_to_target"]`` after the last step (reach-v3: hand to goal; drawer-open-v3:
        #: handle to its open position; pick-place-v3: puck to target), None before the first step
        self.obj_to_target: float | None = None

    def reset(self, seed: int) -> np.ndarray:
        self.obs = _reset_metaworld(self.env, seed)
        self.level_hash = metaworld_level_hash(self.task, self.obs)
        self.obj_to_target = None
        return self.obs

    def state(self) -> np.ndarray:
        assert self.obs is not None, "call reset() first"
        return self.obs[:4].astype(np.float32)

    def env_state(self) -> np.ndarray:
        """The first object's position and the goal (``obs[4:7]``, ``obs[-3:]``): reach-v3's goal and its
        (unused) puck, drawer-open-v3's handle and open position, pick-place's puck and target."""
        assert self.obs is not None, "call reset() first"
        return np.concatenate([self.obs[4:7], self.obs[-3:]]).astype(np.float32)

    def image(self) -> np.ndarray:
        """The first camera's frame, uint8 H×W×3."""
        return self.renderers[0].render(self.env.data)

    def images(self) -> np.ndarray:
        """Every camera's frame, uint8 [S, H, W, 3] (S = len(cameras))."""
        return np.stack([r.render(self.env.data) for r in self.renderers])

    def expert_action(self) -> np.ndarray:
        assert self.obs is not None, "call reset() first"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Constant(s) may be too high": the env clips anyway
            return np.clip(self.expert.get_action(self.obs), -1.0, 1.0).astype(np.float32)

    def step(self, action: np.ndarray) -> bool:
        """Apply one action; returns success."""
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if action.shape != (4,):
            raise ValueError(f"Meta-World actions are 4-D [dx, dy, dz, gripper], got shape {action.shape}")
        self.obs, _, _, _, info = self.env.step(action)
        if "obj_to_target" in info:
            self.obj_to_target = float(info["obj_to_target"])
        return bool(info["success"])

    def close(self) -> None:
        for r in self.renderers:
            r.close()
        self.env.close()


def _metaworld_env(task: str, max_steps: int) -> Any:
    """A goal-observable Meta-World v3 env whose resets draw the goal / object placement from the seed."""
    configure_headless()
    try:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    except ImportError as exc:
        raise ImportError("Meta-World is not installed: pip install 'atlasva[sim]' (mujoco==3.3.0, metaworld)") from exc
    key = f"{task}-goal-observable"
    if key not in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
        names = sorted(k.removesuffix("-goal-observable") for k in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE)
        raise ValueError(f"unknown Meta-World task {task!r}; e.g. {names[:6]} …")
    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key](seed=0)
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    env.max_path_length = max(env.max_path_length, max_steps + 1)
    return env


def _reset_metaworld(env: Any, seed: int) -> np.ndarray:
    import mujoco

    env.seed(int(seed))
    env.reset()
    # Meta-World's reset writes the new goal site and object bodies into the *model*
    # (site_pos / body_pos) after its last forward pass, so the world poses the renderer draws from
    # still show the previous episode until the first step. Recompute them: the first frame must
    # show this episode's goal and drawer, and the first observation must agree with it.
    mujoco.mj_forward(env.model, env.data)
    env._prev_obs = env._get_curr_obs_combined_no_goal()
    return env._get_obs()


def metaworld_level_hash(task: str, obs: np.ndarray) -> str:
    """A Meta-World episode's level is its initial state: the task with the hand, first object and goal
    positions to the millimetre (what the seed's ``rand_vec`` places)."""
    pos = np.round(np.concatenate([obs[:3], obs[4:7], obs[-3:]]).astype(np.float64), 3) + 0.0  # no -0.000
    return level_hash(f"{task} " + " ".join(f"{v:.3f}" for v in pos))


def metaworld_levels(task: str, split: str, n: int, seed_start: int, validation_share: float) -> list[tuple[int, str]]:
    """The first ``n`` distinct levels of ``split`` (``train`` | ``validation``) among seeds ``seed_start``,
    ``seed_start + 1``, …: collect records the train split, eval plays the validation split."""
    if not 0.0 < validation_share < 1.0:
        raise ValueError(f"sim.validation_share must be in (0, 1), got {validation_share}")
    env = _metaworld_env(task, 1)
    try:
        return scan_levels(lambda seed: metaworld_level_hash(task, _reset_metaworld(env, seed)),
                           range(seed_start, seed_start + 10**7), split, n, validation_share, name=task)
    finally:
        env.close()


def read_dataset_levels(root: str | Path) -> list[dict[str, Any]] | None:
    """The levels a dataset recorded by :func:`collect` trains on, or None for a dataset without the record."""
    path = Path(root) / LEVELS_FILE
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def instruction_of(cfg: VLAConfig, task: str) -> str:
    if task not in cfg.sim.instructions:
        raise ValueError(f"sim.instructions has no instruction for task {task!r}; it has {sorted(cfg.sim.instructions)}")
    return str(cfg.sim.instructions[task])


# ---------------------------------------------------------------------------------------------- collect
_WORKER_SIMS: dict[tuple[Any, ...], MetaWorldTask] = {}


def _record_episode(job: tuple[str, int, int, tuple[str, ...], bool, int, float]) -> dict[str, Any] | None:
    """One noisy scripted-expert episode as arrays ({"images": [T, S, H, W, 3], "state", "env_state", "action"}),
    or None when the expert failed. Runs in the parent or in a collect worker, which keeps one
    simulator per task alive between episodes."""
    task, seed, size, cameras, flip, max_steps, noise = job
    key = (task, size, cameras, flip, max_steps)
    sim = _WORKER_SIMS.get(key)
    if sim is None:
        sim = _WORKER_SIMS[key] = MetaWorldTask(task, size, cameras, flip, max_steps)
    rng = np.random.default_rng([seed, 7])  # per episode: the same data whatever the number of workers
    sim.reset(seed)
    images, states, env_states, actions = [], [], [], []
    for _ in range(max_steps):
        images.append(sim.images())
        states.append(sim.state())
        env_states.append(sim.env_state())
        label = sim.expert_action()
        actions.append(label)
        executed = label + noise * rng.standard_normal(4).astype(np.float32)
        if sim.step(executed):
            return {"images": np.stack(images), "state": np.stack(states), "env_state": np.stack(env_states),
                    "action": np.stack(actions), "level_hash": sim.level_hash}
    return None


def _close_worker_sims() -> None:
    while _WORKER_SIMS:
        _WORKER_SIMS.popitem()[1].close()


def _per_task(cfg: VLAConfig, by_task: Mapping[str, Any], key: str, default: Any, cast: Callable[[Any], Any],
              minimum: float, what: str) -> dict[str, Any]:
    """One value per ``sim.tasks`` entry: ``by_task`` (the config's ``key``) over ``default``, at least ``minimum``."""
    unknown = sorted(set(by_task) - set(cfg.sim.tasks))
    if unknown:
        raise ValueError(f"{key} names tasks not in sim.tasks: {unknown}; sim.tasks is {cfg.sim.tasks}")
    values = {task: cast(by_task.get(task, default)) for task in cfg.sim.tasks}
    for task, value in values.items():
        if not value >= minimum:  # also refuses NaN
            raise ValueError(f"{what} for {task} must be ≥ {minimum}, got {value}")
    return values


def demo_counts(cfg: VLAConfig) -> dict[str, int]:
    """How many demos ``collect`` records per task (train-split levels from seed_start upwards)."""
    return _per_task(cfg, cfg.collect.episodes_by_task, "collect.episodes_by_task", cfg.collect.episodes_per_task,
                     int, 1, "the number of demos")


def demo_noise(cfg: VLAConfig) -> dict[str, float]:
    """The executed-action noise ``collect`` uses per task (``collect.action_noise_by_task`` over ``action_noise``)."""
    return _per_task(cfg, cfg.collect.action_noise_by_task, "collect.action_noise_by_task", cfg.collect.action_noise,
                     float, 0, "the action noise")


def collect(cfg: VLAConfig) -> dict[str, Any]:
    """Record scripted-expert demos into a LeRobot v2.1 dataset (images in parquet).

    ``collect.workers`` processes render and simulate episodes in parallel (rendering is most of the
    cost); the dataset is the same whatever their number — episodes are written in seed order."""
    from atlasva.vla import libero

    if cfg.sim.suite != "metaworld" and not libero.is_libero(cfg.sim.suite):
        raise ValueError(f"sim.suite {cfg.sim.suite!r} is not supported; use 'metaworld' or a LIBERO suite "
                         f"({', '.join(libero.SUITES)})")
    if cfg.collect.workers < 1:
        raise ValueError(f"collect.workers must be ≥ 1, got {cfg.collect.workers}")
    root = Path(cfg.collect.dataset)
    if (root / "meta" / "info.json").exists():
        if not cfg.collect.overwrite:
            _progress(f"dataset {root} exists; reusing it (collect.overwrite=true to re-record)")
            return json.loads((root / "meta" / "info.json").read_text())
        shutil.rmtree(root)
    if libero.is_libero(cfg.sim.suite):
        return libero.collect(cfg)
    counts, noise = demo_counts(cfg), demo_noise(cfg)  # all fail before anything is recorded
    instructions = {task: instruction_of(cfg, task) for task in cfg.sim.tasks}
    size = cfg.sim.image_size
    keys = image_keys(cfg.sim.cameras)
    features = {
        **{k: {"dtype": "image", "shape": [size, size, 3], "names": ["height", "width", "channels"]} for k in keys},
        STATE_KEY: {"dtype": "float32", "shape": [4], "names": ["hand_x", "hand_y", "hand_z", "gripper"]},
        ENV_STATE_KEY: {"dtype": "float32", "shape": [len(ENV_STATE_NAMES)], "names": ENV_STATE_NAMES},
        ACTION_KEY: {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]},
    }
    writer = LeRobotWriter(root, fps=80, features=features, robot_type="sawyer", version=cfg.collect.lerobot_version)
    t0 = time.time()
    # demos only on train-split levels, so that eval's validation-split levels are never trained on
    levels = {task: metaworld_levels(task, "train", counts[task], cfg.collect.seed_start, cfg.sim.validation_share)
              for task in cfg.sim.tasks}
    jobs = [(task, seed, size, tuple(cfg.sim.cameras), cfg.sim.flip_vertical, cfg.sim.max_steps,
             noise[task]) for task in cfg.sim.tasks for seed, _ in levels[task]]
    planned = {(task, seed): h for task in cfg.sim.tasks for seed, h in levels[task]}
    stats = {task: {"kept": 0, "expert_failed": 0} for task in cfg.sim.tasks}
    recorded: list[dict[str, Any]] = []
    done = dict.fromkeys(cfg.sim.tasks, 0)
    results = ordered_map(_record_episode, jobs, cfg.collect.workers)
    try:
        for job, episode in zip(jobs, results):
            task, seed = job[0], job[1]
            if episode is None:
                stats[task]["expert_failed"] += 1
            else:
                if episode["level_hash"] != planned[task, seed]:  # the recorded episode is not the level planned
                    raise RuntimeError(f"{task} seed {seed} played level {episode['level_hash']}, "
                                       f"planned {planned[task, seed]}: resets are not deterministic")
                frames = {k: episode["images"][:, v] for v, k in enumerate(keys)}
                writer.add_episode({**frames, STATE_KEY: episode["state"], ENV_STATE_KEY: episode["env_state"],
                                    ACTION_KEY: episode["action"]}, instructions[task])
                recorded.append({"task": task, "seed": seed, "level_hash": episode["level_hash"]})
                stats[task]["kept"] += 1
            done[task] += 1
            k = done[task]
            if k % 10 == 0 or k == counts[task]:
                _progress(f"collect {task}: {k}/{counts[task]} episodes ({time.time() - t0:.0f}s)")
    finally:
        results.close()  # stops the worker processes, if any
        _close_worker_sims()
    (root / LEVELS_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / LEVELS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recorded))  # before info.json marks it done
    writer.finalize()
    info = json.loads((root / "meta" / "info.json").read_text())
    _progress(f"collected {info['total_episodes']} episodes, {info['total_frames']} frames into {root} "
              f"in {time.time() - t0:.0f}s ({stats})")
    return info


# ---------------------------------------------------------------------------------------------- train
# eval settings go into the training run's folder; worker counts do not change the data; the AtomVLA
# world model and post-training come after SFT and have run folders of their own
NOT_IDENTITY = ("eval", "collect.workers", "atom.worldmodel", "atom.posttrain")


def run_config(cfg: VLAConfig) -> dict[str, Any]:
    """The part of the config that identifies a training run (``runs.run_identity``: no ``run.*``, no eval
    settings, no worker counts)."""
    from atlasva.config import to_dict
    from atlasva.runs import run_identity

    return run_identity(to_dict(cfg), NOT_IDENTITY)


def training_image_keys(cfg: VLAConfig) -> list[str]:
    """The dataset columns fed to the model, one per camera: ``data.image_keys`` or derived from sim.cameras
    (LIBERO cameras map to LeRobot's LIBERO column names)."""
    from atlasva.vla.libero import CAMERA_KEYS, is_libero

    if cfg.data.image_keys:
        if len(cfg.data.image_keys) != len(cfg.sim.cameras):
            raise ValueError(f"data.image_keys {list(cfg.data.image_keys)} must name one column per sim.cameras entry "
                             f"{list(cfg.sim.cameras)}, in the same order")
        return list(cfg.data.image_keys)
    if is_libero(cfg.sim.suite):
        unknown = [c for c in cfg.sim.cameras if c not in CAMERA_KEYS]
        if unknown:
            raise ValueError(f"LIBERO cameras are {list(CAMERA_KEYS)}; sim.cameras has {unknown}")
        return [CAMERA_KEYS[c] for c in cfg.sim.cameras]
    return image_keys(cfg.sim.cameras)


def dataset_image_size(cfg: VLAConfig, keys: Sequence[str]) -> int:
    """The frames' size on disk (eval renders at this size and resizes as training did)."""
    path = Path(cfg.data.path or cfg.collect.dataset)
    if (path / "meta" / "info.json").exists():
        feature = LeRobotDataset(path).features[keys[0]]
        return int(hwc_shape(feature)[0])
    files = libero_hdf5_files(path)
    if files:
        import h5py

        with h5py.File(files[0], "r") as f:
            demo = next(k for k in f["data"] if k.startswith("demo_"))
            return int(f["data"][demo]["obs/agentview_rgb"].shape[1])
    return cfg.sim.image_size


def _augment(x: Any, shift: int, gen: Any) -> Any:
    import torch
    import torch.nn.functional as F

    if shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
    ox = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    oy = torch.randint(0, 2 * shift + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)[None])  # [B, H]
    cols = (ox[:, None] + torch.arange(w)[None])  # [B, W]
    idx_b = torch.arange(b)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _optim_tensors(opt: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    tensors: dict[str, Any] = {}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim/{pid}/{k}"] = v if hasattr(v, "shape") else np.asarray(v)
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _restore_optim(opt: Any, tensors: dict[str, Any], groups: list[dict[str, Any]]) -> None:
    import torch

    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, pid, k = key.split("/", 2)
            state.setdefault(int(pid), {})[k] = torch.as_tensor(v)
    opt.load_state_dict({"state": state, "param_groups": groups})


def _param_groups(model: Any, lr: float, keypoint_lr: float) -> list[dict[str, Any]]:
    """AdamW groups: the keypoint stem, its projection (and the auxiliary head when it reads the keypoints) at
    ``keypoint_lr`` (0 = ``lr``), the rest at ``lr``.
    ``lr_scale`` (group lr / ``lr``) lets the one schedule drive both. The stem is a small CNN trained from
    scratch; at the transformer's lr it needs ~3x the steps to leave the mean goal (benchmarks/README.md, VLA)."""
    if keypoint_lr < 0:
        raise ValueError(f"train.keypoint_lr must be ≥ 0 (0 = train.lr), got {keypoint_lr}")
    fast: list[Any] = []
    if model.keypoint_encoder is not None and keypoint_lr:
        parts = [model.keypoint_encoder, model.keypoint_proj]
        if model.geometry.aux_dim and model.geometry.aux_source == "keypoints":
            parts.append(model.aux_head)  # the stem's own read-out, as in the goal probe
        fast = [p for m in parts for p in m.parameters() if p.requires_grad]
    ids = {id(p) for p in fast}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if fast:
        groups.append({"params": fast, "lr_scale": keypoint_lr / lr})
    return groups


def train(cfg: VLAConfig) -> Path:
    import torch

    from atlasva.runs import RunFolder
    from atlasva.vla.model import build_model
    from atlasva.vla.vggt_weights import load_vggt_weights, load_vision_weights

    torch.set_num_threads(max(1, cfg.train.num_threads))
    geometry = cfg.model.geometry()
    keys = training_image_keys(cfg)
    if cfg.model.views is None:  # unset: one view per camera
        geometry = dataclasses.replace(geometry, views=len(keys))
    data_image_size = dataset_image_size(cfg, keys)
    images, actions, states, episodes, tasks, task_ids = load_training_data(
        cfg.data.path or cfg.collect.dataset, keys, cfg.data.action_key, cfg.data.state_key if geometry.state_dim else None,
        cfg.libero.image_transform, geometry.image_size)
    if cfg.sim.suite == "metaworld":
        missing = [t for t in cfg.sim.tasks if instruction_of(cfg, t) not in tasks]
        if missing:  # e.g. sim.tasks overridden but collect.dataset still names another task set's demos
            raise ValueError(f"{cfg.collect.dataset} holds no demos for {missing} (its instructions: {tasks}); "
                             f"collect them into another collect.dataset")
    if images.shape[-3:-1] != (geometry.image_size, geometry.image_size):
        raise ValueError(f"dataset frames are {images.shape[-3:-1]}, model.image_size is {geometry.image_size}")
    if actions.shape[1] != geometry.action_dim:
        raise ValueError(f"dataset actions are {actions.shape[1]}-D, model.action_dim is {geometry.action_dim}")
    if states is not None and states.shape[1] != geometry.state_dim:
        raise ValueError(f"dataset states are {states.shape[1]}-D, model.state_dim is {geometry.state_dim}")
    if geometry.keypoints and geometry.views != len(keys):
        raise ValueError(f"model.views is {geometry.views} but sim.cameras gives {len(keys)} view(s) per frame; "
                         f"set model.views={len(keys)}")
    subtask_labels = None
    if cfg.atom.subtasks:  # AtomVLA Stage I: "task: … / now: …" (labels from `atlasva vla segment`)
        from atlasva.vla.atom.progress import subtask_task_ids

        tasks, task_ids, subtask_labels = subtask_task_ids(cfg.data.path or cfg.collect.dataset, tasks, task_ids)
    env_states = _aux_targets(cfg, geometry, states)
    train_levels = _training_levels(cfg, len(np.unique(episodes)))
    stats = {ACTION_KEY: compute_stats(actions)}
    if states is not None:
        stats[STATE_KEY] = compute_stats(states)
    if env_states is not None:
        stats[ENV_STATE_KEY] = compute_stats(env_states)
    norm = Normalizer(stats, mode=cfg.train.normalization)
    data = ChunkData(images, norm.normalize(ACTION_KEY, actions), episodes, task_ids, tasks,
                     norm.normalize(STATE_KEY, states) if states is not None else None,
                     norm.normalize(ENV_STATE_KEY, env_states) if env_states is not None else None)

    model = build_model(geometry, seed=cfg.model.seed)
    if cfg.model.vision_path:
        report = load_vision_weights(model, cfg.model.vision_path)
        _progress(f"loaded {len(report.loaded)} ViT tensors from {cfg.model.vision_path}")
    if cfg.model.vggt_path:
        report = load_vggt_weights(model, cfg.model.vggt_path)
        _progress(f"loaded {len(report.loaded)} VGGT tensors ({len(report.skipped)} skipped by declaration)")
    model.set_frozen(cfg.model.freeze_vision, cfg.model.freeze_text, cfg.model.freeze_aggregator)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(_param_groups(model, cfg.train.lr, cfg.train.keypoint_lr), lr=cfg.train.lr,
                            weight_decay=cfg.train.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.train.warmup:
            return cfg.train.lr * (step + 1) / cfg.train.warmup
        frac = (step - cfg.train.warmup) / max(1, cfg.train.steps - cfg.train.warmup)
        return cfg.train.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    run = RunFolder.create(cfg_name(cfg), run_config(cfg), root=cfg.run.root, resume=cfg.run.resume)
    if train_levels is not None:
        run.record_levels("sft", [(r["seed"], r["level_hash"]) for r in train_levels])
    start = 0
    ckpt = run.load_checkpoint()
    if ckpt is not None:
        tensors, state = ckpt
        model.load_tensors({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}, state["geometry"])
        _restore_optim(opt, tensors, state["optimizer_groups"])
        start = int(state["step"])
        run.truncate_metrics(start)
        _progress(f"resuming {run.path} from step {start}")
    token_cache = [model.text.tokenize([t]) for t in tasks]
    model.train()
    t0 = time.time()
    losses: list[float] = []

    def save(step: int) -> None:
        tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
        opt_tensors, groups = _optim_tensors(opt)
        tensors.update(opt_tensors)
        run.save_checkpoint(step, tensors, {
            "geometry": geometry.to_dict(), "normalizer": norm.to_dict(), "tasks": tasks,
            "optimizer_groups": groups, "image_keys": keys, "cameras": list(cfg.sim.cameras),
            "state_key": STATE_KEY, "action_key": ACTION_KEY,
            # how eval must render to see what training saw: render size (resized to the model's) and turn
            "data_image_size": data_image_size, "image_transform": cfg.libero.image_transform,
            "train_levels": train_levels,  # eval refuses to play any of them
        })

    for step in range(start, cfg.train.steps):
        rng = np.random.default_rng([cfg.train.seed, step])
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        idx = rng.integers(0, len(data), size=cfg.train.batch_size)
        target, valid = data.chunk(idx, geometry.chunk)
        x = torch.from_numpy(data.images[idx]).float().div_(255.0)  # [B, S, H, W, 3]
        b, s = x.shape[:2]
        x = _augment(x.flatten(0, 1).permute(0, 3, 1, 2), cfg.train.augment_shift, gen)  # each view shifted alone
        x = x.reshape(b, s, *x.shape[1:])
        tid = data.task_id[idx]
        ids = torch.cat([_pad(token_cache[t][0], max(token_cache[u][0].shape[1] for u in set(tid.tolist())), model.text.pad_id) for t in tid])
        mask = torch.cat([_pad(token_cache[t][1], ids.shape[1], 0) for t in tid])
        st = torch.from_numpy(data.states[idx]) if data.states is not None else None
        aux = torch.from_numpy(data.aux[idx]) if data.aux is not None else None
        for group in opt.param_groups:
            group["lr"] = lr_at(step) * group.get("lr_scale", 1.0)  # checkpoints before keypoint_lr have one group
        terms = model.loss_terms(x, ids, mask, torch.from_numpy(target), st, generator=gen,
                                 action_mask=torch.from_numpy(valid), aux_target=aux, aux_weight=cfg.train.aux_weight)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
        opt.step()
        losses.append({k: v.item() for k, v in terms.items()})
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            rate = (done - start) / max(1e-9, time.time() - t0)
            means = {k: float(np.mean([row[k] for row in losses])) for k in losses[0]}
            run.log_metrics(done, {"train/loss": means["action"], **({"train/aux_loss": means["aux"]} if "aux" in means else {}),
                                   "train/grad_norm": float(grad_norm), "train/lr": lr_at(step), "train/steps_per_s": rate})
            aux_msg = f" aux {means['aux']:.4f}" if "aux" in means else ""
            _progress(f"train step {done}/{cfg.train.steps} loss {means['action']:.4f}{aux_msg} ({rate:.2f} it/s, "
                      f"eta {(cfg.train.steps - done) / max(rate, 1e-9):.0f}s)")
            losses = []
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
            save(done)
    if start >= cfg.train.steps and not run.checkpoints():
        save(start)
    if subtask_labels is not None:
        from atlasva.vla.atom.progress import fit_progress_head

        fit_progress_head(cfg.atom.progress, run.path / "progress", model, data.images, data.states, subtask_labels)
    run.plot_metrics(["train/loss", "train/aux_loss", "train/grad_norm", "train/lr"])
    run.close()
    _progress(f"training done: {run.path} ({time.time() - t0:.0f}s)")
    return run.path


def _training_levels(cfg: VLAConfig, episodes: int) -> list[dict[str, Any]] | None:
    """The levels the training demos were recorded on ({"task", "seed", "level_hash"} per episode), or None
    for data that carries no record (LIBERO, a dataset given by data.path)."""
    root = cfg.data.path or cfg.collect.dataset
    levels = read_dataset_levels(root)
    if levels is None:
        if cfg.sim.suite == "metaworld" and not cfg.data.path:
            raise ValueError(f"{root} has no {LEVELS_FILE} (the levels its demos play, recorded by `atlasva vla collect` "
                             f"since evaluation is held out by level): re-collect with collect.overwrite=true")
        return None
    if len(levels) != episodes:
        raise ValueError(f"{root}/{LEVELS_FILE} lists {len(levels)} levels for {episodes} episodes")
    return levels


def aux_frame_offset(geometry: Any, states: np.ndarray) -> np.ndarray:
    """What the auxiliary targets have subtracted [N, aux_dim] (raw units): zeros for ``aux_frame="world"``, the
    hand position ``states[:, :3]`` repeated for each xyz target for ``"hand"``. Targets are ``positions − offset``;
    a prediction maps back to the world as ``prediction + offset`` — one rule for training and read-outs."""
    if geometry.aux_frame == "world":
        return np.zeros((len(states), geometry.aux_dim), dtype=np.float32)
    return np.tile(np.asarray(states, dtype=np.float32)[:, :3], geometry.aux_dim // 3)


def _aux_targets(cfg: VLAConfig, geometry: Any, states: np.ndarray | None) -> np.ndarray | None:
    """The auxiliary loss's per-frame targets [N, aux_dim] (raw, in ``model.aux_frame``), or None when the loss
    is off."""
    aux_dim = geometry.aux_dim
    if cfg.train.aux_weight < 0:
        raise ValueError(f"train.aux_weight must be ≥ 0, got {cfg.train.aux_weight}")
    if cfg.train.aux_weight == 0:
        return None
    if not aux_dim:
        raise ValueError(f"train.aux_weight={cfg.train.aux_weight} needs an auxiliary head: set model.aux_dim="
                         f"{len(ENV_STATE_NAMES)} (or train.aux_weight=0)")
    path = cfg.data.path or cfg.collect.dataset
    try:
        targets = load_lerobot_column(path, ENV_STATE_KEY)
    except KeyError:
        raise ValueError(f"{path} has no {ENV_STATE_KEY!r} (recorded by `atlasva vla collect` since the "
                         f"auxiliary loss exists): re-collect with collect.overwrite=true, or set train.aux_weight=0") from None
    if targets.shape[1] != aux_dim:
        raise ValueError(f"{ENV_STATE_KEY} is {targets.shape[1]}-D, model.aux_dim is {aux_dim}")
    if geometry.aux_frame == "world":
        return targets
    if states is None or len(states) != len(targets):
        raise ValueError(f"model.aux_frame={geometry.aux_frame!r} needs the recorded state of every frame "
                         f"({len(targets)} frames, states: {None if states is None else len(states)})")
    return targets - aux_frame_offset(geometry, states)


def _pad(t: Any, length: int, value: int) -> Any:
    import torch.nn.functional as F

    return F.pad(t, (0, length - t.shape[1]), value=value)


def cfg_name(cfg: VLAConfig) -> str:
    return getattr(cfg, "_name", None) or "vla"


# ---------------------------------------------------------------------------------------------- eval
class VLAPolicy:
    """A trained checkpoint wrapped for closed-loop control (normalisation included).

    The policy owns its execution state, as LeRobot's policies do: ``reset()`` at an episode's start,
    then ``select_action`` once per control step pops an action queue that is refilled with a new
    chunk when empty — so every control loop (Meta-World, LIBERO) steps one action at a time."""

    def __init__(self, tensors: dict[str, Any], state: dict[str, Any], execute_steps: int | None = None) -> None:
        import torch

        from atlasva.vla.model import AtlasVLA, Geometry

        geometry = Geometry(**state["geometry"])
        self.model = AtlasVLA(geometry)
        self.model.load_tensors({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}, state["geometry"])
        self.model.eval()
        self.norm = Normalizer.from_dict(state["normalizer"])
        self.geometry = geometry
        self.cameras: list[str] | None = state.get("cameras")  # None: a checkpoint from before multi-camera
        self._tokens: dict[str, Any] = {}
        self._torch = torch
        if execute_steps is not None and execute_steps < 1:
            raise ValueError(f"execute_steps must be ≥ 1, got {execute_steps}")
        #: actions of each predicted chunk executed before the policy looks again (receding horizon)
        self.execute_steps = min(geometry.chunk, execute_steps or geometry.chunk)
        self._queue: deque[np.ndarray] = deque()
        self.queries = 0

    def reset(self) -> None:
        """Forget the queued actions: call at the start of every episode."""
        self._queue.clear()
        self.queries = 0

    @property
    def needs_observation(self) -> bool:
        """True when the next ``select_action`` predicts a new chunk (so the caller renders only then)."""
        return not self._queue

    def select_action(self, image: np.ndarray | None, instruction: str, state: np.ndarray | None) -> np.ndarray:
        """The next action of the episode. An empty queue is refilled with the first ``execute_steps``
        actions of a chunk predicted from this observation; otherwise the observation is not looked at
        (and may be None)."""
        if not self._queue:
            if image is None:
                raise ValueError("the action queue is empty: select_action needs this step's views")
            self._queue.extend(self.act(image, instruction, state)[: self.execute_steps])
            self.queries += 1
        return self._queue.popleft()

    def observation_tensors(self, image: np.ndarray, state: np.ndarray | None) -> tuple[Any, Any]:
        """The model's inputs for one frame or S views: uint8 [1, S, 3, H, W] (or [1, 3, H, W]) and the
        normalised state [1, state_dim] (None without proprioception)."""
        torch = self._torch
        if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
            raise ValueError(f"expected a uint8 H×W×3 frame or [S, H, W, 3] views, got {image.dtype} {image.shape}")
        views = 1 if image.ndim == 3 else image.shape[0]
        if self.cameras is not None and views != len(self.cameras):
            raise ValueError(f"the checkpoint was trained on {len(self.cameras)} camera(s) {self.cameras}, got {views} view(s)")
        x = torch.from_numpy(np.ascontiguousarray(image))
        x = (x.permute(2, 0, 1) if x.dim() == 3 else x.permute(0, 3, 1, 2))[None]
        st = None
        if self.geometry.state_dim:
            st = torch.from_numpy(self.norm.normalize(STATE_KEY, np.asarray(state, dtype=np.float32)[None]))
        return x, st

    def act(self, image: np.ndarray, instruction: str, state: np.ndarray | None) -> np.ndarray:
        """Unnormalised action chunk [chunk, action_dim] for one uint8 H×W×3 frame or S views [S, H, W, 3]."""
        torch = self._torch
        x, st = self.observation_tensors(image, state)
        if instruction not in self._tokens:
            self._tokens[instruction] = self.model.text.tokenize([instruction])
        ids, mask = self._tokens[instruction]
        with torch.no_grad():
            out = self.model(x, ids, mask, st, generator=torch.Generator().manual_seed(0))
        return self.norm.unnormalize(ACTION_KEY, out[0].numpy())


def run_episode(sim: Any, policy: VLAPolicy | None, instruction: str, seed: int, max_steps: int,
                keep_frames: bool = False) -> dict[str, Any]:
    """One closed-loop episode, one action per step (policy=None runs the sim's scripted expert).

    ``sim`` is a :class:`MetaWorldTask` or a :class:`atlasva.vla.libero.LiberoTask`: ``reset(seed)``,
    ``images()``, ``state()``, ``step(action) -> success``, ``task``. Frames are rendered only when
    the policy looks (a new chunk)."""
    sim.reset(seed)
    if policy is not None:
        policy.reset()
    steps = 0
    success = False
    frames: list[np.ndarray] = []
    latencies: list[float] = []
    closest = math.inf  # how near a failure came: the smallest obj_to_target the sim reported
    while steps < max_steps and not success:
        if policy is None:
            action = sim.expert_action()
        else:
            views = state = None
            if policy.needs_observation:
                views, state = sim.images(), sim.state()
                if keep_frames:
                    frames.append(np.concatenate(list(views), axis=1))  # the views side by side
            t = time.perf_counter()
            action = policy.select_action(views, instruction, state)
            if views is not None:
                latencies.append(time.perf_counter() - t)
        success = sim.step(action)
        if getattr(sim, "obj_to_target", None) is not None:
            closest = min(closest, sim.obj_to_target)
        steps += 1
    out: dict[str, Any] = {
        "task": sim.task, "seed": int(seed), "success": success, "steps": steps,
        "turns": steps if policy is None else policy.queries,
        "format_valid_rate": 1.0, "finish_reason": "success" if success else "max_steps",
    }
    if getattr(sim, "level_hash", ""):  # Meta-World: the level this episode played
        out["level_hash"] = sim.level_hash
    if latencies:
        out["chunk_latency_ms"] = 1000 * float(np.mean(latencies))
    if math.isfinite(closest):
        out["min_obj_to_target"] = closest
    if keep_frames:
        out["_frames"] = frames
    return out


def evaluate(cfg: VLAConfig) -> dict[str, Any]:
    import torch

    from atlasva.runs import RunFolder, summarize_episodes
    from atlasva.vla import libero

    if libero.is_libero(cfg.eval.suite or cfg.sim.suite):
        return libero.evaluate(cfg)

    torch.set_num_threads(max(1, cfg.eval.num_threads))
    if cfg.eval.source == "posttrain":  # AtomVLA Stage II: the post-training run's checkpoint, summary there
        from atlasva.vla.atom.posttrain import posttrain_run

        run = posttrain_run(cfg, resume=True)
    elif cfg.eval.source == "train":
        run = RunFolder.create(cfg_name(cfg), run_config(cfg), root=cfg.run.root, resume=True)
    else:
        raise ValueError(f"eval.source must be 'train' or 'posttrain', got {cfg.eval.source!r}")
    loaded = run.load_checkpoint(Path(cfg.eval.checkpoint) if cfg.eval.checkpoint else None)
    if loaded is None:
        raise FileNotFoundError(f"no checkpoint in {run.path}; run `atlasva vla {cfg.eval.source}` with the same config first")
    if cfg.atom.subtasks:  # Stage I policies read "task: … / now: …"; the progress head says what now is
        from atlasva.vla.atom.progress import SubtaskPolicy

        policy: VLAPolicy = SubtaskPolicy.from_run(cfg, *loaded, execute_steps=cfg.eval.execute_steps)
    else:
        policy = VLAPolicy(*loaded, execute_steps=cfg.eval.execute_steps)
    if policy.cameras is not None and list(cfg.sim.cameras) != policy.cameras:
        raise ValueError(f"sim.cameras is {list(cfg.sim.cameras)} but the checkpoint was trained on {policy.cameras}")
    eval_levels = held_out_levels(cfg, loaded[1].get("train_levels"), run)
    t0 = time.time()
    records: list[dict[str, Any]] = []
    expert_records: list[dict[str, Any]] = []
    media: dict[str, list[np.ndarray]] = {}
    max_steps = cfg.eval.max_steps or cfg.sim.max_steps
    for task in cfg.sim.tasks:
        sim = MetaWorldTask(task, policy.geometry.image_size, cfg.sim.cameras, cfg.sim.flip_vertical, max_steps)
        instruction = instruction_of(cfg, task)
        eval_seeds = [seed for seed, _ in eval_levels[task]]
        for i, seed in enumerate(eval_seeds):
            rec = run_episode(sim, policy, instruction, seed, max_steps, keep_frames=cfg.eval.save_media and i == 0)
            if "_frames" in rec:
                media[task] = rec.pop("_frames")
            records.append(rec)
            if cfg.eval.expert_baseline:
                expert_records.append(run_episode(sim, None, instruction, seed, max_steps))
            k = sum(r["success"] for r in records if r["task"] == task)
            _progress(f"eval {task}: {i + 1}/{len(eval_seeds)} episodes, {k} successes ({time.time() - t0:.0f}s)")
        sim.close()

    def task_stage(recs: list[dict[str, Any]]) -> dict[str, Any]:
        out = summarize_episodes(recs)
        near = [r["min_obj_to_target"] for r in recs if not r["success"] and "min_obj_to_target" in r]
        if near:  # near misses or far off: the failures' closest approach (reach-v3 succeeds at 0.05 m)
            out["failed_min_obj_to_target_median"] = float(np.median(near))
        return out

    def stage(recs: list[dict[str, Any]]) -> dict[str, Any]:
        out = summarize_episodes(recs)
        out["per_task"] = {t: task_stage([r for r in recs if r["task"] == t]) for t in cfg.sim.tasks}
        out["mean_steps"] = float(np.mean([r["steps"] for r in recs])) if recs else 0.0
        lat = [r["chunk_latency_ms"] for r in recs if "chunk_latency_ms" in r]
        if lat:
            out["chunk_latency_ms"] = float(np.mean(lat))
        return out

    evals: dict[str, Any] = {}
    summary_path = run.path / "summary.json"
    if summary_path.exists():
        evals.update(json.loads(summary_path.read_text()).get("eval", {}))
    evals[cfg.eval.stage] = stage(records)
    run.write_episodes(cfg.eval.stage, records)
    if expert_records:
        evals["expert"] = stage(expert_records)
        run.write_episodes("expert", expert_records)
        run.record_levels("eval:expert", [pair for lv in eval_levels.values() for pair in lv])
    if media:
        save_media(run.path, cfg.eval.stage, media)
    summary = run.write_summary(evals, wall_time_s=time.time() - t0, splits=run.split_report(),
                                eval_seeds={t: [seed for seed, _ in lv] for t, lv in eval_levels.items()},
                                validation_share=cfg.sim.validation_share,
                                execute_steps=cfg.eval.execute_steps, max_steps=max_steps)
    run.close()
    for name, st in evals.items():
        per = ", ".join(f"{t}: {s['success_rate']:.2f}" for t, s in st.get("per_task", {}).items())
        _progress(f"{name}: success {st['success_rate']:.3f} CI95 {st['success_ci95']} ({per})")
    _progress(f"summary: {summary_path}")
    return summary


def held_out_levels(cfg: VLAConfig, train_levels: list[dict[str, Any]] | None, run: Any) -> dict[str, list[tuple[int, str]]]:
    """Each task's ``eval.episodes_per_task`` distinct validation-split levels from ``eval.seed_start`` upwards,
    recorded with the checkpoint's training levels in the run's ``levels.jsonl``. Raises
    ``SplitOverlapError`` when one of them was trained on, and when the checkpoint does not say what it
    trained on (a held-out number needs both sides)."""
    from atlasva.runs import SplitOverlapError, split_report

    if train_levels is None:
        raise SplitOverlapError("the checkpoint records no training levels (trained before held-out levels existed, or "
                                "from data without a level record), so held-out levels cannot be proven held out: "
                                "re-collect (collect.overwrite=true) and retrain")
    levels = {task: metaworld_levels(task, "validation", cfg.eval.episodes_per_task, cfg.eval.seed_start,
                                     cfg.sim.validation_share) for task in cfg.sim.tasks}
    rows = [{"stage": "sft", "level_hash": r["level_hash"]} for r in train_levels]
    rows += [{"stage": f"eval:{cfg.eval.stage}", "level_hash": h} for lv in levels.values() for _, h in lv]
    overlap = split_report(rows)["overlap"]
    if overlap:
        raise SplitOverlapError(f"{overlap} of the evaluation levels were trained on (sim.validation_share="
                                f"{cfg.sim.validation_share}; the demos were recorded with another one?): "
                                "evaluate with the share the demos were collected with")
    run.record_levels("sft", [(r["seed"], r["level_hash"]) for r in train_levels])
    run.record_levels(f"eval:{cfg.eval.stage}", [pair for lv in levels.values() for pair in lv])
    return levels


def save_media(folder: Path, stage: str, media: dict[str, list[np.ndarray]], columns: int = 8) -> list[Path]:
    """A contact sheet (PNG) and a GIF per task of the recorded query frames."""
    from PIL import Image

    paths = []
    for task, frames in media.items():
        if not frames:
            continue
        step = max(1, math.ceil(len(frames) / (columns * 2)))
        picked = frames[::step][: columns * 2]
        h, w = picked[0].shape[:2]
        rows = math.ceil(len(picked) / columns)
        sheet = Image.new("RGB", (columns * w, rows * h))
        for i, f in enumerate(picked):
            sheet.paste(Image.fromarray(f), ((i % columns) * w, (i // columns) * h))
        p = folder / f"contact-{stage}-{task}.png"
        sheet.save(p)
        g = folder / f"episode-{stage}-{task}.gif"
        Image.fromarray(frames[0]).save(g, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]],
                                        duration=100, loop=0)
        paths += [p, g]
    return paths


__all__ = ["MetaWorldTask", "VLAPolicy", "collect", "evaluate", "run_episode", "train"]
