"""Subtask labels stored in a dataset, read back in training order.

* **LeRobot** (v2.x and v3.0): a per-frame ``subtask_index`` int64 column in the data parquet files,
  declared in ``meta/info.json``; its value is a row of the tasks table (``meta/tasks.jsonl`` or
  ``meta/tasks.parquet``), to which every subtask text is added once. ``meta/subtasks.json`` keeps the
  cut of each episode (starts, texts, end events, template match) and the settings that produced it.
* **LIBERO HDF5**: per demo a ``data/demo_i/subtask_index`` int64 [T] array indexing the JSON list of
  texts in ``data.attrs["subtask_texts"]``; the cuts in ``data.attrs["atom_subtasks"]``.

:class:`SubtaskLabels` gives, frame by frame in the order the training loaders stack frames, the
subtask's text, its ordinal in the episode, and the global index of its boundary frame (subgoal) and of
the episode's last frame (final goal).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atlasva.vla.atom.segment import Segmentation
from atlasva.vla.data import DatasetError, LeRobotDataset

SUBTASK_KEY = "subtask_index"
META_NAME = "subtasks.json"
HDF5_TEXTS_ATTR = "subtask_texts"
HDF5_META_ATTR = "atom_subtasks"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
ENV_STATE_KEY = "observation.environment_state"


@dataclass
class EpisodeInput:
    """What the segmenter reads of one episode."""

    key: str  # "7" (LeRobot episode index) or "file.hdf5:demo_3"
    task: str
    hand: np.ndarray  # [T, 3]
    gripper: np.ndarray  # [T] gripper command (the action's last dimension)
    obj: np.ndarray | None  # [T, 3] object position where the dataset records it


def is_lerobot(path: Path) -> bool:
    return (path / "meta" / "info.json").exists()


def hdf5_files(path: Path) -> list[Path]:
    if path.is_file() and path.suffix in (".hdf5", ".h5"):
        return [path]
    return sorted(path.glob("*.hdf5")) if path.is_dir() else []


def _check_path(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist (collect it first, or set data.path)")
    if not is_lerobot(path) and not hdf5_files(path):
        raise DatasetError(f"{path} is neither a LeRobot dataset (meta/info.json) nor LIBERO HDF5 demos (*.hdf5)")


def iter_episode_inputs(path: str | Path) -> Iterator[EpisodeInput]:
    """Every episode's hand positions (``observation.state[:, :3]``: Meta-World's hand, LIBERO's ee_pos),
    gripper command (``action[:, -1]``) and object position (``observation.environment_state[:, :3]``
    when recorded), in training order."""
    path = Path(path)
    _check_path(path)
    if is_lerobot(path):
        ds = LeRobotDataset(path)
        for key in (STATE_KEY, ACTION_KEY):
            if key not in ds.features:
                raise DatasetError(f"{path}: segmentation reads {key!r}; the dataset has {sorted(ds.features)}")
        keys = [STATE_KEY, ACTION_KEY] + ([ENV_STATE_KEY] if ENV_STATE_KEY in ds.features else [])
        for ep in ds.episodes:
            d = ds.read_episode(ep.index, keys)
            state = np.asarray(d[STATE_KEY], dtype=np.float64).reshape(ep.length, -1)
            action = np.asarray(d[ACTION_KEY], dtype=np.float64).reshape(ep.length, -1)
            env = np.asarray(d[ENV_STATE_KEY], dtype=np.float64).reshape(ep.length, -1) if ENV_STATE_KEY in d else None
            tasks = d.get("task") or [""]
            yield EpisodeInput(str(ep.index), str(tasks[0]), state[:, :3], action[:, -1],
                               env[:, :3] if env is not None else None)
        return
    from atlasva.vla.data import read_libero_hdf5

    for f in hdf5_files(path):
        for ep in read_libero_hdf5(f):
            if "state" not in ep:
                raise DatasetError(f"{f}:{ep['name']} has no obs/ee_pos: segmentation needs the end-effector position")
            yield EpisodeInput(f"{f.name}:{ep['name']}", ep["task"], ep["state"][:, :3], ep["actions"][:, -1], None)


# ---------------------------------------------------------------------------------------------- writing
def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The segmentation record of a dataset (``meta/subtasks.json`` or the HDF5 attribute), or None."""
    path = Path(path)
    if is_lerobot(path):
        meta = path / "meta" / META_NAME
        return json.loads(meta.read_text()) if meta.exists() else None
    files = hdf5_files(path)
    if not files:
        return None
    import h5py

    episodes: list[dict[str, Any]] = []
    record: dict[str, Any] | None = None
    for f in files:
        with h5py.File(f, "r") as h:
            raw = h["data"].attrs.get(HDF5_META_ATTR)
            if raw is None:
                return None
            part = json.loads(raw)
        episodes += part["episodes"]
        record = part
    assert record is not None
    return {**record, "episodes": episodes}


