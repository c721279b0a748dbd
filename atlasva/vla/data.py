"""VLA data: LeRobot datasets (v2.1 and v3.0 layouts), LIBERO HDF5 files, a LeRobot writer for our own
rollouts, per-dimension normalisation statistics, and the chunked training sampler.

LeRobot layout (as documented by LeRobot; no dependency on the ``lerobot`` package):

* v2.1 — ``meta/info.json`` (``codebase_version``, ``fps``, ``features``, ``data_path`` =
  ``data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet``, ``chunks_size``, …),
  ``meta/episodes.jsonl`` (``episode_index``, ``tasks``, ``length``), ``meta/tasks.jsonl``
  (``task_index``, ``task``), ``meta/episodes_stats.jsonl`` (v2.1) or ``meta/stats.json`` (v2.0);
  one parquet file per episode.
* v3.0 — ``data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet`` holding many episodes,
  ``meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet`` (``episode_index``, ``tasks``, ``length``,
  ``dataset_from_index``, ``dataset_to_index``, ``data/chunk_index``, ``data/file_index``),
  ``meta/tasks.parquet`` (``task_index`` plus the task string), ``meta/stats.json``.

Frames of ``dtype: image`` are stored inside the parquet as ``{"bytes": PNG/JPEG, "path": …}``
structs; ``dtype: video`` features are decoded with PyAV when it is installed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class DatasetError(ValueError):
    """A dataset on disk is malformed; the message names the file, the key and what was expected."""


# ---------------------------------------------------------------------------------------------- stats
STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")


def compute_stats(x: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension statistics of an [N, D] array (N ≥ 1)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"stats need an [N, D] array with N ≥ 1, got shape {x.shape}")
    return {
        "mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(), "max": x.max(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist(),
        "count": [int(x.shape[0])],
    }


@dataclass
class Normalizer:
    """Per-dimension normalisation of actions / states.

    ``mean_std``: (x − mean) / std. ``bounds``: q01/q99 mapped to [-1, 1] (OpenVLA style), clipped.
    Dimensions with ``mask[i] = False`` pass through raw (e.g. a binary gripper)."""

    stats: dict[str, dict[str, list[float]]]
    mode: str = "mean_std"
    masks: dict[str, list[bool]] = field(default_factory=dict)
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.mode not in ("mean_std", "bounds", "none"):
            raise ValueError(f"normalisation mode must be mean_std, bounds or none, got {self.mode!r}")
        for key, st in self.stats.items():
            missing = [k for k in ("mean", "std", "q01", "q99") if k not in st]
            if missing:
                raise ValueError(f"stats for {key!r} lack {missing}")

    def _arrays(self, key: str, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if key not in self.stats:
            raise KeyError(f"no normalisation stats for {key!r}; have {sorted(self.stats)}")
        st = self.stats[key]
        if len(st["mean"]) != dim:
            raise ValueError(f"stats for {key!r} have {len(st['mean'])} dims, data has {dim}")
        mask = np.asarray(self.masks.get(key, [True] * dim), dtype=bool)
        if self.mode == "bounds":
            lo, hi = np.asarray(st["q01"]), np.asarray(st["q99"])
            return (hi + lo) / 2, np.maximum((hi - lo) / 2, self.eps), mask
        return np.asarray(st["mean"]), np.maximum(np.asarray(st["std"]), self.eps), mask

    def normalize(self, key: str, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.mode == "none":
            return x
        centre, scale, mask = self._arrays(key, x.shape[-1])
        y = (x - centre) / scale
        if self.mode == "bounds":
            y = np.clip(y, -1.0, 1.0)
        return np.where(mask, y, x).astype(np.float32)

    def unnormalize(self, key: str, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float32)
        if self.mode == "none":
            return y
        centre, scale, mask = self._arrays(key, y.shape[-1])
        return np.where(mask, y * scale + centre, y).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "stats": self.stats, "masks": self.masks}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalizer:
        missing = [k for k in ("mode", "stats") if k not in d]
        if missing:
            raise ValueError(f"normaliser record lacks {missing}")
        return cls(stats={k: dict(v) for k, v in d["stats"].items()}, mode=d["mode"], masks=dict(d.get("masks", {})))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------------------------------------- images
def encode_png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_image(cell: Any, root: Path | None = None) -> np.ndarray:
    """A parquet image cell ({"bytes", "path"} struct or raw bytes) -> uint8 H×W×3."""
    from PIL import Image

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    if data is None and isinstance(cell, dict) and cell.get("path"):
        p = Path(cell["path"]) if root is None else root / cell["path"]
        data = p.read_bytes()
    if not isinstance(data, bytes | bytearray):
        raise DatasetError(f"image cell holds {type(data).__name__}, expected PNG/JPEG bytes")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ---------------------------------------------------------------------------------------------- LeRobot read
@dataclass
class EpisodeInfo:
    index: int
    length: int
    tasks: list[str]
    data_file: str = ""
    start: int = 0  # v3: the episode's first row in its data file (by global index)


class LeRobotDataset:
    """Read-only access to a LeRobot v2.x or v3.0 dataset folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.exists():
            raise DatasetError(f"{self.root} is not a LeRobot dataset: meta/info.json is missing")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        for key in ("codebase_version", "fps", "features"):
            if key not in self.info:
                raise DatasetError(f"{info_path} lacks the required key {key!r}")
        version = str(self.info["codebase_version"]).lstrip("v")
        self.major = int(version.split(".")[0])
        if self.major not in (2, 3):
            raise DatasetError(f"unsupported LeRobot codebase_version {self.info['codebase_version']!r}; expected v2.x or v3.0")
        self.version = f"v{version}"
        self.features: dict[str, dict[str, Any]] = self.info["features"]
        for name, feat in self.features.items():
            if "dtype" not in feat or "shape" not in feat:
                raise DatasetError(f"feature {name!r} in {info_path} lacks 'dtype' or 'shape'")
        self.fps = float(self.info["fps"])
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()
        self.stats = self._read_stats()
        total = self.info.get("total_episodes")
        if total is not None and int(total) != len(self.episodes):
            raise DatasetError(f"info.json says total_episodes={total} but the episode index lists {len(self.episodes)}")

    # -- meta
    def _read_tasks(self) -> dict[int, str]:
        meta = self.root / "meta"
        if self.major == 2:
            path = meta / "tasks.jsonl"
            if not path.exists():
                raise DatasetError(f"{path} is missing")
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            try:
                return {int(r["task_index"]): str(r["task"]) for r in rows}
            except KeyError as exc:
                raise DatasetError(f"{path}: every row needs 'task_index' and 'task' (missing {exc})") from None
        import pyarrow.parquet as pq

        path = meta / "tasks.parquet"
        if not path.exists():
            raise DatasetError(f"{path} is missing")
        table = pq.read_table(path).to_pydict()
        if "task_index" not in table:
            raise DatasetError(f"{path} lacks the column 'task_index'")
        text_col = next((c for c in ("task", "__index_level_0__") if c in table), None)
        if text_col is None:
            raise DatasetError(f"{path} lacks the task string column ('task' or the pandas index)")
        return {int(i): str(t) for i, t in zip(table["task_index"], table[text_col])}

    def _read_episodes(self) -> list[EpisodeInfo]:
        meta = self.root / "meta"
        out: list[EpisodeInfo] = []
        if self.major == 2:
            path = meta / "episodes.jsonl"
            if not path.exists():
                raise DatasetError(f"{path} is missing")
            chunks = int(self.info.get("chunks_size", 1000))
            template = self.info.get("data_path", V21_DATA_PATH)
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                r = json.loads(line)
                if "episode_index" not in r or "length" not in r:
                    raise DatasetError(f"{path}: rows need 'episode_index' and 'length', got keys {sorted(r)}")
                i = int(r["episode_index"])
                rel = template.format(episode_chunk=i // chunks, episode_index=i)
                out.append(EpisodeInfo(i, int(r["length"]), list(r.get("tasks", [])), rel))
            return out
        import pyarrow.parquet as pq

        files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{meta / 'episodes'} holds no chunk-*/file-*.parquet files")
        template = self.info.get("data_path", V30_DATA_PATH)
        for f in files:
            t = pq.read_table(f).to_pydict()
            need = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index"]
            missing = [c for c in need if c not in t]
            if missing:
                raise DatasetError(f"{f} lacks the columns {missing}")
            for j in range(len(t["episode_index"])):
                rel = template.format(chunk_index=int(t["data/chunk_index"][j]), file_index=int(t["data/file_index"][j]))
                tasks = t.get("tasks", [[]] * len(t["episode_index"]))[j] or []
                out.append(
                    EpisodeInfo(int(t["episode_index"][j]), int(t["length"][j]), list(tasks), rel, int(t["dataset_from_index"][j]))
                )
        return sorted(out, key=lambda e: e.index)

    def _read_stats(self) -> dict[str, dict[str, Any]]:
        meta = self.root / "meta"
        if (meta / "stats.json").exists():
            return json.loads((meta / "stats.json").read_text())
        path = meta / "episodes_stats.jsonl"
        if path.exists():  # v2.1: aggregate the per-episode stats (count-weighted mean / pooled std)
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            return aggregate_episode_stats([r["stats"] for r in rows])
        return {}

    # -- data
    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def num_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def read_episode(self, episode: int, keys: Sequence[str] | None = None) -> dict[str, Any]:
        """Arrays for one episode: numeric features [T, …], image features uint8 [T, H, W, 3], and
        ``task`` (the instruction of each frame, from ``task_index``)."""
        ep = next((e for e in self.episodes if e.index == episode), None)
        if ep is None:
            raise KeyError(f"episode {episode} is not in {self.root} (has {len(self.episodes)} episodes)")
        wanted = self._wanted(keys)
        return self._episode_arrays(ep, self._read_data_file(ep.data_file, wanted), wanted)

    def iter_episodes(self, keys: Sequence[str] | None = None) -> Iterator[tuple[EpisodeInfo, dict[str, Any]]]:
        """Every episode's arrays (as ``read_episode``) in index order, reading each data file once
        (a v3.0 file holds many episodes; reading it per episode would read it once per episode)."""
        wanted = self._wanted(keys)
        by_file: dict[str, list[EpisodeInfo]] = {}
        for ep in self.episodes:
            by_file.setdefault(ep.data_file, []).append(ep)
        for rel, eps in by_file.items():
            table = self._read_data_file(rel, wanted)
            for ep in eps:
                yield ep, self._episode_arrays(ep, table, wanted)

    def _wanted(self, keys: Sequence[str] | None) -> list[str]:
        wanted = list(keys) if keys is not None else [k for k in self.features if self.features[k]["dtype"] != "video"]
        unknown = [k for k in wanted if k not in self.features]
        if unknown:
            raise KeyError(f"unknown features {unknown}; the dataset has {sorted(self.features)}")
        return wanted

    def _read_data_file(self, rel: str, wanted: Sequence[str]) -> Any:
        import pyarrow.parquet as pq

        path = self.root / rel
        if not path.exists():
            raise DatasetError(f"data file {path} is missing")
        names = set(pq.read_schema(path).names)
        if "episode_index" not in names:
            raise DatasetError(f"{path} lacks the column 'episode_index'")
        columns = [c for c in (*wanted, "episode_index", "task_index") if c in names]
        return pq.read_table(path, columns=list(dict.fromkeys(columns)))

    def _episode_arrays(self, ep: EpisodeInfo, table: Any, wanted: Sequence[str]) -> dict[str, Any]:
        import pyarrow.compute as pc

        path = self.root / ep.data_file
        if self.major == 3:
            table = table.filter(pc.equal(table["episode_index"], ep.index))
        if table.num_rows != ep.length:
            raise DatasetError(f"episode {ep.index}: meta says length {ep.length} but {path} holds {table.num_rows} rows")
        cols = set(table.column_names)
        out: dict[str, Any] = {}
        for key in wanted:
            feat = self.features[key]
            if feat["dtype"] == "video":
                out[key] = self._read_video(key, ep)
                continue
            if key not in cols:
                raise DatasetError(f"{path} lacks the column {key!r} declared in meta/info.json features")
            values = table[key].to_pylist()
            if feat["dtype"] == "image":
                frames = np.stack([decode_image(v, self.root) for v in values])
                shape = tuple(feat["shape"])
                if frames.shape[1:] != _hwc(shape, feat):
                    raise DatasetError(f"{key}: frames have shape {frames.shape[1:]}, info.json declares {shape}")
                out[key] = frames
            else:
                arr = np.asarray(values, dtype=np.dtype(feat["dtype"]) if feat["dtype"] != "string" else object)
                declared = tuple(int(s) for s in feat["shape"])
                if arr.dtype != object and arr.shape[1:] != declared and not (declared == (1,) and arr.ndim == 1):
                    raise DatasetError(f"{key}: rows have shape {arr.shape[1:]}, info.json declares {declared}")
                out[key] = arr
        if "task_index" in cols:
            idx = table["task_index"].to_pylist()
            missing = sorted({i for i in idx if i not in self.tasks})
            if missing:
                raise DatasetError(f"episode {ep.index} uses task_index {missing} that meta/tasks does not define")
            out["task"] = [self.tasks[i] for i in idx]
        elif ep.tasks:
            out["task"] = [ep.tasks[0]] * ep.length
        return out

    def _read_video(self, key: str, ep: EpisodeInfo) -> np.ndarray:
        template = self.info.get("video_path")
        if not template:
            raise DatasetError(f"feature {key!r} is a video but info.json has no video_path")
        chunks = int(self.info.get("chunks_size", 1000))
        if self.major == 2:
            rel = template.format(episode_chunk=ep.index // chunks, video_key=key, episode_index=ep.index)
        else:
            raise DatasetError("v3.0 video features (concatenated mp4 files) are not supported; use an *_image dataset")
        try:
            import av  # type: ignore[import-not-found]
        except ImportError:
            raise DatasetError(
                f"feature {key!r} is stored as video ({rel}); decoding needs PyAV (`pip install av`)"
            ) from None
        with av.open(str(self.root / rel)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        if len(frames) < ep.length:
            raise DatasetError(f"{rel}: {len(frames)} frames for an episode of length {ep.length}")
        return np.stack(frames[: ep.length])


def hwc_shape(feat: Mapping[str, Any]) -> tuple[int, ...]:
    """An image feature's declared shape as (H, W, C), whether info.json writes it channels-first or last."""
    return _hwc(tuple(int(x) for x in feat["shape"]), feat)


def _hwc(shape: tuple[int, ...], feat: Mapping[str, Any]) -> tuple[int, ...]:
    names = feat.get("names") or []
    if len(shape) == 3 and (list(names)[:1] == ["channels"] or (shape[0] == 3 and shape[2] != 3)):
        return (shape[1], shape[2], shape[0])
    return tuple(shape)


def aggregate_episode_stats(per_episode: Iterable[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Pool per-episode stats (v2.1 ``episodes_stats.jsonl``): weighted mean, pooled std, min/max."""
    acc: dict[str, list[Mapping[str, Any]]] = {}
    for st in per_episode:
        for key, s in st.items():
            acc.setdefault(key, []).append(s)
    out: dict[str, dict[str, Any]] = {}
    for key, rows in acc.items():
        if not all(k in r for r in rows for k in ("mean", "std", "count")):
            continue
        n = np.asarray([np.asarray(r["count"]).reshape(-1)[0] for r in rows], dtype=np.float64)
        means = np.stack([np.asarray(r["mean"], dtype=np.float64).reshape(-1) for r in rows])
        stds = np.stack([np.asarray(r["std"], dtype=np.float64).reshape(-1) for r in rows])
        w = n[:, None] / n.sum()
        mean = (w * means).sum(0)
        var = (w * (stds**2 + (means - mean) ** 2)).sum(0)
        entry: dict[str, Any] = {"mean": mean.tolist(), "std": np.sqrt(var).tolist(), "count": [int(n.sum())]}
        if all("min" in r and "max" in r for r in rows):
            entry["min"] = np.min(np.stack([np.asarray(r["min"]).reshape(-1) for r in rows]), 0).tolist()
            entry["max"] = np.max(np.stack([np.asarray(r["max"]).reshape(-1) for r in rows]), 0).tolist()
        out[key] = entry
    return out


# ---------------------------------------------------------------------------------------------- LeRobot write
IMAGE_STRUCT_FIELDS = (("bytes", "binary"), ("path", "string"))
LEROBOT_VERSIONS = ("v2.1", "v3.0")
INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                  "task_index": "int64"}


def image_stats(frames: np.ndarray, max_frames: int = 64) -> dict[str, Any]:
    """Per-channel statistics of uint8 frames [T, H, W, 3] scaled to [0, 1], shaped [3, 1, 1] as LeRobot
    stores them (on at most ``max_frames`` evenly spaced frames, as LeRobot subsamples)."""
    picked = frames[np.unique(np.linspace(0, len(frames) - 1, min(len(frames), max_frames)).astype(int))]
    st = compute_stats(picked.reshape(-1, picked.shape[-1]).astype(np.float32) / 255.0)
    return {k: (v if k == "count" else [[[x]] for x in v]) for k, v in st.items()} | {"count": [int(len(frames))]}


def _hf_features(features: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The Hugging Face ``datasets`` feature types LeRobot reads from a parquet file's schema metadata
    (without them an image column loads as a plain struct, not a decoded image)."""
    out: dict[str, Any] = {}
    for key, feat in features.items():
        if feat["dtype"] == "image":
            out[key] = {"_type": "Image"}
        elif list(feat["shape"]) == [1]:
            out[key] = {"dtype": feat["dtype"], "_type": "Value"}
        else:
            out[key] = {"feature": {"dtype": feat["dtype"], "_type": "Value"}, "length": int(np.prod(feat["shape"])),
                        "_type": "Sequence"}
    return out


class LeRobotWriter:
    """Write episodes in the LeRobot v2.1 (one parquet per episode) or v3.0 (many episodes per parquet
    file) layout, images inside the parquet (``dtype: image``), fps an integer, statistics for every
    feature (images per channel), and the parquet feature metadata LeRobot decodes images with."""

    def __init__(self, root: str | Path, fps: float, features: Mapping[str, Mapping[str, Any]], robot_type: str = "unknown",
                 chunks_size: int = 1000, version: str = "v2.1", data_file_size_mb: float = 100.0) -> None:
        self.root = Path(root)
        if (self.root / "meta" / "info.json").exists():
            raise FileExistsError(f"{self.root} already holds a dataset; choose another folder or delete it")
        if version not in LEROBOT_VERSIONS:
            raise ValueError(f"LeRobot version must be one of {LEROBOT_VERSIONS}, got {version!r}")
        if float(fps) != int(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive integer (LeRobot stores it as one), got {fps}")
        for name, feat in features.items():
            if feat.get("dtype") not in ("image", "float32", "float64", "int64"):
                raise ValueError(f"feature {name!r}: dtype must be image, float32, float64 or int64")
            if "shape" not in feat:
                raise ValueError(f"feature {name!r} lacks 'shape'")
        self.features = {k: dict(v) for k, v in features.items()}
        self.all_features = {**self.features, **{k: {"dtype": dt, "shape": [1], "names": None} for k, dt in INDEX_FEATURES.items()}}
        self.fps, self.robot_type, self.chunks_size, self.version = int(fps), robot_type, chunks_size, version
        self.data_file_size = data_file_size_mb * 2**20
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict[str, Any]] = []
        self.episode_stats: list[dict[str, Any]] = []
        self.total_frames = 0
        self._file: Any = None  # v3.0: the open parquet writer and its (chunk, file) index
        self._file_index = (0, 0)

    def _schema(self) -> Any:
        import pyarrow as pa

        fields = []
        for key, feat in self.all_features.items():
            if feat["dtype"] == "image":
                fields.append(pa.field(key, pa.struct([(n, getattr(pa, t)()) for n, t in IMAGE_STRUCT_FIELDS])))
            elif list(feat["shape"]) == [1]:
                fields.append(pa.field(key, pa.from_numpy_dtype(np.dtype(feat["dtype"]))))
            else:
                fields.append(pa.field(key, pa.list_(pa.from_numpy_dtype(np.dtype(feat["dtype"])), int(np.prod(feat["shape"])))))
        meta = {b"huggingface": json.dumps({"info": {"features": _hf_features(self.all_features)}}).encode()}
        return pa.schema(fields, metadata=meta)

    def add_episode(self, frames: Mapping[str, np.ndarray], task: str) -> int:
        import pyarrow as pa

        missing = [k for k in self.features if k not in frames]
        if missing:
            raise ValueError(f"episode lacks features {missing}")
        lengths = {k: len(frames[k]) for k in self.features}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"features of one episode must have equal lengths, got {lengths}")
        n = next(iter(lengths.values()))
        if n == 0:
            raise ValueError("an episode needs at least one frame")
        ep = len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        cols: dict[str, Any] = {}
        stats: dict[str, Any] = {}
        for key, feat in self.features.items():
            arr = np.asarray(frames[key])
            if feat["dtype"] == "image":
                if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != tuple(feat["shape"]):
                    raise ValueError(f"{key}: expected uint8 [T, {', '.join(map(str, feat['shape']))}], got {arr.dtype} {arr.shape}")
                cols[key] = [{"bytes": encode_png(im), "path": None} for im in arr]
                stats[key] = image_stats(arr)
            else:
                if arr.shape[1:] != tuple(feat["shape"]):
                    raise ValueError(f"{key}: expected rows of shape {tuple(feat['shape'])}, got {arr.shape[1:]}")
                arr = arr.astype(feat["dtype"])
                cols[key] = list(arr.reshape(n, -1))
                stats[key] = compute_stats(arr.reshape(n, -1))
        index = {"timestamp": (np.arange(n) / self.fps).astype(np.float32), "frame_index": np.arange(n, dtype=np.int64),
                 "episode_index": np.full(n, ep, dtype=np.int64),
                 "index": np.arange(self.total_frames, self.total_frames + n, dtype=np.int64),
                 "task_index": np.full(n, task_index, dtype=np.int64)}
        for key, values in index.items():
            cols[key] = values
            stats[key] = compute_stats(values.reshape(n, 1))
        schema = self._schema()
        table = pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in schema}, schema=schema)
        record = {"episode_index": ep, "tasks": [task], "length": n}
        if self.version == "v2.1":
            path = self.root / V21_DATA_PATH.format(episode_chunk=ep // self.chunks_size, episode_index=ep)
            path.parent.mkdir(parents=True, exist_ok=True)
            import pyarrow.parquet as pq

            pq.write_table(table, path)
        else:
            chunk, file = self._append_v3(table)
            record.update({"data/chunk_index": chunk, "data/file_index": file, "dataset_from_index": self.total_frames,
                           "dataset_to_index": self.total_frames + n})
        self.episodes.append(record)
        self.episode_stats.append({"episode_index": ep, "stats": stats})
        self.total_frames += n
        return ep

    def _append_v3(self, table: Any) -> tuple[int, int]:
        """Append an episode to the current data file; start the next file once this one passes the size limit."""
        import pyarrow.parquet as pq

        if self._file is not None and self._file[1].stat().st_size >= self.data_file_size:
            self._file[0].close()
            self._file = None
            chunk, file = self._file_index
            self._file_index = (chunk + 1, 0) if file + 1 >= self.chunks_size else (chunk, file + 1)
        if self._file is None:
            chunk, file = self._file_index
            path = self.root / V30_DATA_PATH.format(chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = (pq.ParquetWriter(path, table.schema), path)
        self._file[0].write_table(table)
        return self._file_index

    def _dataset_stats(self) -> dict[str, Any]:
        pooled = aggregate_episode_stats([e["stats"] for e in self.episode_stats])
        for key, st in pooled.items():  # q01/q99 of the pooled data: the frame-weighted mean of the episodes'
            w = np.asarray([e["stats"][key]["count"][0] for e in self.episode_stats], dtype=np.float64)
            for q in ("q01", "q99"):
                st[q] = (np.stack([np.asarray(e["stats"][key][q], dtype=np.float64).reshape(-1) for e in self.episode_stats])
                         * (w / w.sum())[:, None]).sum(0).tolist()
            if self.all_features[key]["dtype"] == "image":
                st.update({k: [[[x]] for x in v] for k, v in st.items() if k != "count"})
        return pooled

    def finalize(self) -> Path:
        meta = self.root / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        info: dict[str, Any] = {
            "codebase_version": self.version, "robot_type": self.robot_type, "total_episodes": len(self.episodes),
            "total_frames": self.total_frames, "total_tasks": len(self.tasks), "chunks_size": self.chunks_size,
            "fps": self.fps, "splits": {"train": f"0:{len(self.episodes)}"}, "video_path": None,
            "features": self.all_features,
        }
        if self.version == "v2.1":
            info.update(total_videos=0, data_path=V21_DATA_PATH,
                        total_chunks=(len(self.episodes) - 1) // self.chunks_size + 1 if self.episodes else 0)
            (meta / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in self.episodes))
            (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n"
                                                      for t, i in self.tasks.items()))
            (meta / "episodes_stats.jsonl").write_text("".join(json.dumps(e) + "\n" for e in self.episode_stats))
        else:
            if self._file is not None:
                self._file[0].close()
                self._file = None
            info.update(data_path=V30_DATA_PATH, data_files_size_in_mb=self.data_file_size / 2**20,
                        video_files_size_in_mb=200)
            self._write_v3_meta(meta)
        (meta / "stats.json").write_text(json.dumps(self._dataset_stats(), indent=1))
        (meta / "info.json").write_text(json.dumps(info, indent=2))
        return self.root

    def _write_v3_meta(self, meta: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # tasks.parquet: LeRobot writes a pandas frame indexed by the task string; say so in the pandas metadata
        names = list(self.tasks)
        pandas_meta = {"index_columns": ["task"], "column_indexes": [],
                       "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                    "numpy_type": "int64", "metadata": None},
                                   {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                    "numpy_type": "object", "metadata": None}],
                       "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
        tasks = pa.table({"task_index": pa.array([self.tasks[t] for t in names], pa.int64()), "task": pa.array(names)})
        pq.write_table(tasks.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()}), meta / "tasks.parquet")
        rows: dict[str, list[Any]] = {k: [e[k] for e in self.episodes] for k in self.episodes[0]} if self.episodes else {}
        rows["meta/episodes/chunk_index"] = [0] * len(self.episodes)
        rows["meta/episodes/file_index"] = [0] * len(self.episodes)
        for key in self.all_features:
            for stat in STAT_KEYS + ("count",):
                rows[f"stats/{key}/{stat}"] = [np.asarray(e["stats"][key][stat]).reshape(-1).tolist() for e in self.episode_stats]
        path = meta / "episodes" / "chunk-000" / "file-000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(rows), path)


# ---------------------------------------------------------------------------------------------- LIBERO HDF5
LIBERO_REQUIRED = ("actions", "obs/agentview_rgb")


def read_libero_hdf5(path: str | Path, rotate_180: bool = False) -> list[dict[str, Any]]:
    """Episodes of one LIBERO ``<task>_demo.hdf5`` file: ``image`` (agentview), ``wrist_image`` (if present),
    ``state`` (ee_pos 3 + ee_ori 3 + gripper_states 2 when present), ``actions`` [T, 7], ``task``."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LIBERO file {path} does not exist")
    episodes: list[dict[str, Any]] = []
    with h5py.File(path, "r") as f:
        if "data" not in f:
            raise DatasetError(f"{path} lacks the group 'data' (expected LIBERO's data/demo_i layout)")
        data = f["data"]
        task = _libero_instruction(data.attrs, path)
        names = sorted((k for k in data.keys() if k.startswith("demo_")), key=lambda k: int(k.split("_")[1]))
        if not names:
            raise DatasetError(f"{path}: 'data' holds no demo_i groups")
        for name in names:
            demo = data[name]
            missing = [k for k in LIBERO_REQUIRED if k not in demo]
            if missing:
                raise DatasetError(f"{path}:{name} lacks {missing} (expected keys like obs/agentview_rgb, actions)")
            actions = np.asarray(demo["actions"], dtype=np.float32)
            if actions.ndim != 2:
                raise DatasetError(f"{path}:{name}/actions must be [T, D], got shape {actions.shape}")
            t = actions.shape[0]
            ep: dict[str, Any] = {"actions": actions, "task": task, "name": name}
            image_keys = {"image": "obs/agentview_rgb", "wrist_image": "obs/eye_in_hand_rgb"}
            for out_key, key in image_keys.items():
                if key in demo:
                    img = np.asarray(demo[key])
                    if img.ndim != 4 or img.shape[-1] != 3 or img.dtype != np.uint8:
                        raise DatasetError(f"{path}:{name}/{key} must be uint8 [T, H, W, 3], got {img.dtype} {img.shape}")
                    ep[out_key] = img[:, ::-1, ::-1].copy() if rotate_180 else img
            parts = [k for k in ("obs/ee_pos", "obs/ee_ori", "obs/gripper_states") if k in demo]
            if parts:
                ep["state"] = np.concatenate([np.asarray(demo[k], dtype=np.float32).reshape(t if len(demo[k]) == t else -1, -1)
                                              for k in parts], axis=1) if all(len(demo[k]) == t for k in parts) else None
            for key in (*image_keys.values(), *parts, "rewards", "dones"):
                if key in demo and len(demo[key]) != t:
                    raise DatasetError(f"{path}:{name}: {key} has {len(demo[key])} steps but actions has {t}")
            if ep.get("state") is None:
                ep.pop("state", None)
            episodes.append(ep)
    return episodes


def _libero_instruction(attrs: Any, path: Path) -> str:
    info = attrs.get("problem_info")
    if info is not None:
        if isinstance(info, bytes):
            info = info.decode()
        try:
            lang = json.loads(info).get("language_instruction")
            if lang:
                return str(lang).strip()
        except (json.JSONDecodeError, AttributeError):
            pass
    stem = path.stem.removesuffix("_demo")
    words = [w for w in stem.split("_") if w and not w.isupper()]  # drop the SCENE prefix ("KITCHEN_SCENE3")
    return " ".join(words)


# ---------------------------------------------------------------------------------------------- training sampler
@dataclass
class ChunkData:
    """Flat frame arrays for chunked behaviour cloning (everything in memory)."""

    images: np.ndarray  # uint8 [N, H, W, 3], or [N, S, H, W, 3] for S cameras
    actions: np.ndarray  # float32 [N, A] (normalised)
    episode: np.ndarray  # int64 [N]
    task_id: np.ndarray  # int64 [N]
    tasks: list[str]
    states: np.ndarray | None = None  # float32 [N, S] (normalised)

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ("actions", "episode", "task_id"):
            if len(getattr(self, name)) != n:
                raise DatasetError(f"ChunkData: {name} has {len(getattr(self, name))} rows, images has {n}")
        if self.states is not None and len(self.states) != n:
            raise DatasetError(f"ChunkData: states has {len(self.states)} rows, images has {n}")
        # index of the last frame of each frame's episode (frames of an episode are contiguous)
        last = np.zeros(n, dtype=np.int64)
        if n:
            ends = np.flatnonzero(np.diff(self.episode) != 0).tolist() + [n - 1]
            start = 0
            for e in ends:
                last[start : e + 1] = e
                start = e + 1
        self.last = last

    def __len__(self) -> int:
        return len(self.images)

    def chunk(self, idx: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Targets [B, horizon, A] (past the episode end: the last action repeated) and a validity mask."""
        steps = idx[:, None] + np.arange(horizon)[None]
        valid = steps <= self.last[idx][:, None]
        steps = np.minimum(steps, self.last[idx][:, None])
        return self.actions[steps], valid.astype(np.float32)


TrainingArrays = tuple[np.ndarray, np.ndarray, "np.ndarray | None", np.ndarray, list[str], np.ndarray]


def load_lerobot_for_training(
    root: str | Path, image_key: str | Sequence[str], action_key: str = "action", state_key: str | None = None,
    image_size: int | None = None,
) -> TrainingArrays:
    """(images, actions, states, episode ids, task strings, per-frame task ids) of a whole dataset.

    ``image_key`` names one camera (images [N, H, W, 3]) or several (images [N, S, H, W, 3], in order).
    ``image_size`` resizes frames (episode by episode, so a 256-px dataset never sits in memory whole)."""
    ds = LeRobotDataset(root)
    image_keys = [image_key] if isinstance(image_key, str) else list(image_key)
    for key in (*image_keys, action_key, *([state_key] if state_key else [])):
        if key not in ds.features:
            raise DatasetError(f"{root}: feature {key!r} not found; the dataset has {sorted(ds.features)}")
    keys = [*image_keys, action_key] + ([state_key] if state_key else [])
    episodes = []
    for ep, d in ds.iter_episodes(keys):
        views = [d[k] for k in image_keys]
        if len({v.shape for v in views}) != 1:
            raise DatasetError(f"{root}: episode {ep.index} cameras differ in shape: "
                               f"{ {k: v.shape for k, v in zip(image_keys, views)} }")
        views = [resize_frames(v, image_size) for v in views]
        episodes.append({"images": views[0] if isinstance(image_key, str) else np.stack(views, axis=1),
                         "action": np.asarray(d[action_key], dtype=np.float32).reshape(ep.length, -1),
                         "state": np.asarray(d[state_key], dtype=np.float32).reshape(ep.length, -1) if state_key else None,
                         "index": ep.index, "task": d.get("task") or [""] * ep.length})
    if not episodes:
        raise DatasetError(f"{root} holds no episodes")
    return _stack_episodes(episodes)


def _stack_episodes(episodes: list[dict[str, Any]]) -> TrainingArrays:
    task_names: dict[str, int] = {}
    task_ids = [np.asarray([task_names.setdefault(t, len(task_names)) for t in e["task"]], dtype=np.int64) for e in episodes]
    with_state = episodes[0]["state"] is not None
    return (np.concatenate([e["images"] for e in episodes]), np.concatenate([e["action"] for e in episodes]),
            np.concatenate([e["state"] for e in episodes]) if with_state else None,
            np.concatenate([np.full(len(e["action"]), e["index"], dtype=np.int64) for e in episodes]),
            list(task_names), np.concatenate(task_ids))


#: LIBERO HDF5 arrays under the column names of LeRobot's ``libero_*_image`` datasets
LIBERO_HDF5_COLUMNS = {"observation.images.image": "image", "observation.images.wrist_image": "wrist_image",
                       "observation.state": "state", "action": "actions"}


def libero_hdf5_files(path: str | Path) -> list[Path]:
    """``path`` itself (a ``*.hdf5`` file) or the ``*.hdf5`` files in a folder (a suite: one file per task)."""
    path = Path(path)
    if path.is_file() and path.suffix in (".hdf5", ".h5"):
        return [path]
    files = sorted(path.glob("*.hdf5")) if path.is_dir() else []
    return files


def load_libero_hdf5_for_training(
    path: str | Path, image_keys: Sequence[str], action_key: str = "action", state_key: str | None = None,
    image_transform: str = "rot180", image_size: int | None = None,
) -> TrainingArrays:
    """LIBERO's own HDF5 demos as training arrays, addressed by the LeRobot column names
    (``observation.images.image`` = agentview, ``observation.images.wrist_image`` = eye-in-hand,
    ``observation.state`` = ee_pos + ee_ori + gripper_states, ``action``). Frames are raw renders
    (upside down), so ``image_transform`` turns them the way the policy will see the simulator."""
    files = libero_hdf5_files(path)
    if not files:
        raise DatasetError(f"{path} is neither a LIBERO .hdf5 file nor a folder holding any")
    for key in (*image_keys, action_key, *([state_key] if state_key else [])):
        if key not in LIBERO_HDF5_COLUMNS:
            raise DatasetError(f"LIBERO HDF5 columns are {sorted(LIBERO_HDF5_COLUMNS)}; got {key!r}")
    episodes = []
    for f in files:
        for ep in read_libero_hdf5(f):
            missing = [k for k in (*image_keys, *([state_key] if state_key else [])) if LIBERO_HDF5_COLUMNS[k] not in ep]
            if missing:
                raise DatasetError(f"{f}:{ep['name']} has no data for {missing}")
            views = [resize_frames(transform_image(ep[LIBERO_HDF5_COLUMNS[k]], image_transform), image_size) for k in image_keys]
            n = len(ep["actions"])
            episodes.append({"images": np.stack(views, axis=1), "action": ep["actions"],
                             "state": ep["state"] if state_key else None, "index": len(episodes), "task": [ep["task"]] * n})
    return _stack_episodes(episodes)


def load_training_data(path: str | Path, image_keys: Sequence[str], action_key: str = "action",
                       state_key: str | None = None, image_transform: str = "rot180",
                       image_size: int | None = None) -> TrainingArrays:
    """A LeRobot dataset folder (v2.x / v3.0) or LIBERO HDF5 demos (a file or a folder of them);
    images [N, S, H, W, 3] in the order of ``image_keys``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training data {path} does not exist (data.path, or collect.dataset when it is empty)")
    if (path / "meta" / "info.json").exists():
        return load_lerobot_for_training(path, list(image_keys), action_key, state_key, image_size)
    if libero_hdf5_files(path):
        return load_libero_hdf5_for_training(path, image_keys, action_key, state_key, image_transform, image_size)
    raise DatasetError(f"{path} is neither a LeRobot dataset (meta/info.json) nor LIBERO HDF5 demos (*.hdf5)")


# ---------------------------------------------------------------------------------------------- frames
IMAGE_TRANSFORMS = ("rot180", "flip_vertical", "none")


def transform_image(frames: np.ndarray, name: str) -> np.ndarray:
    """Turn frames [..., H, W, 3]: ``rot180`` (LeRobot's LIBERO sets, openpi), ``flip_vertical``, ``none``."""
    if name == "rot180":
        return frames[..., ::-1, ::-1, :]
    if name == "flip_vertical":
        return frames[..., ::-1, :, :]
    if name == "none":
        return frames
    raise ValueError(f"unknown image transform {name!r}; choose one of {IMAGE_TRANSFORMS}")


def resize_frames(frames: np.ndarray, size: int | None) -> np.ndarray:
    """Frames [..., H, W, 3] resized to size×size (bilinear, antialiased); unchanged when already that size."""
    frames = np.ascontiguousarray(frames)
    if size is None or frames.shape[-3:-1] == (size, size):
        return frames
    from PIL import Image

    flat = frames.reshape(-1, *frames.shape[-3:])
    out = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in flat])
    return out.reshape(*frames.shape[:-3], size, size, 3)
