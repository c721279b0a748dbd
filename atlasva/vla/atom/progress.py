"""Stage I of AtomVLA: subtask-conditioned SFT and the progress head that picks the subtask at evaluation.

SFT reads ``"task: <high-level> / now: <current subtask>"`` (:func:`subtask_task_ids`, called by
``atlasva vla train`` when ``atom.subtasks`` is on). At evaluation nobody tells the policy which subtask
is under way; of the two options AtomVLA allows — a progress head or the world model's subgoal energy —
this is the **progress head**: the subgoal energy needs the boundary frame of *this* episode's subtask,
which exists for logged demos but not for a new seed. The head is a small MLP over the SFT policy's own
frozen observation features (:func:`observation_features`: its soft-argmax keypoints, or mean-pooled vision
tokens without a keypoint path) ⊕ proprioception ⊕ a one-hot of the task, trained by cross-entropy on the
segmenter's labels after SFT. Its held-out accuracy against those labels (the oracle subtask) is written
to ``<train run>/progress/summary.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from atlasva.vla.atom.config import ProgressSection, conditioned_instruction
from atlasva.vla.atom.subtask_data import SubtaskLabels, load_subtask_labels
from atlasva.vla.sim import VLAPolicy


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- SFT text
def subtask_task_ids(dataset: str | Path, tasks: list[str], task_ids: np.ndarray) -> tuple[list[str], np.ndarray, SubtaskLabels]:
    """Per-frame instruction ids for Stage-I SFT: every frame's ``task_ids`` (into ``tasks``, the high-level
    instructions) become ids into a new list of ``"task: … / now: …"`` instructions."""
    labels = load_subtask_labels(dataset)
    if len(labels) != len(task_ids):
        raise ValueError(f"{dataset}: {len(labels)} subtask labels for {len(task_ids)} training frames; re-run segment")
    names: dict[str, int] = {}
    out = np.empty(len(task_ids), dtype=np.int64)
    for i, (tid, sub, task) in enumerate(zip(task_ids.tolist(), labels.text, labels.task)):
        if tasks[tid] != task:
            raise ValueError(f"{dataset}: frame {i} belongs to {tasks[tid]!r} but its subtask record says {task!r}; "
                             f"re-run segment")
        out[i] = names.setdefault(conditioned_instruction(task, sub), len(names))
    return list(names), out, labels


# ---------------------------------------------------------------------------------------------- features
def observation_features(model: Any, images: Any) -> Any:
    """The policy's frozen view of an observation [B, F]: keypoints (x, y) of every view when the model has
    a keypoint path, else every view's mean vision token (after the adapter). ``images`` uint8 or float
    [B, S, 3, H, W] (or [B, 3, H, W])."""
    x, b, _ = model._pixels(images)
    if model.keypoint_encoder is not None:
        return model.keypoint_encoder(x).reshape(b, -1)
    return model.vision_adapter(model.vision(x)).mean(dim=1).reshape(b, -1)


def dataset_features(model: Any, images: np.ndarray, batch: int = 128, desc: str = "features") -> np.ndarray:
    """:func:`observation_features` of every frame of ``images`` uint8 [N, S, H, W, 3] → float32 [N, F]."""
    import torch
    from tqdm import tqdm

    out = []
    model.eval()
    with torch.no_grad():
        for i in tqdm(range(0, len(images), batch), desc=desc, unit="batch", leave=False, disable=None):
            x = torch.from_numpy(images[i:i + batch])
            x = x.permute(0, 1, 4, 2, 3) if x.dim() == 5 else x.permute(0, 3, 1, 2)
            out.append(observation_features(model, x).float().numpy())
    return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------------------------------------- the head
def build_head(in_dim: int, hidden: int, slots: int) -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, slots))


class ProgressHead:
    """Which subtask of its task an observation is in: logits over the task's subtask slots."""

    def __init__(self, tensors: dict[str, Any], state: dict[str, Any]) -> None:
        import torch

        self.tasks: list[str] = state["tasks"]
        self.texts_by_task: dict[str, list[str]] = state["texts_by_task"]
        self.slots = int(state["slots"])
        self.net = build_head(int(state["in_dim"]), int(state["hidden"]), self.slots)
        self.net.load_state_dict({k[len("head/"):]: torch.as_tensor(v) for k, v in tensors.items() if k.startswith("head/")})
        self.net.eval()
        self.mean = np.asarray(state["feature_mean"], dtype=np.float32)
        self.std = np.asarray(state["feature_std"], dtype=np.float32)

    def inputs(self, features: np.ndarray, state: np.ndarray | None, task: list[str]) -> np.ndarray:
        """features [B, F] ⊕ normalised state [B, S] (or nothing) ⊕ one-hot task → standardised [B, D]."""
        unknown = sorted({t for t in task if t not in self.tasks})
        if unknown:
            raise ValueError(f"the progress head knows the tasks {self.tasks}, not {unknown}")
        onehot = np.zeros((len(task), len(self.tasks)), dtype=np.float32)
        onehot[np.arange(len(task)), [self.tasks.index(t) for t in task]] = 1.0
        parts = [features] + ([state] if state is not None else []) + [onehot]
        return (np.concatenate(parts, axis=1).astype(np.float32) - self.mean) / self.std

    def predict(self, features: np.ndarray, state: np.ndarray | None, task: list[str]) -> np.ndarray:
        """The most likely subtask ordinal [B], among the task's own subtasks."""
        import torch

        with torch.no_grad():
            logits = self.net(torch.from_numpy(self.inputs(features, state, task))).numpy()
        counts = np.asarray([len(self.texts_by_task[t]) for t in task])
        logits[np.arange(self.slots)[None] >= counts[:, None]] = -np.inf
        return logits.argmax(axis=1)


