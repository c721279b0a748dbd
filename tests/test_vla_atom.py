"""AtomVLA: segmentation on trajectories with known events, storage in LeRobot / HDF5, the DiT head,
chunk log-probabilities against their densities, world-model energies on a toy with a known answer, and
one end-to-end post-training step on a two-episode dataset."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = importlib.import_module("torch")

from atlasva.vla.atom import segment as seg  # noqa: E402
from atlasva.vla.atom.policy_dist import (  # noqa: E402
    flow_sde_log_prob,
    flow_sde_sample,
    gaussian_log_prob,
    sample_gaussian,
    sde_sigma,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------- segmentation
def pick_place_trajectory(t_close: int = 20, t_lift: int = 30, t_descend: int = 50, length: int = 70) -> tuple:
    """A hand that reaches (x +), closes the gripper at t_close, lifts the object from t_lift, carries it
    (y +) and lowers it from t_descend: every event's frame is known."""
    hand = np.zeros((length, 3))
    obj = np.tile([0.2, 0.0, 0.0], (length, 1))
    for t in range(1, length):
        step = np.zeros(3)
        if t < t_close - 2:
            step[0] = 0.01
        elif t_lift <= t < t_lift + 8:
            step[2] = 0.01
        elif t_lift + 8 <= t < t_descend:
            step[1] = 0.01
        elif t >= t_descend:
            step[2] = -0.006
        hand[t] = hand[t - 1] + step
        if t >= t_lift:
            obj[t] = hand[t] + [0.2 - hand[t_lift - 1, 0], 0, 0] - [0, 0, hand[t_lift - 1, 2]]
    gripper = np.where(np.arange(length) >= t_close, 1.0, -1.0)
    return hand, gripper, obj


def test_events_and_template_cut_land_on_the_known_frames() -> None:
    hand, gripper, obj = pick_place_trajectory()
    events = seg.detect_events(hand, gripper, obj)
    first = {k: next(e.frame for e in events if e.kind == k) for k in ("grip_close", "object_moves", "object_lifted")}
    assert first == {"grip_close": 20, "object_moves": 31, "object_lifted": 32}
    assert [e.frame for e in events if e.kind == "descend"] == [50]
    drift = hand - np.arange(len(hand))[:, None] * [0, 0, 0.0005]  # a slow sag is not a descent
    assert [e.frame for e in seg.detect_events(drift, gripper, obj) if e.kind == "descend"] == [50]
    assert not any(e.kind == "grip_open" for e in events)
    template = seg.TEMPLATES["assembly-v3"]  # reach / grasp+lift / carry / lower
    cut = seg.segment_with_template(events, len(hand), template)
    assert cut.starts == [0, 20, 32, 50] and cut.template is True
    assert cut.texts == [t for t, _ in template] and cut.ends == ["grip_close", "object_lifted", "descend", "end"]
    assert cut.boundary_frames() == [19, 31, 49, 69]
    labels = cut.labels()
    assert labels[19] == 0 and labels[20] == 1 and labels[49] == 2 and labels[-1] == 3
    # a missing event merges its subtask into the next; "a|b" falls back to b
    no_obj = seg.detect_events(hand, gripper, None)
    merged = seg.segment_with_template(no_obj, len(hand), template)
    assert merged.template is False and merged.starts == [0, 20, 50]
    assert merged.texts[1] == "grasp and lift the nut, then carry the nut above the peg"
    alt = seg.segment_with_template(no_obj, len(hand), [("a", "object_lifted|grip_close"), ("b", "end")])
    assert alt.starts == [0, 20] and alt.ends == ["grip_close", "end"]
    with pytest.raises(ValueError, match="accepted"):
        seg.segment_with_template(events, len(hand), [("a", "gripper_shut"), ("b", "end")])


def test_generic_cut_and_speed_minima() -> None:
    hand, gripper, obj = pick_place_trajectory()
    cut = seg.segment_episode(hand, gripper, obj)
    assert cut.template is None and cut.starts == [0, 20, 31]  # gripper + object events, min_length apart
    assert cut.texts[:2] == ["reach and grasp the object", "lift the object"]
    # no gripper, no object: a reach that pauses at frame 30 is cut at its speed minimum
    t = np.arange(60)
    x = np.where(t < 30, 0.01 * t, 0.3) + np.where(t > 33, 0.01 * (t - 33), 0.0)
    hand2 = np.stack([x, np.zeros(60), np.zeros(60)], axis=1)
    cut2 = seg.segment_episode(hand2, None, None)
    assert len(cut2.starts) == 2 and 28 <= cut2.starts[1] <= 34
    assert cut2.texts == ["move the arm right", "move the arm right"]
    few = seg.segment_episode(hand2, None, None, settings=seg.SegmentSettings(min_segments=1))
    assert few.starts == [0]