def write_lerobot(path: str | Path, cuts: Sequence[tuple[EpisodeInput, Segmentation]], record: dict[str, Any]) -> dict[str, int]:
    """Write ``subtask_index`` into every data file, the subtask texts into the tasks table and the cuts
    into ``meta/subtasks.json`` (last, so an interrupted write is redone on the next run). Returns
    text -> task index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(path)
    ds = LeRobotDataset(root)
    old = read_meta(root)
    added_before = set(old.get("added_task_indices", [])) if old else set()
    tasks = {i: t for i, t in ds.tasks.items() if i not in added_before}
    index_of = {t: i for i, t in tasks.items()}
    added: list[int] = []
    for _, seg in cuts:
        for text in seg.texts:
            if text not in index_of:
                index_of[text] = max([*tasks, *added, -1]) + 1
                added.append(index_of[text])
    all_tasks = {**tasks, **{index_of[t]: t for t in index_of if index_of[t] in added}}
    labels = {int(ep.key): np.asarray([index_of[t] for t in seg.texts], dtype=np.int64)[seg.labels()]
              for ep, seg in cuts}
    by_file: dict[str, list[int]] = {}
    for ep in ds.episodes:
        if ep.index not in labels:
            raise DatasetError(f"episode {ep.index} of {root} was not segmented")
        if len(labels[ep.index]) != ep.length:
            raise DatasetError(f"episode {ep.index}: {len(labels[ep.index])} labels for {ep.length} frames")
        by_file.setdefault(ep.data_file, []).append(ep.index)
    for rel in by_file:
        file = root / rel
        table = pq.read_table(file)
        if SUBTASK_KEY in table.column_names:
            table = table.drop_columns([SUBTASK_KEY])
        episode = table["episode_index"].to_numpy()
        frame = table["frame_index"].to_numpy()
        column = np.asarray([labels[int(e)][int(f)] for e, f in zip(episode, frame)], dtype=np.int64)
        table = table.append_column(SUBTASK_KEY, pa.array(column, pa.int64()))
        meta = dict(table.schema.metadata or {})
        if b"huggingface" in meta:  # keep the datasets feature metadata in step with the columns
            hf = json.loads(meta[b"huggingface"])
            hf.setdefault("info", {}).setdefault("features", {})[SUBTASK_KEY] = {"dtype": "int64", "_type": "Value"}
            meta[b"huggingface"] = json.dumps(hf).encode()
            table = table.replace_schema_metadata(meta)
        tmp = file.with_name(f".{file.name}.tmp{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, file)
    meta_dir = root / "meta"
    if ds.major == 2:
        text = "".join(json.dumps({"task_index": i, "task": all_tasks[i]}) + "\n" for i in sorted(all_tasks))
        tmp = meta_dir / f".tasks.jsonl.tmp{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, meta_dir / "tasks.jsonl")
    else:
        _write_v3_tasks(meta_dir / "tasks.parquet", all_tasks)
    info = json.loads((meta_dir / "info.json").read_text())
    info["features"][SUBTASK_KEY] = {"dtype": "int64", "shape": [1], "names": None}
    info["total_tasks"] = len(all_tasks)
    _atomic_json(meta_dir / "info.json", info)
    for (_, seg), row in zip(cuts, record["episodes"]):
        row["subtask_task_indices"] = [index_of[t] for t in seg.texts]
    _atomic_json(meta_dir / META_NAME, {**record, "added_task_indices": sorted(added)})
    return index_of


def _write_v3_tasks(path: Path, tasks: dict[int, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = pq.read_table(path)
    text_col = "task" if "task" in old.column_names else "__index_level_0__"
    order = sorted(tasks)
    table = pa.table({"task_index": pa.array(order, pa.int64()), text_col: pa.array([tasks[i] for i in order])})
    if old.schema.metadata:
        table = table.replace_schema_metadata(old.schema.metadata)
    table = table.select([c for c in old.column_names if c in table.column_names])
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def write_hdf5(path: str | Path, cuts: Sequence[tuple[EpisodeInput, Segmentation]], record: dict[str, Any]) -> None:
    """Per demo ``subtask_index`` [T] into the file's list of texts (``data.attrs["subtask_texts"]``); the
    cuts of the file's demos in ``data.attrs["atom_subtasks"]``."""
    import h5py

    by_file: dict[str, list[tuple[EpisodeInput, Segmentation, dict[str, Any]]]] = {}
    for (ep, seg), row in zip(cuts, record["episodes"]):
        by_file.setdefault(ep.key.split(":")[0], []).append((ep, seg, row))
    for f in hdf5_files(Path(path)):
        items = by_file.get(f.name, [])
        texts: list[str] = []
        for _, seg, _ in items:
            texts += [t for t in seg.texts if t not in texts]
        with h5py.File(f, "r+") as h:
            data = h["data"]
            for ep, seg, _ in items:
                demo = data[ep.key.split(":")[1]]
                if SUBTASK_KEY in demo:
                    del demo[SUBTASK_KEY]
                demo.create_dataset(SUBTASK_KEY, data=np.asarray([texts.index(t) for t in seg.texts], np.int64)[seg.labels()])
            data.attrs[HDF5_TEXTS_ATTR] = json.dumps(texts)
            data.attrs[HDF5_META_ATTR] = json.dumps({**record, "episodes": [row for _, _, row in items]})


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class SubtaskLabels:
    """Per-frame subtask facts, frames in training order (N = all frames of the dataset)."""

    text: list[str]  # [N] the current subtask's instruction
    task: list[str]  # [N] the episode's high-level instruction
    ordinal: np.ndarray  # [N] int64: k of subtask k in its episode
    count: np.ndarray  # [N] int64: how many subtasks the episode has
    subgoal: np.ndarray  # [N] int64: global index of the current subtask's boundary (last) frame
    final: np.ndarray  # [N] int64: global index of the episode's last frame
    episode: np.ndarray  # [N] int64: the episode's position in the dataset
    texts_by_task: dict[str, list[str]]  # per task, its most common cut's subtask texts (the canonical list)
    canonical: np.ndarray  # [N] bool: the episode was cut into exactly its task's canonical list

    def __len__(self) -> int:
        return len(self.text)