def _split_episodes(labels: SubtaskLabels, fraction: float) -> np.ndarray:
    """A held-out mask over frames: the last ``fraction`` of each task's episodes (at least one if the task
    has two or more)."""
    held = np.zeros(len(labels), dtype=bool)
    for task in labels.texts_by_task:
        eps = sorted({int(e) for e, t in zip(labels.episode, labels.task) if t == task})
        n = int(round(fraction * len(eps))) if fraction > 0 else 0
        n = min(max(n, 1 if fraction > 0 and len(eps) > 1 else 0), len(eps) - 1)
        for e in eps[len(eps) - n:]:
            held |= labels.episode == e
    return held


def fit_progress_head(section: ProgressSection, folder: Path, model: Any, images: np.ndarray, states: np.ndarray | None,
                      labels: SubtaskLabels) -> dict[str, Any]:
    """Train the head on the frozen features of every training frame (held-out demos excluded), save it in
    ``folder`` (a RunFolder checkpoint) with its held-out accuracy; a head already there is reused."""
    import torch
    from tqdm import tqdm

    from atlasva.runs import RunFolder, wilson_ci

    run = RunFolder(folder)
    done = run.load_checkpoint() if run.checkpoints() else None
    if done is not None and (folder / "summary.json").exists():
        _progress(f"progress head: reusing {folder}")
        return json.loads((folder / "summary.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    feats = dataset_features(model, images, desc="progress features")
    tasks = list(labels.texts_by_task)
    slots = max(len(v) for v in labels.texts_by_task.values())
    onehot = np.zeros((len(labels), len(tasks)), dtype=np.float32)
    onehot[np.arange(len(labels)), [tasks.index(t) for t in labels.task]] = 1.0
    x = np.concatenate([feats] + ([states] if states is not None else []) + [onehot], axis=1).astype(np.float32)
    held = _split_episodes(labels, section.holdout_fraction)
    train = ~held & labels.canonical  # episodes whose cut is their task's usual one name the slots consistently
    if not train.any():
        raise ValueError("no training frames for the progress head (every episode held out or cut unusually)")
    mean, std = x[train].mean(0), x[train].std(0) + 1e-4
    xs = torch.from_numpy((x - mean) / std)
    y = torch.from_numpy(labels.ordinal)
    counts = torch.as_tensor([len(labels.texts_by_task[t]) for t in labels.task])
    invalid = torch.arange(slots)[None] >= counts[:, None]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(section.seed)
        net = build_head(x.shape[1], section.hidden, slots)
    opt = torch.optim.AdamW(net.parameters(), lr=section.lr, weight_decay=1e-4)
    idx_train = np.flatnonzero(train)
    rng = np.random.default_rng(section.seed)
    log = []
    for step in tqdm(range(section.steps), desc="progress head", unit="step", leave=False, disable=None):
        b = rng.choice(idx_train, size=min(section.batch_size, len(idx_train)), replace=False)
        logits = net(xs[b]).masked_fill(invalid[b], -1e9)
        loss = torch.nn.functional.cross_entropy(logits, y[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            log.append({"step": step + 1, "loss": loss.item()})
    net.eval()
    state = {"tasks": tasks, "texts_by_task": labels.texts_by_task, "slots": slots, "in_dim": int(x.shape[1]),
             "hidden": section.hidden, "feature_mean": mean.tolist(), "feature_std": std.tolist()}
    head = ProgressHead({f"head/{k}": v for k, v in net.state_dict().items()}, state)
    pred = head.predict(feats, states, labels.task)

    def accuracy(mask: np.ndarray) -> dict[str, Any]:
        k, n = int((pred[mask] == labels.ordinal[mask]).sum()), int(mask.sum())
        return {"frames": n, "accuracy": k / n if n else None, "accuracy_ci95": wilson_ci(k, n)}

    summary = {
        "train": accuracy(train), "heldout": accuracy(held),
        "heldout_by_task": {t: accuracy(held & (np.asarray(labels.task) == t)) for t in tasks},
        "heldout_episodes": int(len(set(labels.episode[held].tolist()))),
        "chance_heldout": float(np.mean(1.0 / labels.count[held])) if held.any() else 0.0,
        "wall_time_s": time.time() - t0, "loss_curve": log,
    }
    run.save_checkpoint(section.steps, {f"head/{k}": v for k, v in net.state_dict().items()}, state)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    if held.any():
        heldout = (f"held-out accuracy vs the segmenter's labels {summary['heldout']['accuracy']:.3f} on "
                   f"{summary['heldout']['frames']} frames of {summary['heldout_episodes']} demos")
    else:
        heldout = "no held-out demos (no task has two), so no held-out accuracy"
    _progress(f"progress head: {heldout} (train {summary['train']['accuracy']:.3f}, chance "
              f"{summary['chance_heldout']:.3f}) in {summary['wall_time_s']:.0f}s")
    return summary


def load_progress_head(folder: Path) -> ProgressHead:
    from atlasva.runs import RunFolder

    loaded = RunFolder(folder).load_checkpoint()
    if loaded is None:
        raise FileNotFoundError(f"no progress head in {folder}: train with atom.subtasks=true (it is fitted after SFT)")
    return ProgressHead(*loaded)


# ---------------------------------------------------------------------------------------------- evaluation
class SubtaskPolicy(VLAPolicy):
    """A Stage-I (or post-trained) checkpoint that, at every query, asks the progress head which subtask
    of the instruction's task is under way and acts on ``"task: … / now: …"``. ``subtask_log`` lists the
    ordinals it chose since the last :meth:`clear_log`."""

    def __init__(self, tensors: dict[str, Any], state: dict[str, Any], head: ProgressHead, **kwargs: Any) -> None:
        super().__init__(tensors, state, **kwargs)
        self.head = head
        self.subtask_log: list[int] = []

    @classmethod
    def from_run(cls, cfg: Any, tensors: dict[str, Any], state: dict[str, Any], **kwargs: Any) -> SubtaskPolicy:
        """The progress head of the SFT run the checkpoint descends from (``state["progress_dir"]`` for a
        post-trained checkpoint, else this config's training run)."""
        if "progress_dir" in state:
            folder = Path(state["progress_dir"])
        else:
            from atlasva.runs import RunFolder
            from atlasva.vla.sim import cfg_name, run_config

            folder = RunFolder.create(cfg_name(cfg), run_config(cfg), root=cfg.run.root, resume=True).path / "progress"
        return cls(tensors, state, load_progress_head(folder), **kwargs)

    def current_subtask(self, image: np.ndarray, instruction: str, state: np.ndarray | None) -> int:
        import torch

        x, st = self.observation_tensors(image, state)
        with torch.no_grad():
            feats = observation_features(self.model, x).float().numpy()
        return int(self.head.predict(feats, st.numpy() if st is not None else None, [instruction])[0])

    def clear_log(self) -> None:
        self.subtask_log = []

    def act(self, image: np.ndarray, instruction: str, state: np.ndarray | None) -> np.ndarray:
        k = self.current_subtask(image, instruction, state)
        self.subtask_log.append(k)
        return super().act(image, conditioned_instruction(instruction, self.head.texts_by_task[instruction][k]), state)