def test_llm_names_are_parsed_and_malformed_answers_are_normal() -> None:
    assert seg.parse_names('Sure: ["Reach the handle.", "pull it"]', 2) == ["reach the handle", "pull it"]
    for bad in ("no list here", '["only one"]', '[1, 2]', '["a", ""]', "[not json"):
        assert seg.parse_names(bad, 2) is None

    class Out:
        def __init__(self, text: str) -> None:
            self.text = text

    class Backend:
        def __init__(self) -> None:
            self.prompts: list = []

        def generate(self, prompts: list) -> list:
            self.prompts += prompts
            return [Out('["reach the puck", "carry it"]'), Out("I cannot")]

    hand, gripper, obj = pick_place_trajectory()
    cut = seg.segment_episode(hand, gripper, None, settings=seg.SegmentSettings(max_segments=2))
    desc = seg.describe_segments(cut, hand, gripper)
    assert len(desc) == 2 and "gripper closes" in desc[0]
    backend = Backend()
    names = seg.llm_names(backend, {"a": ("pick the puck", desc), "b": ("other", desc)})
    assert names == {"a": ["reach the puck", "carry it"], "b": None}
    assert "pick the puck" in backend.prompts[0][0]["content"] and "JSON list of exactly 2" in backend.prompts[0][0]["content"]