def load_subtask_labels(path: str | Path) -> SubtaskLabels:
    """The stored labels (see the module docstring); a dataset that was never segmented, or whose stored
    column disagrees with its record, is a clear error."""
    path = Path(path)
    _check_path(path)
    meta = read_meta(path)
    if meta is None:
        raise DatasetError(f"{path} has no subtask labels: run `atlasva vla segment CONFIG` first")
    if is_lerobot(path):
        ds = LeRobotDataset(path)
        lengths = [ep.length for ep in ds.episodes]
        if SUBTASK_KEY not in ds.features:
            raise DatasetError(f"{path}: meta/{META_NAME} exists but {SUBTASK_KEY!r} is not a feature; re-run segment")
        from atlasva.vla.data import load_lerobot_column

        stored = load_lerobot_column(path, SUBTASK_KEY).reshape(-1).astype(np.int64)
        task_text = ds.tasks
    else:
        import h5py

        lengths, stored_parts, texts_by_file = [], [], []
        for f in hdf5_files(path):
            with h5py.File(f, "r") as h:
                texts = json.loads(h["data"].attrs.get(HDF5_TEXTS_ATTR, "[]"))
                names = sorted((k for k in h["data"] if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
                for name in names:
                    demo = h["data"][name]
                    if SUBTASK_KEY not in demo:
                        raise DatasetError(f"{f}:{name} has no {SUBTASK_KEY}; re-run segment")
                    lengths.append(len(demo["actions"]))
                    stored_parts.append(np.asarray(demo[SUBTASK_KEY], dtype=np.int64))
                    texts_by_file.append(texts)
        stored = np.concatenate(stored_parts) if stored_parts else np.zeros(0, np.int64)
        task_text = None
    episodes = meta["episodes"]
    if len(episodes) != len(lengths):
        raise DatasetError(f"{path}: the segmentation record lists {len(episodes)} episodes, the dataset has "
                           f"{len(lengths)}; re-run segment")
    text: list[str] = []
    task: list[str] = []
    ordinal, count, subgoal, final, episode = [], [], [], [], []
    cuts_of_task: dict[str, list[tuple[str, ...]]] = {}
    offset = 0
    for e, (row, length) in enumerate(zip(episodes, lengths)):
        if row["length"] != length:
            raise DatasetError(f"{path}: episode {row['key']} has {length} frames, its cut says {row['length']}; re-run segment")
        seg = Segmentation(row["starts"], row["texts"], row["ends"], length)
        k = seg.labels()
        expected = (np.asarray(row["subtask_task_indices"], dtype=np.int64)[k] if task_text is not None
                    else np.asarray([texts_by_file[e].index(t) for t in seg.texts], dtype=np.int64)[k])
        if not np.array_equal(stored[offset:offset + length], expected):
            raise DatasetError(f"{path}: the stored {SUBTASK_KEY} of episode {row['key']} disagrees with meta/{META_NAME}; "
                               f"re-run segment")
        bounds = np.asarray(seg.boundary_frames(), dtype=np.int64)
        text += [seg.texts[i] for i in k]
        task += [row["task"]] * length
        ordinal.append(k)
        count.append(np.full(length, len(seg.texts), np.int64))
        subgoal.append(offset + bounds[k])
        final.append(np.full(length, offset + length - 1, np.int64))
        episode.append(np.full(length, e, np.int64))
        cuts_of_task.setdefault(row["task"], []).append(tuple(seg.texts))
        offset += length
    texts_by_task = {t: list(max(set(c), key=lambda x: (c.count(x), len(x)))) for t, c in cuts_of_task.items()}
    canonical = np.asarray([tuple(row["texts"]) == tuple(texts_by_task[row["task"]]) for row in episodes])
    cat = np.concatenate
    return SubtaskLabels(text, task, cat(ordinal), cat(count), cat(subgoal), cat(final), cat(episode), texts_by_task,
                         canonical[cat(episode)])
