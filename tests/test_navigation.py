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
