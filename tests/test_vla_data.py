"""VLA data: LeRobot v2.1 / v3.0 fixtures built by hand, the writer, LIBERO HDF5, normalisation."""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

pa = importlib.import_module("pyarrow")  # the test extras install it; a missing one fails
pq = importlib.import_module("pyarrow.parquet")  # the test extras install it; a missing one fails
h5py = importlib.import_module("h5py")  # the test extras install it; a missing one fails

from PIL import Image  # noqa: E402

from atlasva.vla.data import (  # noqa: E402
    ChunkData,
    DatasetError,
    LeRobotDataset,
    LeRobotWriter,
    Normalizer,
    compute_stats,
    read_libero_hdf5,
)

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _png(seed: int, size: int = 8) -> tuple[bytes, np.ndarray]:
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue(), img


def _features() -> dict:
    return {
        "observation.images.image": {"dtype": "image", "shape": [8, 8, 3], "names": ["height", "width", "channel"]},
        "observation.state": {"dtype": "float32", "shape": [8], "names": None},
        "action": {"dtype": "float32", "shape": [7], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def _frames_table(episode: int, length: int, start: int, task_index: int) -> tuple[pa.Table, list[np.ndarray]]:
    pngs = [_png(1000 * episode + t) for t in range(length)]
    actions = np.arange(length * 7, dtype=np.float32).reshape(length, 7) + 100 * episode
    table = pa.table({
        "observation.images.image": pa.array([{"bytes": b, "path": None} for b, _ in pngs], type=IMAGE_STRUCT),
        "observation.state": pa.array(list(np.ones((length, 8), np.float32) * episode), type=pa.list_(pa.float32(), 8)),
        "action": pa.array(list(actions), type=pa.list_(pa.float32(), 7)),
        "timestamp": pa.array(np.arange(length, dtype=np.float32) / 10),
        "frame_index": pa.array(np.arange(length, dtype=np.int64)),
        "episode_index": pa.array(np.full(length, episode, dtype=np.int64)),
        "index": pa.array(np.arange(start, start + length, dtype=np.int64)),
        "task_index": pa.array(np.full(length, task_index, dtype=np.int64)),
    })
    return table, [img for _, img in pngs]


def build_v21(root: Path, lengths: tuple[int, ...] = (3, 4)) -> list[list[np.ndarray]]:
    """LeRobot v2.1, following the documented layout (physical-intelligence/libero style)."""
    (root / "meta").mkdir(parents=True)
    info = {
        "codebase_version": "v2.1", "robot_type": "panda", "total_episodes": len(lengths), "total_frames": sum(lengths),
        "total_tasks": 2, "total_videos": 0, "total_chunks": 1, "chunks_size": 1000, "fps": 10,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": None, "features": _features(),
    }
    (root / "meta" / "info.json").write_text(json.dumps(info))
    tasks = ["put the bowl on the plate", "open the drawer"]
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks)))
    eps, stats, images = [], [], []
    start = 0
    for e, n in enumerate(lengths):
        table, imgs = _frames_table(e, n, start, e % 2)
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        eps.append({"episode_index": e, "tasks": [tasks[e % 2]], "length": n})
        act = np.asarray(table["action"].to_pylist(), dtype=np.float64)
        stats.append({"episode_index": e, "stats": {"action": {
            "mean": act.mean(0).tolist(), "std": act.std(0).tolist(), "min": act.min(0).tolist(),
            "max": act.max(0).tolist(), "count": [n]}}})
        images.append(imgs)
        start += n
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    (root / "meta" / "episodes_stats.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stats))
    return images


def build_v30(root: Path) -> list[list[np.ndarray]]:
    """LeRobot v3.0: many episodes per data file, episodes and tasks as parquet."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    info = {
        "codebase_version": "v3.0", "robot_type": "panda", "total_episodes": 2, "total_frames": 5, "total_tasks": 2,
        "chunks_size": 1000, "fps": 10, "splits": {"train": "0:2"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": _features(),
    }
    (root / "meta" / "info.json").write_text(json.dumps(info))
    t0, i0 = _frames_table(0, 2, 0, 1)
    t1, i1 = _frames_table(1, 3, 2, 0)
    pq.write_table(pa.concat_tables([t0, t1]), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.table({
        "episode_index": [0, 1], "tasks": [["open the drawer"], ["put the bowl on the plate"]], "length": [2, 3],
        "data/chunk_index": [0, 0], "data/file_index": [0, 0], "dataset_from_index": [0, 2], "dataset_to_index": [2, 5],
    }), root / "meta/episodes/chunk-000/file-000.parquet")
    # pandas writes the task strings as the (unnamed) index column
    pq.write_table(pa.table({"task_index": [0, 1], "__index_level_0__": ["put the bowl on the plate", "open the drawer"]}),
                   root / "meta/tasks.parquet")
    (root / "meta" / "stats.json").write_text(json.dumps({"action": compute_stats(np.zeros((5, 7)))}))
    return [i0, i1]


def test_lerobot_v21_fixture_reads(tmp_path: Path) -> None:
    images = build_v21(tmp_path)
    ds = LeRobotDataset(tmp_path)
    assert ds.version == "v2.1" and len(ds) == 2 and ds.num_frames == 7 and ds.fps == 10
    ep = ds.read_episode(1)
    assert ep["observation.images.image"].shape == (4, 8, 8, 3)
    assert ep["observation.images.image"].dtype == np.uint8
    np.testing.assert_array_equal(ep["observation.images.image"], np.stack(images[1]))
    assert ep["action"].shape == (4, 7) and ep["action"][0, 0] == 100.0
    assert ep["task"] == ["open the drawer"] * 4
    # v2.1 per-episode stats are pooled into dataset stats
    all_actions = np.concatenate([ds.read_episode(e)["action"] for e in (0, 1)]).astype(np.float64)
    np.testing.assert_allclose(ds.stats["action"]["mean"], all_actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.stats["action"]["std"], all_actions.std(0), rtol=1e-6)


def test_lerobot_v30_fixture_reads(tmp_path: Path) -> None:
    images = build_v30(tmp_path)
    ds = LeRobotDataset(tmp_path)
    assert ds.version == "v3.0" and [e.length for e in ds.episodes] == [2, 3]
    ep = ds.read_episode(1, ["observation.images.image", "action"])
    np.testing.assert_array_equal(ep["observation.images.image"], np.stack(images[1]))
    assert ep["action"][0, 0] == 100.0
    assert ep["task"] == ["put the bowl on the plate"] * 3
    assert ds.tasks == {0: "put the bowl on the plate", 1: "open the drawer"}


def test_lerobot_bad_datasets_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="meta/info.json is missing"):
        LeRobotDataset(tmp_path)
    build_v21(tmp_path / "a")
    eps = (tmp_path / "a/meta/episodes.jsonl").read_text().replace('"length": 4', '"length": 5')
    (tmp_path / "a/meta/episodes.jsonl").write_text(eps)
    with pytest.raises(DatasetError, match="length 5 but .* holds 4 rows"):
        LeRobotDataset(tmp_path / "a").read_episode(1)
    build_v21(tmp_path / "b")
    info = json.loads((tmp_path / "b/meta/info.json").read_text())
    del info["features"]
    (tmp_path / "b/meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="'features'"):
        LeRobotDataset(tmp_path / "b")
    build_v21(tmp_path / "c")
    info = json.loads((tmp_path / "c/meta/info.json").read_text())
    info["features"]["observation.images.wrist_image"] = {"dtype": "image", "shape": [8, 8, 3], "names": None}
    (tmp_path / "c/meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="lacks the column 'observation.images.wrist_image'"):
        LeRobotDataset(tmp_path / "c").read_episode(0)
    with pytest.raises(KeyError, match="episode 9"):
        LeRobotDataset(tmp_path / "c").read_episode(9)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_writer_round_trip(tmp_path: Path, version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    feats = {"observation.image": {"dtype": "image", "shape": [8, 8, 3]}, "action": {"dtype": "float32", "shape": [4]}}
    # v3.0: a tiny size limit puts the second episode in a second data file
    w = LeRobotWriter(tmp_path / "ds", fps=20, features=feats, version=version, data_file_size_mb=1e-4)
    rng = np.random.default_rng(0)
    eps = [(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.standard_normal((n, 4)).astype(np.float32)) for n in (3, 5)]
    for i, (img, act) in enumerate(eps):
        w.add_episode({"observation.image": img, "action": act}, task=f"task {i % 2}")
    with pytest.raises(ValueError, match="equal lengths"):
        w.add_episode({"observation.image": eps[0][0], "action": eps[1][1]}, task="x")
    w.finalize()
    ds = LeRobotDataset(tmp_path / "ds")
    assert ds.info["total_frames"] == 8 and ds.tasks == {0: "task 0", 1: "task 1"}
    for i, (img, act) in enumerate(eps):
        ep = ds.read_episode(i)
        np.testing.assert_array_equal(ep["observation.image"], img)
        np.testing.assert_array_equal(ep["action"], act)
    np.testing.assert_allclose(ds.stats["action"]["mean"], np.concatenate([a for _, a in eps]).mean(0), rtol=1e-5)
    with pytest.raises(FileExistsError):
        LeRobotWriter(tmp_path / "ds", fps=20, features=feats)
    # what LeRobot needs: fps an integer, stats for every feature (images per channel, [3, 1, 1], in [0, 1]),
    # and the datasets feature types in the parquet metadata (images decode as images)
    assert ds.version == version and isinstance(ds.info["fps"], int)
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())
    assert set(stats) == {"observation.image", "action", "timestamp", "frame_index", "episode_index", "index", "task_index"}
    pixels = np.concatenate([i for i, _ in eps]).reshape(-1, 3) / 255.0
    assert np.asarray(stats["observation.image"]["mean"]).shape == (3, 1, 1)
    np.testing.assert_allclose(np.asarray(stats["observation.image"]["mean"]).ravel(), pixels.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(stats["observation.image"]["max"]).ravel(), pixels.max(0))
    files = sorted((tmp_path / "ds/data").rglob("*.parquet"))
    assert len(files) == 2
    hf = json.loads(pq.read_schema(files[0]).metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.image"] == {"_type": "Image"} and hf["action"]["length"] == 4 and hf["index"]["_type"] == "Value"
    # reading the whole dataset reads each data file once
    reads: list[str] = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    assert [e.index for e, _ in ds.iter_episodes(["action"])] == [0, 1]
    assert sorted(reads) == [str(f) for f in files]
    with pytest.raises(ValueError, match="positive integer"):
        LeRobotWriter(tmp_path / "other", fps=12.5, features=feats)


def test_v30_reading_reads_a_shared_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feats = {"action": {"dtype": "float32", "shape": [2]}}
    w = LeRobotWriter(tmp_path / "ds", fps=10, features=feats, version="v3.0")
    for n in (2, 3, 4):
        w.add_episode({"action": np.full((n, 2), n, np.float32)}, task="t")
    w.finalize()
    reads: list[str] = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))

    ds = LeRobotDataset(tmp_path / "ds")
    reads.clear()
    lengths = [len(d["action"]) for _, d in ds.iter_episodes(["action"])]
    assert lengths == [2, 3, 4] and len(reads) == 1  # three episodes, one shared file, one read


def test_image_transforms_and_resize() -> None:
    from atlasva.vla.data import resize_frames, transform_image

    x = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    np.testing.assert_array_equal(transform_image(x, "rot180")[0, 0], x[1, 1])
    np.testing.assert_array_equal(transform_image(x, "flip_vertical")[0, 1], x[1, 1])
    np.testing.assert_array_equal(transform_image(x, "none"), x)
    with pytest.raises(ValueError, match="rot180"):
        transform_image(x, "upside")
    flat = np.full((3, 4, 4, 3), 7, np.uint8)
    assert resize_frames(flat, 2).shape == (3, 2, 2, 3) and (resize_frames(flat, 2) == 7).all()
    assert resize_frames(flat, 4) is not None and resize_frames(flat, None).shape == (3, 4, 4, 3)


def test_normalizer_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    actions = rng.normal(2.0, 3.0, (500, 7)).astype(np.float32)
    actions[:, 6] = np.sign(actions[:, 6])  # gripper ±1, kept raw
    stats = {"action": compute_stats(actions)}
    for mode in ("mean_std", "bounds"):
        norm = Normalizer(stats, mode=mode, masks={"action": [True] * 6 + [False]})
        y = norm.normalize("action", actions)
        np.testing.assert_array_equal(y[:, 6], actions[:, 6])
        if mode == "mean_std":
            np.testing.assert_allclose(y[:, :6].mean(0), 0, atol=1e-5)
            np.testing.assert_allclose(norm.unnormalize("action", y), actions, rtol=1e-5, atol=1e-5)
        else:
            assert y.min() >= -1 and y.max() <= 1
            inside = np.all((actions >= stats["action"]["q01"]) & (actions <= stats["action"]["q99"]), axis=1)
            np.testing.assert_allclose(norm.unnormalize("action", y)[inside], actions[inside], rtol=1e-5, atol=1e-5)
        norm.save(tmp_path / f"{mode}.json")
        again = Normalizer.load(tmp_path / f"{mode}.json")
        np.testing.assert_array_equal(again.normalize("action", actions), y)
    with pytest.raises(ValueError, match="3 dims"):
        Normalizer({"action": compute_stats(actions[:, :3])}).normalize("action", actions)
    with pytest.raises(KeyError, match="observation.state"):
        Normalizer(stats).normalize("observation.state", actions)


def _libero_file(path: Path, t: int = 4, drop: str | None = None, short: str | None = None) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": "pick up the black bowl and place it on the plate"})
        data.attrs["num_demos"] = 2
        for d in range(2):
            g = data.create_group(f"demo_{d}")
            items = {
                "actions": rng.standard_normal((t, 7)).astype(np.float64),
                "obs/agentview_rgb": rng.integers(0, 256, (t, 16, 16, 3), dtype=np.uint8),
                "obs/eye_in_hand_rgb": rng.integers(0, 256, (t, 16, 16, 3), dtype=np.uint8),
                "obs/ee_pos": rng.standard_normal((t, 3)), "obs/ee_ori": rng.standard_normal((t, 3)),
                "obs/gripper_states": rng.standard_normal((t, 2)), "obs/joint_states": rng.standard_normal((t, 7)),
                "rewards": np.zeros(t), "dones": np.r_[np.zeros(t - 1), 1.0],
            }
            for key, value in items.items():
                if key == drop:
                    continue
                g.create_dataset(key, data=value[:-1] if key == short else value)
            g.attrs["num_samples"] = t


def test_libero_hdf5_reader(tmp_path: Path) -> None:
    path = tmp_path / "KITCHEN_SCENE3_turn_on_the_stove_demo.hdf5"
    _libero_file(path)
    eps = read_libero_hdf5(path)
    assert len(eps) == 2
    ep = eps[0]
    assert ep["task"] == "pick up the black bowl and place it on the plate"
    assert ep["image"].shape == (4, 16, 16, 3) and ep["wrist_image"].dtype == np.uint8
    assert ep["state"].shape == (4, 8) and ep["actions"].shape == (4, 7) and ep["actions"].dtype == np.float32
    rotated = read_libero_hdf5(path, rotate_180=True)[0]["image"]
    np.testing.assert_array_equal(rotated, ep["image"][:, ::-1, ::-1])
    _libero_file(tmp_path / "missing.hdf5", drop="actions")
    with pytest.raises(DatasetError, match="lacks \\['actions'\\]"):
        read_libero_hdf5(tmp_path / "missing.hdf5")
    _libero_file(tmp_path / "short.hdf5", short="obs/eye_in_hand_rgb")
    with pytest.raises(DatasetError, match="eye_in_hand_rgb has 3 steps but actions has 4"):
        read_libero_hdf5(tmp_path / "short.hdf5")


def test_chunk_targets_pad_at_episode_end() -> None:
    actions = np.arange(10, dtype=np.float32)[:, None].repeat(2, 1)
    data = ChunkData(np.zeros((10, 4, 4, 3), np.uint8), actions, np.array([0] * 4 + [1] * 6), np.zeros(10, np.int64), ["t"])
    target, valid = data.chunk(np.array([2, 4]), 4)
    np.testing.assert_array_equal(target[0, :, 0], [2, 3, 3, 3])
    np.testing.assert_array_equal(valid[0], [1, 1, 0, 0])
    np.testing.assert_array_equal(target[1, :, 0], [4, 5, 6, 7])
    with pytest.raises(DatasetError, match="actions has 9 rows"):
        ChunkData(np.zeros((10, 4, 4, 3), np.uint8), actions[:9], np.zeros(10, np.int64), np.zeros(10, np.int64), ["t"])
