"""Navigation: contract, scenes, rendering, solver, collisions, relations, determinism."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from atlasva import envs, formats
from atlasva.envs.base import TEXT_CHARSET
from atlasva.envs.navigation import INSTRUCTION_SETS, generate_scene


def _answer(actions, fmt="free_think", **kw):
    return formats.answer(actions, fmt, action_sep="|", **kw)


def _level(objects, agent, target=0, walls=(), size=16):
    """A one-room level (room 0 = living room) with extra wall cells; objects as (cat, colour, size, r, c)."""
    grid = [["#" if r in (0, size - 1) or c in (0, size - 1) else "0" for c in range(size)] for r in range(size)]
    for r, c in walls:
        grid[r][c] = "#"
    rows = ["".join(g) for g in grid] + ["room 0 living room"]
    rows += [f"object {cat} {col} {sz} {r} {c}" for cat, col, sz, r, c in objects]
    rows += [f"agent {agent[0]} {agent[1]} {agent[2]}", f"target {target}", "set base", "task Navigate to the red chair."]
    return rows


def test_check_env_all_modes():
    for mode in ("vision", "text", "both"):
        check_env(envs.make("navigation", obs_mode=mode, render_mode="rgb_array"), skip_render_check=False)


def test_defaults_and_observation():
    env = envs.make("navigation")
    assert env.action_sep == "|" and env.max_actions_per_turn == 5 and env.instruction_set == "base"
    obs, info = env.reset(seed=0)
    assert obs["images"][0].shape == (128, 128, 3) and obs["images"][0].dtype == np.uint8
    assert obs["text"].count("<image>") == 1 and obs["text"].startswith("Task: ")
    assert set(obs["text"]) <= TEXT_CHARSET
    json.dumps(info)
    assert info["cells"] == [info["state"]["agent"]["cell"]]
    prompt = env.system_prompt()
    assert "move_forward" in prompt and "|" in prompt


def test_image_size_fov_and_pitch():
    env = envs.make("navigation", width=224, fov=100.0)
    obs, _ = env.reset(seed=4)
    assert obs["images"][0].shape == (224, 224, 3)
    wide = envs.make("navigation", width=96, height=64, obs_mode="vision")
    assert wide.reset(seed=4)[0]["images"][0].shape == (64, 96, 3)
    level = env.render_rgb()
    _, _, _, _, info = env.step(_answer(["look_up"]))
    up = env.render_rgb()
    assert info["metrics"]["action_effective"] and info["state"]["agent"]["pitch_deg"] == 30.0
    assert not np.array_equal(level, up)
    # looking up shows more ceiling: the ceiling colour reaches further down the centre column
    ceil = np.array([236, 233, 226])
    rows_ceiling = lambda img: int((np.abs(img[:, 112].astype(int) - ceil).sum(1) < 60).sum())  # noqa: E731
    assert rows_ceiling(up) > rows_ceiling(level)
    _, _, _, _, info = env.step(_answer(["look_up"]))  # beyond the limit: valid but ineffective
    assert info["metrics"]["action_valid"] and not info["metrics"]["action_effective"]


@pytest.mark.parametrize("iset", INSTRUCTION_SETS)
def test_solver_succeeds_on_several_seeds(iset):
    env = envs.make("navigation", instruction_set=iset, width=64)
    for seed in (0, 1, 2):
        _, info = env.reset(seed=seed)
        plan = env.solve()
        heur = env.grid_heuristics()
        r, c = info["cells"][0]
        # strafing exists, so the fewest actions is the grid distance (turns are never needed)
        assert len(plan) == heur["goal_distance"][r][c] > 0
        done, turns = False, 0
        while not done:
            chunk, plan = plan[:5], plan[5:]
            _, reward, done, trunc, info = env.step(_answer(chunk))
            turns += 1
            assert info["metrics"]["action_valid"] and info["metrics"]["action_effective"]
            assert not trunc and turns < 20
        assert info["metrics"]["success"] and info["reward_components"]["env"] == 1.0
        assert info["state"]["distance_to_target"] <= 1.0
        assert heur["goal_distance"][info["cells"][-1][0]][info["cells"][-1][1]] == 0


def test_instruction_sets_have_their_kind_of_target():
    for seed in range(4):
        lh = generate_scene(seed, "long_horizon")
        t = lh.objects[lh.target]
        assert lh.rooms[t.row, t.col] != lh.rooms[lh.start] and lh.room_names[lh.rooms[t.row, t.col]] in lh.instruction
        cs = generate_scene(seed, "common_sense")
        assert sum(o.category == cs.objects[cs.target].category for o in cs.objects) == 1
        assert cs.objects[cs.target].category not in cs.instruction
        ci = generate_scene(seed, "complex_instruction")
        assert sum(o.category == ci.objects[ci.target].category for o in ci.objects) >= 2
        assert "closest to" in ci.instruction
        va = generate_scene(seed, "visual_appearance")
        o = va.objects[va.target]
        assert o.size in va.instruction and o.colour in va.instruction
        assert sum((p.size, p.colour) == (o.size, o.colour) for p in va.objects) == 1


def test_collision_is_ineffective_and_cells_follow_the_moves():
    env = envs.make("navigation", obs_mode="text")
    env.reset(options={"level": _level([("chair", "red", "large", 3, 8)], (13, 1, "north"))})
    _, _, _, _, info = env.step(_answer(["move_left"]))  # wall at column 0
    m = info["metrics"]
    assert m["format_valid"] and m["action_valid"] and not m["action_effective"]
    assert info["cells"] == [[13, 1], [13, 1]]
    _, _, _, _, info = env.step(_answer(["move_forward", "move_right", "turn_right", "move_forward"]))
    assert info["cells"] == [[13, 1], [12, 1], [12, 2], [12, 2], [12, 3]]
    assert info["state"]["agent"]["heading"] == "east"
    # furniture blocks too
    env.reset(options={"level": _level([("chair", "red", "large", 3, 8), ("sofa", "blue", "small", 10, 5)], (10, 4, "east"))})
    _, _, _, _, info = env.step(_answer(["move_forward"]))
    assert not info["metrics"]["action_effective"] and info["cells"][-1] == [10, 4]


def test_invalid_actions_stop_and_format_errors_run_nothing():
    env = envs.make("navigation", obs_mode="text")
    env.reset(options={"level": _level([("chair", "red", "large", 3, 8)], (13, 8, "north"))})
    _, _, _, _, info = env.step(_answer(["Move Forward", "jump", "move_forward"]))
    assert info["actions"] == ["move_forward"] and not info["metrics"]["action_valid"]
    assert info["metrics"]["action_effective"]
    _, r, _, _, info = env.step("move_forward")
    assert not info["metrics"]["format_valid"] and info["actions"] == [] and r == 0.0
    _, _, _, _, info = env.step("<think>go</think><answer>" + "move_forward|" * 50 + "</answer>")
    assert len(info["actions"]) == 5  # capped per turn


def test_unreachable_target_is_a_clear_error():
    ring = [(r, c) for r in range(2, 7) for c in range(2, 7) if r in (2, 6) or c in (2, 6)]
    env = envs.make("navigation", obs_mode="text")
    env.reset(options={"level": _level([("chair", "red", "large", 4, 4)], (12, 12, "north"), walls=ring)})
    heur = env.grid_heuristics()
    assert heur["goal_distance"][12][12] == -1 and heur["goals"]  # goal cells exist, but behind walls
    with pytest.raises(RuntimeError, match="cannot be reached"):
        env.solve()


def test_relations_and_world_model_reward():
    env = envs.make("navigation", obs_mode="text", format="grounding_world_modeling")
    env.reset(options={"level": _level([("chair", "red", "large", 8, 8)], (12, 8, "north"))})
    assert env.relations(env.state()) == [["target", "ahead of", "agent"], ["target", "near", "agent"]]
    obs_text = formats.describe(env.relations(env.state()))
    pred = "target is left of agent. target is near agent."
    _, _, _, _, info = env.step(_answer(["turn_right"], "grounding_world_modeling", observation=obs_text, prediction=pred))
    assert env.relations(env.state()) == [["target", "left of", "agent"], ["target", "near", "agent"]]
    assert info["reward_components"]["world_model"] == pytest.approx(1.0)
    env.step(_answer(["turn_right"]))
    assert env.relations(env.state())[0] == ["target", "behind", "agent"]
    env.step(_answer(["move_forward", "move_forward"]))  # facing south, 3 m away now
    assert env.relations(env.state()) == [["target", "behind", "agent"], ["target", "far from", "agent"]]
    assert formats.parse_relations(formats.describe(env.relations(env.state())), env.relation_vocabulary) == [
        tuple(r) for r in env.relations(env.state())
    ]


def test_heuristics_map_and_state_are_consistent():
    env = envs.make("navigation")
    _, info = env.reset(seed=7)
    h = env.grid_heuristics()
    json.dumps(h)
    assert h["shape"] == [16, 16] and len(h["goal_distance"]) == 16
    for r, c in h["hazard"]:
        assert h["goal_distance"][r][c] == -1
    for r, c in h["goals"]:
        assert h["goal_distance"][r][c] == 0
    assert sorted(h["walls"] + h["obstacles"]) == sorted(h["hazard"])
    tgt = info["state"]["target"]
    assert tgt["cell"] in h["obstacles"]
    m = env.render_map()
    assert m.shape == (16 * 12, 16 * 12, 3) and m.dtype == np.uint8
    assert m.std() > 10  # not a blank picture


def test_level_rows_round_trip():
    env = envs.make("navigation", instruction_set="complex_instruction")
    obs, info = env.reset(seed=12)
    rows = env.level_rows()
    other = envs.make("navigation", instruction_set="base")
    obs2, info2 = other.reset(options={"level": rows})
    assert info2["level_hash"] == info["level_hash"] and info2["state"] == info["state"]
    assert np.array_equal(obs["images"][0], obs2["images"][0])
    with pytest.raises(ValueError, match="unknown line kind"):
        other.reset(options={"level": rows[:16] + ["door 1 2"]})
    with pytest.raises(ValueError, match="enclosed"):
        other.reset(options={"level": ["0" * 16] + rows[1:]})


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="instruction_set"):
        envs.make("navigation", instruction_set="easy")
    with pytest.raises(ValueError, match="fov"):
        envs.make("navigation", fov=5.0)


def test_train_and_validation_splits_are_disjoint():
    spec = envs.load_spec("navigation")
    env = spec.make(obs_mode="text")
    hashes = {}
    for split in ("train", "validation"):
        hashes[split] = set()
        for seed in spec.seeds(split, 3):
            _, info = env.reset(seed=seed)
            assert spec.in_split(info["level_hash"], split)
            hashes[split].add(info["level_hash"])
    assert not hashes["train"] & hashes["validation"]


_SNIPPET = (
    "import hashlib, atlasva.envs as E; e=E.make('navigation', instruction_set='long_horizon', width=96);"
    "o,i=e.reset(seed=21); o2=e.step('<answer>turn_left | move_forward | look_down</answer>')[0];"
    "print(i['level_hash'], hashlib.sha256(o['images'][0].tobytes()+o2['images'][0].tobytes()).hexdigest())"
)


def test_byte_identical_images_across_processes():
    outs = set()
    for hs in ("1", "777"):
        out = subprocess.run([sys.executable, "-c", _SNIPPET], env={**os.environ, "PYTHONHASHSEED": hs},
                             capture_output=True, text=True, check=True)
        outs.add(out.stdout.strip())
    env = envs.make("navigation", instruction_set="long_horizon", width=96)
    o, i = env.reset(seed=21)
    o2 = env.step("<think>.</think><answer>turn_left | move_forward | look_down</answer>")[0]
    outs.add(i["level_hash"] + " " + hashlib.sha256(o["images"][0].tobytes() + o2["images"][0].tobytes()).hexdigest())
    assert len(outs) == 1


# --------------------------------------------------------------------------- raycaster


def _reference_cast(rc, x, z, heading_deg):
    """Plain per-column DDA (one grid step at a time): distance (m), z side, room in front, per column."""
    a = np.radians(heading_deg)
    out = []
    for t in rc.t:
        rx, rz = np.sin(a) + np.cos(a) * t, -np.cos(a) + np.sin(a) * t
        rx, rz = (rx if abs(rx) >= 1e-9 else 1e-9), (rz if abs(rz) >= 1e-9 else 1e-9)
        px, pz = x / rc.cell, z / rc.cell
        mx, mz = int(np.floor(px)), int(np.floor(pz))
        sx, sz = (1 if rx > 0 else -1), (1 if rz > 0 else -1)
        dx, dz = abs(1 / rx), abs(1 / rz)
        side_x = ((mx + 1 - px) if rx > 0 else (px - mx)) * dx
        side_z = ((mz + 1 - pz) if rz > 0 else (pz - mz)) * dz
        while True:
            if side_x < side_z:
                mx, side_x, zside = mx + sx, side_x + dx, False
            else:
                mz, side_z, zside = mz + sz, side_z + dz, True
            if rc.wall[mz, mx]:
                break
        perp = (side_z - dz) if zside else (side_x - dx)
        front = (mz - sz, mx) if zside else (mz, mx - sx)
        out.append((perp * rc.cell, zside, rc.room_idx[front]))
    dist, zside, room = zip(*out)
    return np.array(dist), np.array(zside), np.array(room)


def test_raycaster_cast_matches_a_step_by_step_dda():
    from atlasva.envs.navigation import Raycaster

    rng = np.random.default_rng(0)
    for seed in (0, 5):
        sc = generate_scene(seed, "base")
        rc = Raycaster(sc, 96, 64, fov_deg=80.0)
        free = np.argwhere(~sc.blocked)
        for i in range(40):
            r, c = free[rng.integers(len(free))]
            if i % 2:  # the env's poses: cell centres, quarter turns
                (x, z), h = sc.centre(int(r), int(c)), 90.0 * int(rng.integers(4))
            else:  # anywhere in a free cell, any heading
                x, z, h = (c + rng.uniform(0.05, 0.95)) * sc.cell_m, (r + rng.uniform(0.05, 0.95)) * sc.cell_m, rng.uniform(0, 360)
            dist, zside, u, room = rc.cast(x, z, h)
            ref_dist, ref_zside, ref_room = _reference_cast(rc, x, z, h)
            assert np.allclose(dist, ref_dist, rtol=1e-9, atol=1e-12)
            assert np.array_equal(zside, ref_zside) and np.array_equal(room, ref_room)
            assert ((u >= 0) & (u < 1)).all()


def test_raycaster_frames_do_not_depend_on_what_was_rendered_before():
    from atlasva.envs.navigation import Raycaster
    from atlasva.envs.navigation.render import _rgb_fast, _rgb_safe

    sc = generate_scene(2, "visual_appearance")
    free = np.argwhere(~sc.blocked)
    poses = [(*sc.centre(int(r), int(c)), 90.0 * h, p) for r, c in free[::7] for h in range(4) for p in (-30.0, 0.0, 30.0)]
    poses += [(p[0] + 0.13, p[1] - 0.07, p[2] + 17.0, 10.0) for p in poses[:12]]  # off-grid poses too
    warm = Raycaster(sc, 112, 80)
    first = [warm.render(*p) for p in poses]  # first use of each table: colours per frame
    again = [warm.render(*p) for p in poses[::-1]][::-1]  # tabulated colours
    fresh = [Raycaster(sc, 112, 80).render(*p) for p in poses[:6]]
    for a, b in zip(first, again):
        assert a.shape == (80, 112, 3) and a.dtype == np.uint8 and a.flags.c_contiguous
        assert np.array_equal(a, b)
    for a, b in zip(first, fresh):
        assert np.array_equal(a, b)
    words = np.random.default_rng(1).integers(0, 2**32, (33, 29), dtype=np.uint32)
    assert np.array_equal(_rgb_fast(words), _rgb_safe(words))


def test_wall_spans_follow_the_projection():
    """Every column shows its wall from ceil(h - (wall_h - cam_h) k - 0.5) to ceil(h + cam_h k - 0.5) and
    the baseboard from ceil(h + (cam_h - 0.12) k - 0.5), k = f / distance, h the (pitched) horizon."""
    from atlasva.envs.navigation import Raycaster, scene_from_rows
    from atlasva.envs.navigation.render import BASEBOARD_M, HAZE, HAZE_PER_M
    from atlasva.envs.navigation.scene import ROOM_TYPES

    sc = scene_from_rows(_level([("chair", "red", "large", 14, 8)], (5, 6, "north")), 0.5)  # chair out of view
    rc = Raycaster(sc, 64, 64)
    wall = np.array(ROOM_TYPES["living room"].wall, dtype=float)
    for (x, z), h, pitch in [(sc.centre(5, 6), 0.0, 0.0), (sc.centre(5, 6), 30.0, 30.0), (sc.centre(9, 3), 270.0, -30.0)]:
        img = rc.render(x, z, h, pitch).astype(int)
        dist, zside, u, _ = rc.cast(x, z, h)
        horizon = 32 + rc.f * np.tan(np.radians(pitch))
        k = rc.f / dist
        top = np.clip(np.ceil(horizon - (rc.wall_h - rc.cam_h) * k - 0.5), 0, 64).astype(int)
        base = np.clip(np.ceil(horizon + (rc.cam_h - BASEBOARD_M) * k - 0.5), 0, 64).astype(int)
        bottom = np.clip(np.ceil(horizon + rc.cam_h * k - 0.5), 0, 64).astype(int)
        for c in range(64):
            col = wall * (0.8 if zside[c] else 1.0) * (0.85 if (u[c] < 0.03 or u[c] > 0.97) else 1.0)
            fog = np.exp(-HAZE_PER_M * dist[c])
            paint = np.round(col * fog + HAZE * (1 - fog))
            board = np.round(col * 0.55 * fog + HAZE * (1 - fog))
            assert (img[top[c] : base[c], c] == paint).all() and (img[base[c] : bottom[c], c] == board).all()
            outside = np.r_[img[: top[c], c], img[bottom[c] :, c]]
            assert not (outside == paint).all(axis=1).any() and not (outside == board).all(axis=1).any()
