"""MuJoCo offscreen rendering and the Meta-World closed loop (needs the `sim` extra and libosmesa6)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

torch = importlib.import_module("torch")  # the test extras install it; a missing one fails
mujoco = importlib.import_module("mujoco")  # the test extras install it; a missing one fails
importlib.import_module("metaworld")  # installed by `make test`

from atlasva.sim.render import OffscreenRenderer  # noqa: E402
from atlasva.vla.model import build_model, make_geometry  # noqa: E402
from atlasva.vla.sim import MetaWorldTask, VLAPolicy, run_episode  # noqa: E402

torch.set_num_threads(1)

XML = """
<mujoco>
  <visual><global offwidth="64" offheight="64"/></visual>
  <worldbody>
    <light pos="0 0 3"/>
    <camera name="top" pos="0 0 2" xyaxes="1 0 0 0 1 0"/>
    <geom type="plane" size="1 1 0.1" rgba="0.2 0.2 0.2 1"/>
    <body pos="0 0 0.2"><freejoint/><geom type="box" size="0.2 0.2 0.2" rgba="1 0 0 1"/></body>
  </worldbody>
</mujoco>
"""


def test_offscreen_renderer_on_a_plain_model() -> None:
    model = mujoco.MjModel.from_xml_string(XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    with OffscreenRenderer(model, 32, 24, "top") as r:
        img = r.render(data)
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8
    centre = img[10:14, 14:18].reshape(-1, 3).mean(0)
    assert centre[0] > 2 * centre[1]  # the red box is in the middle of the frame
    with pytest.raises(ValueError, match="camera 'nope'"):
        OffscreenRenderer(model, 32, 32, "nope")
    with pytest.raises(ValueError, match="offscreen buffer"):
        OffscreenRenderer(model, 128, 128, "top")


def test_no_gl_context_is_a_clear_error() -> None:
    # `import mujoco` before MUJOCO_GL is set, on a machine without a display: mujoco picks glfw and
    # its own error ("an OpenGL platform library has not been loaded") does not say what to do.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    code = ("import mujoco\nfrom atlasva.sim.render import OffscreenRenderer\n"
            f"m = mujoco.MjModel.from_xml_string({XML!r})\nOffscreenRenderer(m, 32, 32, 'top')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "RuntimeError: could not create an offscreen OpenGL context" in out.stderr and "MUJOCO_GL=osmesa" in out.stderr


def test_closing_one_renderer_leaves_another_intact() -> None:
    # mujoco.Renderer.close() alone deletes its GL objects in whichever context is current, which
    # turned a second live renderer's frames into noise (seen with two Meta-World tasks in one process).
    model = mujoco.MjModel.from_xml_string(XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    first = OffscreenRenderer(model, 32, 32, "top")
    reference = first.render(data)
    second = OffscreenRenderer(model, 32, 32, "top")
    first.close()
    third = OffscreenRenderer(model, 32, 32, "top")
    np.testing.assert_array_equal(second.render(data), reference)
    np.testing.assert_array_equal(third.render(data), reference)
    second.close()
    np.testing.assert_array_equal(third.render(data), reference)
    third.close()


def test_metaworld_expert_and_one_closed_loop_episode() -> None:
    sim = MetaWorldTask("reach-v3", image_size=32, max_steps=150)
    try:
        # a seed fixes the goal; different seeds give different goals
        goals = [sim.reset(s)[-3:].copy() for s in (0, 0, 1)]
        np.testing.assert_array_equal(goals[0], goals[1])
        assert not np.allclose(goals[0], goals[2])
        frame = sim.image()
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8 and frame.std() > 0
        expert = run_episode(sim, None, "reach the red goal", seed=3, max_steps=150)
        assert expert["success"] and expert["steps"] < 150
        # reach-v3's obj_to_target is the distance its success test reads (≤ 0.05 m): the last, successful
        # step is the closest, and it is within the radius
        assert expert["min_obj_to_target"] == sim.obj_to_target <= 0.05

        geometry = make_geometry("tiny", image_size=32, patch_size=8, vision_dim=32, dim=32, heads=2, text_hidden=32,
                                 text_heads=2, text_kv_heads=1, text_intermediate=64, decoder_dim=32, decoder_heads=2,
                                 decoder_layers=1, chunk=4, action_dim=4, state_dim=4)
        model = build_model(geometry, seed=0)
        stats = {k: {"mean": [0.0] * 4, "std": [1.0] * 4, "q01": [-1.0] * 4, "q99": [1.0] * 4}
                 for k in ("action", "observation.state")}
        policy = VLAPolicy({f"model/{k}": v for k, v in model.state_dict().items()},
                           {"geometry": geometry.to_dict(), "normalizer": {"mode": "mean_std", "stats": stats}}, execute_steps=4)
        rec = run_episode(sim, policy, "reach the red goal", seed=100000, max_steps=12, keep_frames=True)
        assert rec["steps"] == 12 and rec["turns"] == 3 and len(rec.pop("_frames")) == 3
        assert isinstance(rec["success"], bool) and rec["chunk_latency_ms"] > 0
        # the closest approach over the episode: never above the last step's distance
        assert 0 < rec["min_obj_to_target"] <= sim.obj_to_target + 1e-9
        json.dumps(rec)
        with pytest.raises(ValueError, match="4-D"):
            sim.step(np.zeros(7))
    finally:
        sim.close()
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        MetaWorldTask("reach-v9")


def test_metaworld_level_hash_is_the_initial_state_to_the_millimetre() -> None:
    from atlasva.vla.sim import metaworld_level_hash

    obs = np.zeros(39)
    obs[:3], obs[4:7], obs[-3:] = [0.0, 0.6, 0.2], [0.1, 0.7, 0.02], [-0.05, 0.8, 0.25]
    base = metaworld_level_hash("reach-v3", obs)
    moved, jitter, negzero, other = obs.copy(), obs.copy(), obs.copy(), obs.copy()
    moved[-3] += 0.002  # the goal 2 mm away: another level
    jitter[-3] += 0.0001  # below the rounding: the same level
    negzero[0] = -0.0001  # rounds to -0.0, hashed as 0.000
    other[10] = 5.0  # not part of the initial placement (e.g. a second object's quaternion)
    assert metaworld_level_hash("reach-v3", moved) != base != metaworld_level_hash("push-v3", obs)
    assert metaworld_level_hash("reach-v3", jitter) == metaworld_level_hash("reach-v3", negzero) == base
    assert metaworld_level_hash("reach-v3", other) == base and len(base) == 16


@pytest.mark.parametrize("task", ["reach-v3", "drawer-open-v3"])
def test_first_frame_after_reset_shows_this_episode(task: str) -> None:
    # Meta-World moves the goal site / drawer in the model after its last forward pass; without a
    # forward pass in reset() the first frame showed the previous episode's goal and drawer.
    sim = MetaWorldTask(task, image_size=48)
    try:
        goal_site = mujoco.mj_name2id(sim.env.model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        for seed in (5, 6):
            obs = sim.reset(seed).copy()
            np.testing.assert_allclose(sim.env.data.site_xpos[goal_site], sim.env._target_pos, atol=1e-6)
            np.testing.assert_allclose(obs[:18], sim.env._get_curr_obs_combined_no_goal())  # hand, object: current
            first = sim.image()
            mujoco.mj_forward(sim.env.model, sim.env.data)
            np.testing.assert_array_equal(first, sim.image())
    finally:
        sim.close()


def test_parallel_collect_records_the_same_dataset(tmp_path: Path) -> None:
    from atlasva.config import load_config
    from atlasva.envs.registry import level_split
    from atlasva.vla.config import VLAConfig
    from atlasva.vla.data import load_lerobot_for_training
    from atlasva.vla.sim import collect, metaworld_levels, read_dataset_levels

    loaded = {}
    for workers in (1, 2):
        cfg, _ = load_config(VLAConfig, "metaworld-tiny", [
            "sim.image_size=32", "sim.cameras=[corner2]", "sim.tasks=[reach-v3,drawer-open-v3]", "sim.max_steps=120",
            "collect.episodes_per_task=1", "collect.action_noise=0.1",
            "collect.episodes_by_task={reach-v3: 3}",
            f"collect.dataset={tmp_path / str(workers)}", f"collect.workers={workers}"], subdir="vla")
        info = collect(cfg)
        assert info["total_episodes"] == 4  # 3 reach + 1 drawer
        loaded[workers] = load_lerobot_for_training(cfg.collect.dataset, ["observation.image"], "action", "observation.state")
    episodes, tasks, task_ids = loaded[1][3], loaded[1][4], loaded[1][5]
    per_task = {tasks[t]: len(set(episodes[task_ids == t].tolist())) for t in set(task_ids.tolist())}
    assert per_task == {"reach the red goal": 3, "open the drawer": 1}
    # demos only on train-split levels: reach-v3's seed 2 is a validation level (level_split of its hash), so skipped
    levels = read_dataset_levels(tmp_path / "1")
    assert [(r["task"], r["seed"]) for r in levels] == [("reach-v3", 0), ("reach-v3", 1), ("reach-v3", 3), ("drawer-open-v3", 0)]
    assert all(level_split(r["level_hash"], 0.25) == "train" for r in levels)
    assert level_split(metaworld_levels("reach-v3", "validation", 1, 2, 0.25)[0][1], 0.25) == "validation"
    assert read_dataset_levels(tmp_path / "2") == levels
    with pytest.raises(ValueError, match="not in sim.tasks"):
        collect(load_config(VLAConfig, "metaworld-tiny", ["collect.episodes_by_task={push-v3: 3}",
                                                          f"collect.dataset={tmp_path / 'x'}"], subdir="vla")[0])
    for a, b in zip(loaded[1], loaded[2]):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


@pytest.mark.parametrize("cameras", [["corner2"], ["corner2", "behindGripper"]])
def test_cli_collect_train_eval_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                      cameras: list[str]) -> None:
    from atlasva.vla.cli import vla_main
    from atlasva.vla.data import LeRobotDataset

    monkeypatch.chdir(tmp_path)
    cfg = Path(__file__).resolve().parents[1] / "configs" / "vla" / "metaworld-tiny.yaml"
    small = ["model.image_size=32", "model.patch_size=8", "model.dim=32", "model.heads=2", "model.vision_dim=32",
             "model.text_hidden=32", "model.text_heads=2", "model.text_kv_heads=1", "model.text_intermediate=64",
             "model.decoder_dim=32", "model.decoder_heads=2", "model.decoder_layers=1", "model.depth=1",
             "model.keypoint_map=16", "model.keypoints=2", "model.keypoint_channels=4", "sim.image_size=32", "sim.tasks=[reach-v3]", "sim.max_steps=60", "collect.episodes_per_task=1",
             "collect.episodes_by_task={reach-v3: 1}", "collect.action_noise=0.1",  # one demo, whatever the shipped counts
             f"collect.dataset={tmp_path / 'ds'}", "train.steps=2", "train.batch_size=4", "train.log_every=1",
             "train.checkpoint_every=2", "train.num_threads=1", "eval.episodes_per_task=1", "eval.num_threads=1",
             "train.lr=0.0003", "train.keypoint_lr=0.003",
             "eval.expert_baseline=false", "run.root=runs", f"sim.cameras=[{','.join(cameras)}]"]
    assert vla_main(["collect", str(cfg), *small]) == 0
    assert (tmp_path / "ds" / "meta" / "info.json").exists()
    image_features = sorted(k for k, f in LeRobotDataset(tmp_path / "ds").features.items() if f["dtype"] == "image")
    assert image_features == (["observation.image"] if len(cameras) == 1
                              else sorted(f"observation.images.{c}" for c in cameras))
    assert vla_main(["train", str(cfg), *small]) == 0
    assert vla_main(["eval", str(cfg), *small, "eval.max_steps=8"]) == 0
    (run,) = list((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    stage = summary["eval"]["sft"]
    assert stage["episodes"] == 1 and len(stage["success_ci95"]) == 2
    assert stage["per_task"]["reach-v3"]["episodes"] == 1
    assert (run / "episodes-sft.jsonl").exists() and (run / "contact-sft-reach-v3.png").exists()
    assert (run / "metrics.jsonl").read_text().count("train/loss") == 2
    # the keypoint stem trains at keypoint_lr: the schedule's lr × 10 in its own optimizer group
    groups = json.loads((sorted((run / "checkpoints").iterdir())[-1] / "state.json").read_text())["optimizer_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"]) and groups[0]["lr"] > 0
    # held out by level: the demo (seed 0, a train level) and the episode (the first validation level from
    # eval.seed_start: 100003) are recorded in levels.jsonl; the summary counts them
    assert summary["splits"] == {"train_levels": 1, "eval_levels": 1, "overlap": 0}
    assert summary["eval_seeds"] == {"reach-v3": [100003]} and stage["distinct_levels"] == 1
    played = json.loads((run / "episodes-sft.jsonl").read_text().splitlines()[0])
    lines = [json.loads(line) for line in (run / "levels.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["seed"]) for r in lines] == [("sft", 0), ("eval:sft", 100003)]
    assert lines[1]["level_hash"] == played["level_hash"] != lines[0]["level_hash"]
    sheet = Image.open(run / "contact-sft-reach-v3.png")
    assert sheet.size[0] == 8 * 32 * len(cameras)  # the views side by side, 8 columns
    # a checkpoint evaluated with other cameras than it was trained on: a clear error
    other = [*small[:-1], "sim.cameras=[corner3]" if len(cameras) > 1 else "sim.cameras=[corner2,corner3]"]
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    capsys.readouterr()
    assert vla_main(["eval", str(cfg), *other, "eval.max_steps=8", f"eval.checkpoint={ckpt}"]) == 1
    assert "trained on" in capsys.readouterr().err
    # validation levels that were trained on (a share the demos were not split by): refused before playing
    assert vla_main(["eval", str(cfg), *small, "sim.validation_share=0.9", "eval.seed_start=0", f"eval.checkpoint={ckpt}"]) == 1
    assert "1 of the evaluation levels were trained on" in capsys.readouterr().err
    # a checkpoint that does not say what it trained on cannot be evaluated as held out
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "train_levels"}))
    assert vla_main(["eval", str(cfg), *small, "eval.max_steps=8"]) == 1
    assert "records no training levels" in capsys.readouterr().err
    # demos without a level record (recorded before splits existed): re-collect
    (tmp_path / "ds" / "meta" / "atlasva_levels.jsonl").unlink()
    assert vla_main(["train", str(cfg), *small, "train.steps=4"]) == 1
    assert "re-collect with collect.overwrite=true" in capsys.readouterr().err
    # bad input: an unknown key names the nearest valid one
    assert vla_main(["train", str(cfg), "train.stepz=3"]) == 2


def test_policy_pops_a_queue_of_executed_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    # chunk 4, execute 3: queries at steps 0, 3, 6; each step pops the next of the chunk's first 3 actions
    geometry = make_geometry("tiny", image_size=32, patch_size=8, vision_dim=32, dim=32, heads=2, text_hidden=32,
                             text_heads=2, text_kv_heads=1, text_intermediate=64, decoder_dim=32, decoder_heads=2,
                             decoder_layers=1, chunk=4, action_dim=2, state_dim=0)
    model = build_model(geometry, seed=0)
    stats = {"action": {"mean": [0.0] * 2, "std": [1.0] * 2, "q01": [-1.0] * 2, "q99": [1.0] * 2}}
    policy = VLAPolicy({f"model/{k}": v for k, v in model.state_dict().items()},
                       {"geometry": geometry.to_dict(), "normalizer": {"mode": "mean_std", "stats": stats}}, execute_steps=3)
    calls: list[int] = []

    def fake_act(image: np.ndarray, instruction: str, state: np.ndarray | None) -> np.ndarray:
        calls.append(int(image[0, 0, 0]))
        return np.arange(8, dtype=np.float32).reshape(4, 2) + 100 * len(calls)

    monkeypatch.setattr(policy, "act", fake_act)
    frame = np.zeros((32, 32, 3), np.uint8)
    got = []
    for step in range(7):
        views = frame + step if policy.needs_observation else None
        got.append(policy.select_action(views, "go", None)[0])
    assert calls == [0, 3, 6] and policy.queries == 3
    assert got == [100, 102, 104, 200, 202, 204, 300]
    policy.reset()
    assert policy.needs_observation and policy.queries == 0
    with pytest.raises(ValueError, match="needs this step's views"):
        policy.select_action(None, "go", None)
    with pytest.raises(ValueError, match="execute_steps must be ≥ 1"):
        VLAPolicy({f"model/{k}": v for k, v in model.state_dict().items()},
                  {"geometry": geometry.to_dict(), "normalizer": {"mode": "mean_std", "stats": stats}}, execute_steps=0)


def test_keypoint_lr_puts_the_stem_in_its_own_group() -> None:
    torch = pytest.importorskip("torch")
    from atlasva.vla.model import build_model, make_geometry
    from atlasva.vla.sim import _param_groups

    small = dict(image_size=32, patch_size=8, vision_dim=32, dim=32, heads=2, text_hidden=32, text_heads=2,
                 text_kv_heads=1, text_intermediate=64, decoder_dim=32, decoder_heads=2, decoder_layers=1, chunk=4)
    model = build_model(make_geometry("tiny", **small, keypoints=2, keypoint_map=16, aux_dim=3, aux_source="keypoints"))
    rest, fast = _param_groups(model, 3e-4, 1.5e-3)
    assert fast["lr_scale"] == pytest.approx(5.0) and rest["lr_scale"] == 1.0
    fast_ids = {id(p) for p in fast["params"]}
    expected = {id(p) for m in (model.keypoint_encoder, model.keypoint_proj, model.aux_head) for p in m.parameters()}
    assert fast_ids == expected
    assert len(fast_ids) + len(rest["params"]) == len(list(model.parameters()))  # every parameter once
    assert not fast_ids & {id(p) for p in rest["params"]}
    assert len(_param_groups(model, 3e-4, 0.0)) == 1  # 0 = one lr for all
    opt = torch.optim.AdamW(_param_groups(model, 3e-4, 1.5e-3), lr=3e-4)
    assert [g["lr_scale"] for g in opt.param_groups] == pytest.approx([1.0, 5.0])  # the training loop scales the schedule by it
    with pytest.raises(ValueError, match="keypoint_lr must be ≥ 0"):
        _param_groups(model, 3e-4, -1.0)


def test_demo_noise_per_task_and_its_errors() -> None:
    from atlasva.config import load_config
    from atlasva.vla.config import VLAConfig
    from atlasva.vla.sim import demo_counts, demo_noise

    def noise(*overrides: str) -> dict[str, float]:
        return demo_noise(load_config(VLAConfig, "metaworld-tiny", ["sim.tasks=[reach-v3,drawer-open-v3]",
                                                                    "collect.action_noise=0.1", *overrides], subdir="vla")[0])

    assert noise() == {"reach-v3": 0.1, "drawer-open-v3": 0.1}
    assert noise("collect.action_noise_by_task={reach-v3: 0.5}") == {"reach-v3": 0.5, "drawer-open-v3": 0.1}
    with pytest.raises(ValueError, match="not in sim.tasks"):
        noise("collect.action_noise_by_task={push-v3: 0.5}")
    with pytest.raises(ValueError, match="drawer-open-v3 must be ≥ 0"):
        noise("collect.action_noise_by_task={drawer-open-v3: -0.2}")
    with pytest.raises(ValueError, match="reach-v3 must be ≥ 0, got nan"):
        noise("collect.action_noise=nan")
    # the demo counts go through the same per-task rule
    counts = demo_counts(load_config(VLAConfig, "metaworld-tiny", ["sim.tasks=[reach-v3,drawer-open-v3]",
                                                                   "collect.episodes_per_task=5"], subdir="vla")[0])
    assert counts == {"reach-v3": 200, "drawer-open-v3": 5}  # the shipped episodes_by_task
    with pytest.raises(ValueError, match="demos for drawer-open-v3 must be ≥ 1, got 0"):
        demo_counts(load_config(VLAConfig, "metaworld-tiny", ["collect.episodes_by_task={drawer-open-v3: 0}"],
                                subdir="vla")[0])


def test_every_perception_ablation_arm_builds_what_it_names() -> None:
    """benchmarks/vla_ablation.py's arms are valid configs that switch exactly the pieces their names say
    (a patch-only arm must point the auxiliary head at the decoder: there are no keypoints to read)."""
    import dataclasses
    import importlib.util

    from atlasva.config import load_config
    from atlasva.vla.config import VLAConfig

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "vla_ablation.py"
    spec = importlib.util.spec_from_file_location("vla_ablation", path)
    assert spec is not None and spec.loader is not None
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    arms = ablation.arms()
    assert len(arms) == 9 and {n for n in arms if n.endswith("aux-hand")} == {"kp-mse-aux-hand"}
    for name, overrides in arms.items():
        vision, loss, aux = name.split("-", 2)
        cfg, _ = load_config(VLAConfig, "metaworld-tiny", overrides, subdir="vla")
        geometry = dataclasses.replace(cfg.model.geometry(), views=len(cfg.sim.cameras))
        model = build_model(geometry, seed=0)
        assert (model.geometry.keypoints > 0) == (vision == "kp"), name
        assert model.geometry.head == loss, name
        assert (model.geometry.aux_dim > 0) == (aux != "aux-off") == (cfg.train.aux_weight > 0), name
        if aux != "aux-off":  # each aux arm names its frame, whatever the config's default
            assert model.geometry.aux_frame == ("hand" if aux == "aux-hand" else "world"), name


def test_aux_targets_in_the_hand_frame_are_positions_minus_the_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """model.aux_frame=hand: each recorded xyz (object, goal) minus the hand's state[:3]; the same offset maps a
    prediction back to the world, and a frame without the state it needs is refused by name."""
    from atlasva.config import load_config
    from atlasva.vla import sim
    from atlasva.vla.config import VLAConfig
    from atlasva.vla.model import make_geometry

    recorded = np.array([[0.1, 0.6, 0.02, 0.05, 0.8, 0.2], [0.0, 0.7, 0.02, -0.1, 0.9, 0.3]], dtype=np.float32)
    states = np.array([[0.0, 0.6, 0.2, 1.0], [0.1, 0.5, 0.1, -1.0]], dtype=np.float32)  # hand xyz, gripper
    monkeypatch.setattr(sim, "load_lerobot_column", lambda path, key: recorded)
    cfg, _ = load_config(VLAConfig, "metaworld-tiny", ["train.aux_weight=1.0"], subdir="vla")
    hand = make_geometry("tiny", state_dim=4, aux_dim=6, aux_frame="hand")
    targets = sim._aux_targets(cfg, hand, states)
    np.testing.assert_allclose(targets, [[0.1, 0.0, -0.18, 0.05, 0.2, 0.0], [-0.1, 0.2, -0.08, -0.2, 0.4, 0.2]], atol=1e-6)
    np.testing.assert_allclose(targets + sim.aux_frame_offset(hand, states), recorded, atol=1e-6)
    world = make_geometry("tiny", state_dim=4, aux_dim=6, aux_frame="world")
    np.testing.assert_array_equal(sim._aux_targets(cfg, world, states), recorded)
    assert not sim.aux_frame_offset(world, states).any()
    with pytest.raises(ValueError, match="needs the recorded state of every frame"):
        sim._aux_targets(cfg, hand, None)
    with pytest.raises(ValueError, match="aux_frame='hand' subtracts the hand position"):
        make_geometry("tiny", state_dim=0, aux_dim=6, aux_frame="hand")
    with pytest.raises(ValueError, match="aux_dim a multiple of 3"):
        make_geometry("tiny", state_dim=4, aux_dim=5, aux_frame="hand")
    with pytest.raises(ValueError, match="unknown aux_frame"):
        make_geometry("tiny", aux_frame="camera")


def test_an_empty_dict_override_clears_the_shipped_per_task_counts() -> None:
    """`collect.episodes_by_task={}` drops metaworld-tiny's reach-v3 count (a non-empty override adds to it), so
    other task sets run from the command line."""
    from atlasva.config import load_config
    from atlasva.vla.config import VLAConfig
    from atlasva.vla.sim import demo_counts

    shipped, _ = load_config(VLAConfig, "metaworld-tiny", [], subdir="vla")
    assert shipped.collect.episodes_by_task == {"reach-v3": 200}
    added, _ = load_config(VLAConfig, "metaworld-tiny", ["collect.episodes_by_task={drawer-open-v3: 5}"], subdir="vla")
    assert added.collect.episodes_by_task == {"reach-v3": 200, "drawer-open-v3": 5}
    cleared, _ = load_config(VLAConfig, "metaworld-tiny", ["collect.episodes_by_task={}",
                                                           "sim.tasks=[pick-place-v3,door-open-v3]"], subdir="vla")
    assert cleared.collect.episodes_by_task == {}
    assert demo_counts(cleared) == {"pick-place-v3": 50, "door-open-v3": 50}