# ---------------------------------------------------------------------------------------------- datasets
FEATURES = {
    "observation.image": {"dtype": "image", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
    "observation.state": {"dtype": "float32", "shape": [4], "names": None},
    "observation.environment_state": {"dtype": "float32", "shape": [6], "names": None},
    "action": {"dtype": "float32", "shape": [4], "names": None},
}


def drawer_trajectory(touch: int = 14, length: int = 24) -> tuple:
    """The hand reaches along x for ``touch`` frames, then the handle moves with it."""
    hand = np.stack([0.01 * np.arange(length), np.zeros(length), np.zeros(length)], 1)
    obj = np.tile([0.01 * touch, 0.0, 0.0], (length, 1))
    obj[touch:] += np.stack([0.01 * np.arange(1, length - touch + 1), np.zeros(length - touch),
                             np.zeros(length - touch)], 1)
    return hand, -np.ones(length), obj


def write_demo_dataset(root: Path, drawers_only: bool = False) -> None:
    """Two episodes: a drawer opening (object moves at 14) and a pick-place (grip at 20, lift at 32); or two
    drawer openings (the handle moves at 14 and at 16), so that one demo of the task can be held out."""
    from atlasva.vla.data import LeRobotWriter

    writer = LeRobotWriter(root, fps=80, features=FEATURES, robot_type="sawyer")
    rng = np.random.default_rng(0)
    episodes = [("open the drawer", *drawer_trajectory())]
    if drawers_only:
        episodes.append(("open the drawer", *drawer_trajectory(touch=16)))
    else:
        episodes.append(("pick up the puck and place it at the goal", *pick_place_trajectory()))
    for task, h, g, o in episodes:
        t = len(h)
        actions = np.concatenate([np.diff(h, axis=0, append=h[-1:]) * 100, g[:, None]], 1).astype(np.float32)
        images = rng.integers(0, 255, size=(t, 32, 32, 3), dtype=np.uint8)
        images[:, :4, :4] = (np.arange(t) * 255 // t)[:, None, None, None]  # frames differ over time
        writer.add_episode({"observation.image": images,
                            "observation.state": np.concatenate([h, (g[:, None] < 0)], 1).astype(np.float32),
                            "observation.environment_state": np.concatenate([o, np.ones((t, 3))], 1).astype(np.float32),
                            "action": actions}, task)
    writer.finalize()
    # the record `atlasva vla collect` keeps of the levels its demos play (training refuses Meta-World data without)
    from atlasva.vla.sim import LEVELS_FILE

    tasks = ["drawer-open-v3", "drawer-open-v3" if drawers_only else "pick-place-v3"]
    (root / LEVELS_FILE).write_text("".join(json.dumps({"task": t, "seed": i, "level_hash": f"demo{i}"}) + "\n"
                                            for i, t in enumerate(tasks)))


def atom_config(root: Path, *extra: str):
    from atlasva.config import load_config
    from atlasva.vla.config import VLAConfig

    cfg, _ = load_config(VLAConfig, "metaworld-atom", [f"collect.dataset={root}", *extra], subdir="vla")
    return cfg


def test_segment_writes_lerobot_labels_tasks_and_sheets(tmp_path: Path) -> None:
    from atlasva.vla.atom.segment_stage import segment_dataset
    from atlasva.vla.atom.subtask_data import load_subtask_labels
    from atlasva.vla.data import LeRobotDataset, load_lerobot_column

    root = tmp_path / "ds"
    write_demo_dataset(root)
    record = segment_dataset(atom_config(root))
    ds = LeRobotDataset(root)
    assert ds.features["subtask_index"] == {"dtype": "int64", "shape": [1], "names": None}
    texts = ["reach the drawer handle", "pull the drawer open", "reach the puck", "grasp and lift the puck",
             "carry the puck to the goal"]
    assert [ds.tasks[i] for i in sorted(ds.tasks)] == ["open the drawer", "pick up the puck and place it at the goal", *texts]
    column = load_lerobot_column(root, "subtask_index").reshape(-1)
    assert column[:24].tolist() == [2] * 14 + [3] * 10  # the drawer moves at frame 14
    assert column[24:].tolist() == [4] * 20 + [5] * 12 + [6] * 38
    labels = load_subtask_labels(root)
    assert labels.text[13] == "reach the drawer handle" and labels.subgoal[0] == 13 and labels.final[0] == 23
    assert labels.subgoal[24 + 25] == 24 + 31 and labels.ordinal[-1] == 2 and labels.canonical.all()
    assert record["tasks"]["open the drawer"]["template_matched"] == 1
    sheets = sorted((root / "meta" / "subtasks").glob("contact-*.png"))
    assert len(sheets) == 2
    # the same settings: nothing is rewritten; other settings: the old subtask rows are replaced, not added
    mtime = (root / "meta" / "subtasks.json").stat().st_mtime_ns
    segment_dataset(atom_config(root))
    assert (root / "meta" / "subtasks.json").stat().st_mtime_ns == mtime
    segment_dataset(atom_config(root, "atom.segment.method=events"))
    ds = LeRobotDataset(root)
    assert len(ds.tasks) == 2 + len({t for t in load_subtask_labels(root).text})
    assert "reach the drawer handle" not in ds.tasks.values()
    # a stored column that disagrees with the record is a clear error
    meta = json.loads((root / "meta" / "subtasks.json").read_text())
    meta["episodes"][0]["starts"] = [0, 5]
    (root / "meta" / "subtasks.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="disagrees"):
        load_subtask_labels(root)


def test_segment_writes_libero_hdf5(tmp_path: Path) -> None:
    h5py = importlib.import_module("h5py")
    from atlasva.vla.atom.segment_stage import segment_dataset
    from atlasva.vla.atom.subtask_data import load_subtask_labels

    path = tmp_path / "KITCHEN_SCENE1_put_the_bowl_on_the_plate_demo.hdf5"
    hand, gripper, _ = pick_place_trajectory()
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": "put the bowl on the plate"})
        for i in range(2):
            demo = data.create_group(f"demo_{i}")
            demo["actions"] = np.concatenate([np.zeros((70, 6)), gripper[:, None]], 1)
            demo["obs/agentview_rgb"] = np.zeros((70, 8, 8, 3), np.uint8)
            demo["obs/ee_pos"] = hand
            demo["obs/gripper_states"] = np.zeros((70, 2))
    segment_dataset(atom_config(tmp_path))
    with h5py.File(path, "r") as f:
        texts = json.loads(f["data"].attrs["subtask_texts"])
        stored = f["data/demo_1/subtask_index"][()]
    assert texts[stored[0]] == "reach and grasp the object" and stored[19] != stored[20]
    labels = load_subtask_labels(tmp_path)
    assert len(labels) == 140 and labels.task[0] == "put the bowl on the plate" and labels.ordinal[20] == 1


# ---------------------------------------------------------------------------------------------- DiT head
DIT = dict(image_size=24, patch_size=8, vision_dim=16, dim=16, heads=2, depth=1, mlp_ratio=2.0, num_register_tokens=1,
           text_hidden=16, text_layers=1, text_heads=2, text_kv_heads=1, text_intermediate=32, decoder_dim=32,
           decoder_heads=2, decoder_layers=1, head="dit", dit_layers=2, flow_steps=6)


def test_dit_head_shapes_determinism_and_zero_start() -> None:
    from atlasva.vla.dit import DiTActionHead
    from atlasva.vla.model import build_model, make_geometry

    head = DiTActionHead(action_dim=3, chunk=5, dim=16, depth=4, heads=2)
    assert [b.cross is not None for b in head.blocks] == [True, False, True, False]  # every other block
    x, ctx = torch.randn(2, 5, 3), torch.randn(2, 7, 16)
    assert torch.equal(head(x, torch.rand(2), ctx), torch.zeros(2, 5, 3))  # AdaLN-Zero: starts at v = 0
    with pytest.raises(ValueError, match=r"\[B, 5, 3\]"):
        head(torch.randn(2, 4, 3), torch.rand(2), ctx)
    model = build_model(make_geometry("tiny", chunk=4, action_dim=3, state_dim=2, keypoints=2, keypoint_map=12,
                                      keypoint_channels=4, **DIT), seed=3)
    with torch.no_grad():  # wake the zero-initialised layers so the output depends on everything
        for p in model.dit.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model.eval()
    images, state = torch.rand(2, 3, 24, 24), torch.randn(2, 2)
    a = model.predict(images, ["a", "b"], state, generator=torch.Generator().manual_seed(7))
    assert a.shape == (2, 4, 3)
    assert torch.equal(a, model.predict(images, ["a", "b"], state, generator=torch.Generator().manual_seed(7)))
    assert not torch.allclose(a, model.predict(images, ["a", "b"], state, generator=torch.Generator().manual_seed(8)))
    assert not torch.allclose(a, model.predict(images, ["a", "b"], -state, generator=torch.Generator().manual_seed(7)))
    again = build_model(model.geometry, seed=3).dit
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), build_model(model.geometry, seed=3).dit.parameters()))
    with pytest.raises(ValueError, match="dit_layers"):
        make_geometry("tiny", **{**DIT, "dit_layers": 1})


def test_dit_head_fits_a_context_dependent_bimodal_target() -> None:
    # the instruction says which pair of modes is right ("up": (0, ±1), "side": (±1, 0)): the DiT must read the
    # fused context through its cross-attention, and keep both modes of a pair, as flow matching does
    from atlasva.vla.model import build_model, make_geometry

    model = build_model(make_geometry("tiny", chunk=1, action_dim=2, **DIT), seed=0)
    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    ids, mask = model.text.tokenize(["up", "side"])
    batch = 32
    for _ in range(150):
        which = torch.randint(0, 2, (batch,), generator=gen)
        sign = torch.where(torch.rand(batch, generator=gen) < 0.5, 1.0, -1.0)
        target = torch.stack([torch.where(which == 1, sign, 0.0), torch.where(which == 0, sign, 0.0)], 1)[:, None]
        loss = model.loss(image.expand(batch, -1, -1, -1), ids[which], mask[which], target, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for word, axis in (("up", 1), ("side", 0)):
        out = model.predict(image.expand(200, -1, -1, -1), [word] * 200, generator=torch.Generator().manual_seed(2))[:, 0]
        mode = torch.zeros(2)
        mode[axis] = 1.0
        near = torch.minimum((out - mode).norm(dim=1), (out + mode).norm(dim=1))
        assert (near < 0.4).float().mean() > 0.6, word
        assert 0.2 < (out[:, axis] > 0).float().mean() < 0.8, word


# ---------------------------------------------------------------------------------------------- log-probs
def test_gaussian_chunk_log_prob_is_its_density() -> None:
    mean = torch.tensor([[[0.3, -1.0], [0.0, 2.0]]])  # [1, H=2, A=2]
    log_std = torch.tensor([-0.5, 0.2])
    x = torch.randn(5, 2, 2)
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(x).sum(dim=(1, 2))
    assert torch.allclose(gaussian_log_prob(x, mean.expand(5, -1, -1), log_std), ref, atol=1e-5)
    valid = torch.tensor([[1.0, 0.0]] * 5)  # the second step lies past the episode's end
    ref1 = torch.distributions.Normal(mean[:, :1], log_std.exp()).log_prob(x[:, :1]).sum(dim=(1, 2))
    assert torch.allclose(gaussian_log_prob(x, mean.expand(5, -1, -1), log_std, valid), ref1, atol=1e-5)
    # samples: a histogram of one coordinate matches exp(log-prob) integrated over each bin
    s = sample_gaussian(torch.tensor([[[0.5]]]), torch.tensor([-1.0]), 40000, torch.Generator().manual_seed(0))[0, :, 0, 0]
    edges = torch.linspace(-0.5, 1.5, 11)
    grid = torch.linspace(-0.5, 1.5, 2001)
    dens = gaussian_log_prob(grid[:, None, None], torch.full((2001, 1, 1), 0.5), torch.tensor([-1.0])).exp()
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (grid >= lo) & (grid <= hi)
        mass = torch.trapezoid(dens[inside], grid[inside])
        assert abs(((s >= lo) & (s < hi)).float().mean() - mass) < 0.01


def test_flow_sde_steps_are_gaussian_and_keep_the_ode_marginals() -> None:
    target = torch.tensor([0.7, -0.4])

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # the exact field of a point-mass target
        return (x - target) / t[:, None, None]

    # one step: the sampled x' has exactly the stated Gaussian density
    noise = torch.randn(20000, 1, 2, generator=torch.Generator().manual_seed(0))
    path = flow_sde_sample(velocity, noise, steps=1, noise_level=0.7, generator=torch.Generator().manual_seed(1))
    lp = flow_sde_log_prob(velocity, path, noise_level=0.7)
    std = sde_sigma(1.0, 1.0, 0.7)  # σ at t = 1 − Δ/2 = 0.5: a·sqrt(0.5/0.5) = a; Δ = 1
    assert std == pytest.approx(0.7)
    mean = path[0] - velocity(path[0], torch.ones(20000)) - std**2 / 2 * path[0]  # t = 1: x + (1 − t)·v = x
    ref = torch.distributions.Normal(mean, std).log_prob(path[1]).sum(dim=(1, 2))
    assert torch.allclose(lp, ref, atol=1e-4)
    z = (path[1] - mean) / std
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    # many steps: the SDE ends on the point mass as the ODE does (a wrong drift sign would blow up)
    path = flow_sde_sample(velocity, torch.randn(2000, 1, 2, generator=torch.Generator().manual_seed(2)), steps=20,
                           noise_level=0.5, generator=torch.Generator().manual_seed(3))
    end = path[-1][:, 0]
    assert (end - target).abs().mean() < 0.05
    # the log-prob of a path is the sum of its steps', differentiable through the velocity
    w = torch.tensor(1.0, requires_grad=True)
    lp = flow_sde_log_prob(lambda x, t: w * velocity(x, t), path[:, :3], noise_level=0.5)
    lp.sum().backward()
    assert lp.shape == (3,) and torch.isfinite(lp).all() and w.grad is not None


def test_chunk_policy_of_a_dit_head_scores_its_own_sde_samples() -> None:
    from atlasva.vla.atom.config import PosttrainSection
    from atlasva.vla.atom.posttrain import ChunkPolicy
    from atlasva.vla.model import Encoding, build_model, make_geometry

    model = build_model(make_geometry("tiny", chunk=3, action_dim=2, state_dim=2, **{**DIT, "flow_steps": 4}), seed=0)
    with torch.no_grad():  # wake the zero-initialised layers so the velocity depends on the state
        for p in model.dit.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model.eval()
    policy = ChunkPolicy(model, PosttrainSection(sde_noise=0.5))
    ids, mask = model.text.tokenize(["a", "b"])
    x, st = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0)), torch.tensor([[2.0, 0.0], [-2.0, 1.0]])
    enc = model.encode(x, ids, mask, st)
    cands, path = policy.sample(enc, 3, torch.Generator().manual_seed(1))
    assert policy.flow and cands.shape == (2, 3, 3, 2) and path.shape == (5, 6, 3, 2)
    assert torch.equal(cands.reshape(6, 3, 2), path[-1])  # candidate g of state b is row b·G + g
    # …and it was driven by state b's velocity: without noise the sampler is Euler from the same start
    quiet, quiet_path = ChunkPolicy(model, PosttrainSection(sde_noise=0.0)).sample(enc, 3, torch.Generator().manual_seed(1))
    for b in range(2):
        one = Encoding(*(t[b:b + 1].expand(3, *t.shape[1:]) if t is not None else None for t in enc))
        alone = flow_sde_sample(lambda x_, t_, one=one: model.velocity(one, x_, t_), quiet_path[0, 3 * b:3 * b + 3], 4, 0.0)
        assert torch.allclose(alone[-1], quiet[b], atol=1e-5)
    valid = torch.ones(6, 3)
    lp = policy.log_prob(model.encode(x, ids, mask, st), path, 3, valid)
    assert lp.shape == (6,) and torch.isfinite(lp).all()
    assert torch.allclose(lp, policy.log_prob(enc, path, 3, valid))  # eval mode: the first ratio is exactly 1
    swapped = Encoding(*(t.flip(0) if t is not None else None for t in enc))  # each row scored by the other state
    assert not torch.allclose(lp, policy.log_prob(swapped, path, 3, valid), atol=1e-3)
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.dit.parameters())
    # a regression head: N(mean of state b, σ²) scores candidate g of state b
    reg = build_model(make_geometry("tiny", chunk=3, action_dim=2, state_dim=2, **{**DIT, "head": "mse"}), seed=0).eval()
    gauss = ChunkPolicy(reg, PosttrainSection(), torch.tensor([-1.0, -0.5]))
    enc = reg.encode(x, ids, mask, st)
    cands, record = gauss.sample(enc, 3, torch.Generator().manual_seed(1))
    mean = reg.action_head(reg._decode(enc))
    assert not torch.allclose(mean[0], mean[1])
    by_hand = torch.stack([gaussian_log_prob(cands[b], mean[b:b + 1].expand(3, -1, -1), gauss.log_std) for b in range(2)])
    assert torch.allclose(gauss.log_prob(enc, record, 3, valid), by_hand.reshape(6), atol=1e-5)


# ---------------------------------------------------------------------------------------------- world model
def toy_demos(n_eps: int = 12, length: int = 24, seed: int = 0):
    """1-D point masses pushed at constant speed towards a goal on either side: latent = position, the subtask
    boundary halfway."""
    from atlasva.vla.atom.subtask_data import SubtaskLabels
    from atlasva.vla.atom.world_model import DemoData
    from atlasva.vla.data import Normalizer

    rng = np.random.default_rng(seed)
    pos, acts, eps = [], [], []
    for e in range(n_eps):
        start = rng.uniform(-1, 1)
        goal = start + rng.choice([-1, 1]) * rng.uniform(0.5, 1)  # either way: another demo's chunk may point away
        a = np.full(length, (goal - start) / length)
        p = start + np.concatenate([[0], np.cumsum(a)[:-1]])
        pos.append(p)
        acts.append(a)
        eps.append(np.full(length, e))
    pos, acts, eps = np.concatenate(pos), np.concatenate(acts), np.concatenate(eps)
    n = len(pos)
    ordinal = (np.arange(n) % length >= length // 2).astype(np.int64)
    first = eps * length
    subgoal = np.where(ordinal == 0, first + length // 2 - 1, first + length - 1)
    labels = SubtaskLabels(["s"] * n, ["toy"] * n, ordinal, np.full(n, 2), subgoal, first + length - 1, eps,
                           {"toy": ["a", "b"]}, np.ones(n, bool))
    norm = Normalizer({"action": {"mean": [0.0], "std": [1.0], "q01": [-1.0], "q99": [1.0]}})
    data = DemoData(np.zeros((n, 1, 1, 1, 3), np.uint8), (acts[:, None] * 20).astype(np.float32), None, eps,
                    first + length - 1, ["toy"], np.zeros(n, np.int64), labels, norm)
    return data, pos[:, None].astype(np.float32)


def test_energies_and_gates_on_a_toy_with_a_known_answer() -> None:
    from atlasva.vla.atom.world_model import (
        WorldModel,
        build_predictor,
        gate_chunks,
        predictor_loss,
        sanity_gates,
        spearman,
    )

    assert spearman(np.arange(5.0), -np.arange(5.0) ** 3) == pytest.approx(-1.0)
    assert WorldModel.energy(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]])).item() == 2.0
    data, latents = toy_demos()
    k = 4
    torch.manual_seed(0)
    wm = WorldModel(build_predictor(1, 0, k, 1, 32, 2), 1, 0, k, 1)
    opt = torch.optim.Adam(wm.predictor.parameters(), lr=3e-3)
    train = np.flatnonzero((data.episode < 9) & (np.arange(len(latents)) + 2 * k <= data.last))
    rng = np.random.default_rng(0)
    for _ in range(400):  # the truth is z' = z + Σ a / 20: learnable exactly
        idx = rng.choice(train, 64)
        starts = idx[:, None] + k * np.arange(3)[None]
        chunks = np.stack([data.chunks(starts[:, r], k)[0] for r in range(2)], 1)
        scaled = chunks * rng.uniform(-1, 1.5, size=(64, 1, 1, 1)).astype(np.float32)  # off-expert chunks too
        z_next = latents[starts[:, 0]][:, None] + np.cumsum(scaled.sum(2) / 20, axis=1)
        loss, _ = predictor_loss(wm, torch.from_numpy(latents[idx]), None, torch.from_numpy(scaled),
                                 torch.from_numpy(z_next.astype(np.float32)), None, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    held = np.flatnonzero(data.episode >= 9)
    # the exact dynamics as a world model give the known answer: along an expert demo the predicted state is
    # the demo's own, so the final-goal energy falls at every step (ρ = −1); a random chunk only wins where
    # the expert's chunk overshoots the subgoal (the last chunk of the first subtask)
    exact_net = torch.nn.Linear(1 + k, 1)
    with torch.no_grad():
        exact_net.weight.copy_(torch.tensor([[0.0] + [1 / 20] * k]))
        exact_net.bias.zero_()
    exact = sanity_gates(WorldModel(exact_net, 1, 0, k, 1), latents, data, held)
    assert exact["goal_energy_spearman_mean"] == pytest.approx(-1.0) and exact["goal_energy_decreasing_share"] == 1.0
    # the rankings by hand: with z' = z + Σa/20 the subgoal energy of a chunk c is |z + Σc/20 − z(subgoal)|
    usable = held[held + k <= data.last[held]]
    chunks = gate_chunks(data, usable, k, seed=0)
    assert not (chunks[2] == chunks[0]).all(axis=(1, 2)).any()  # another demo's chunk: never the same as the expert's
    by_hand = [np.abs(latents[usable, 0] + c.sum(axis=(1, 2)) / 20 - latents[data.labels.subgoal[usable], 0])
               for c in chunks]
    assert exact["heldout_states"] == len(usable) == 60
    assert exact["expert_beats_random"] == pytest.approx(np.mean(by_hand[0] < by_hand[1]))
    assert exact["expert_beats_shuffled"] == pytest.approx(np.mean(by_hand[0] < by_hand[2]))
    assert exact["subgoal_energy_expert_mean"] == pytest.approx(by_hand[0].mean(), abs=1e-6)
    # the expert loses only where its chunk overshoots the subgoal (t + k past the first subtask's boundary, 11)
    overshoot = (usable % 24 < 12) & (usable % 24 + k > 11)
    assert not np.any((by_hand[0] >= by_hand[1]) & ~overshoot) and exact["expert_beats_random"] > 0.8
    learned = sanity_gates(wm, latents, data, held)
    for key in ("goal_energy_spearman_mean", "expert_beats_random", "expert_beats_shuffled"):
        assert abs(learned[key] - exact[key]) < 0.08, (key, learned[key], exact[key])
    # a world model that ignores the actions ranks nothing
    blind = WorldModel(build_predictor(1, 0, k, 1, 8, 1), 1, 0, k, 1)
    gates = sanity_gates(blind, latents, data, held)
    assert gates["expert_beats_random"] == 0.0 and gates["expert_beats_shuffled"] == 0.0


def test_tiny_vjepa2_encoder_trains_by_masked_latents_and_reloads() -> None:
    from atlasva.vla.atom.config import WorldModelSection
    from atlasva.vla.atom.world_model import VJEPA2Encoder, block_mask, make_encoder, train_vjepa2

    context, target = block_mask(4, 0.6, np.random.default_rng(0))
    assert len(target) >= 10 and len(context) >= 1 and sorted([*context, *target]) == list(range(16))
    sec = WorldModelSection(encoder="vjepa2", vjepa2_hidden=16, vjepa2_layers=1, vjepa2_heads=2, vjepa2_pred_layers=1,
                            vjepa2_steps=3, vjepa2_batch_size=4)
    frames = np.random.default_rng(0).integers(0, 255, (6, 2, 32, 32, 3), dtype=np.uint8)  # 2 views
    model, curve = train_vjepa2(sec, frames, patch_size=8)
    assert len(curve) == 3 and np.isfinite(curve).all()
    z = VJEPA2Encoder(model)(frames[:3])
    assert z.shape == (3, 2 * 4 * 16)  # views × 2×2 pooled quarters × hidden
    assert not torch.allclose(z[0], z[1])
    tensors = {f"vjepa2/{k}": v.detach().numpy() for k, v in model.state_dict().items()}
    again = make_encoder(sec, None, tensors, {"vjepa2_config": model.config.to_dict()})
    assert torch.equal(again(frames[:3]), z)  # the run folder's copy encodes as the trained one
    with pytest.raises(ValueError, match="patch"):
        train_vjepa2(sec, frames[:, :, :30, :30], patch_size=8)
    with pytest.raises(FileNotFoundError, match="vjepa2_path"):
        make_encoder(WorldModelSection(encoder="vjepa2", vjepa2_path="/nonexistent/vjepa2"), None)


def test_group_rewards_mix_standardised_terms() -> None:
    from atlasva.vla.atom.posttrain import combine_rewards

    terms = {"dev": np.array([[0.0, -1.0, -2.0], [5.0, 5.0, 5.0]]), "sub": np.array([[-3.0, -2.0, -1.0], [1.0, 2.0, 3.0]])}
    total = combine_rewards(terms, {"dev": 1.0, "sub": 0.5}).reshape(2, 3)
    assert torch.allclose(total[0], torch.tensor([0.5, 0.0, -0.5]), atol=1e-5)  # z-scores: ±1 and 0 per term
    assert torch.allclose(total[1], torch.tensor([-0.5, 0.0, 0.5]), atol=1e-5)  # a constant term adds nothing


# ---------------------------------------------------------------------------------------------- end to end
TINY = ["model.image_size=32", "model.patch_size=8", "model.dim=16", "model.heads=2", "model.vision_dim=16",
        "model.text_hidden=16", "model.text_layers=1", "model.text_heads=2", "model.text_kv_heads=1",
        "model.text_intermediate=32", "model.decoder_dim=16", "model.decoder_heads=2", "model.decoder_layers=1",
        "model.depth=1", "model.keypoint_map=16", "model.keypoints=2", "model.keypoint_channels=4",
        "sim.image_size=32", "sim.cameras=[corner2]", "sim.tasks=[drawer-open-v3]",
        "train.steps=2", "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=2", "train.num_threads=1",
        "atom.progress.steps=20", "atom.worldmodel.steps=30", "atom.worldmodel.batch_size=16",
        "atom.worldmodel.num_threads=1", "atom.posttrain.states_per_step=4", "atom.posttrain.group_size=4",
        "atom.posttrain.log_every=1", "atom.posttrain.num_threads=1", "run.root=runs"]


def test_one_posttrain_step_end_to_end_on_two_episodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.numpy import load_file

    from atlasva.vla.cli import vla_main

    monkeypatch.chdir(tmp_path)
    write_demo_dataset(tmp_path / "ds", drawers_only=True)  # one demo trains, the other is held out
    args = ["metaworld-atom", *TINY, f"collect.dataset={tmp_path / 'ds'}"]
    assert vla_main(["posttrain", *args, "atom.posttrain.steps=1"]) == 1  # nothing trained yet: a clear error
    for stage in ("segment", "train", "worldmodel"):
        assert vla_main([stage, *args]) == 0, stage
    runs = tmp_path / "runs"
    (sft,) = [p for p in runs.iterdir() if p.name.startswith("metaworld-atom-") and "-" not in p.name[15:]]
    assert json.loads((sft / "progress" / "summary.json").read_text())["heldout"]["frames"] > 0
    (wm,) = runs.glob("metaworld-atom-worldmodel-*")
    gates = json.loads((wm / "summary.json").read_text())["gates"]
    assert {"goal_energy_spearman_mean", "expert_beats_random", "expert_beats_shuffled"} <= set(gates)
    assert vla_main(["posttrain", *args, "atom.posttrain.steps=1"]) == 0
    (pt,) = runs.glob("metaworld-atom-posttrain-*")
    row = json.loads((pt / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 1 and all(np.isfinite(row[k]) for k in ("pt/pg_loss", "pt/kl", "pt/r_sub", "pt/r_goal", "pt/r_dev"))
    (ckpt,) = (pt / "checkpoints").iterdir()
    after = load_file(str(ckpt / "tensors.safetensors"))
    before = load_file(str(sorted((sft / "checkpoints").iterdir())[-1] / "tensors.safetensors"))
    moved = [k for k in before if k.startswith("model/") and not np.array_equal(before[k], after[k])]
    assert moved and "policy/log_std" in after  # one GRPO update changed the policy
    assert all((p / "curves.png").exists() for p in (sft, wm, pt))
    state = json.loads((ckpt / "state.json").read_text())
    assert state["progress_dir"].endswith("progress") and state["posttrain"]["w_sub"] == 1.0
    # resuming a finished run does nothing more; a second step continues from the first
    assert vla_main(["posttrain", *args, "atom.posttrain.steps=1"]) == 0
    assert len((pt / "metrics.jsonl").read_text().splitlines()) == 1
