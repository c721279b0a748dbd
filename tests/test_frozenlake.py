"""FrozenLake: contract, determinism, maps, solver, rewards, world-model reward."""

import hashlib
import os
import subprocess
import sys
from collections import deque

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from atlasva import envs, formats
from atlasva.envs.frozenlake import generate_map
from atlasva.envs.frozenlake.env import HOLE

LEVEL = ["P_O_", "____", "_O_G", "____"]


def test_check_env_all_modes():
    for mode in ("vision", "text", "both"):
        check_env(envs.make("frozenlake", obs_mode=mode, render_mode="rgb_array"))


def test_defaults_match_vagen():
    env = envs.make("frozenlake")
    assert env.size == 4 and env.p == 0.8 and env.slip_prob == 0.0 and env.max_actions_per_turn == 5
    obs, _ = env.reset(seed=0)
    assert obs["images"][0].shape == (112, 112, 3)  # 28-px tiles: one merged vision token per cell
    assert obs["text"].count("<image>") == len(obs["images"]) == 1


def test_maps_always_have_a_path_and_are_seeded():
    for seed in range(200):
        grid, start = generate_map(6, 0.7, seed)
        goal = tuple(np.argwhere(grid == 2)[0])
        seen, q = {start}, deque([start])
        while q:
            r, c = q.popleft()
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                n = (r + dr, c + dc)
                if 0 <= n[0] < 6 and 0 <= n[1] < 6 and n not in seen and grid[n] != HOLE:
                    seen.add(n)
                    q.append(n)
        assert goal in seen
    a, b = generate_map(8, 0.8, 42), generate_map(8, 0.8, 42)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]


def test_impossible_map_is_a_clear_bounded_error():
    with pytest.raises(RuntimeError, match="raise p"):
        generate_map(12, 0.05, 0, random_start_goal=False)
    with pytest.raises(ValueError, match="size"):
        envs.make("frozenlake", size=1)


def _bfs_len(rows):
    env = envs.make("frozenlake", obs_mode="text")
    env.reset(options={"level": rows})
    return env, env.solve()


def test_solver_is_shortest_and_succeeds():
    env, plan = _bfs_len(LEVEL)
    assert len(plan) == 5  # P at (0,0) to G at (2,3): 2 down + 3 right, hole at (2,1) avoidable
    obs, reward, term, trunc, info = env.step(formats.answer(plan, "free_think"))
    assert term and info["metrics"]["success"] and info["reward_components"]["env"] == 1.0
    assert info["cells"][0] == [0, 0] and info["cells"][-1] == [2, 3] and len(info["cells"]) == 6


def test_hole_terminates_with_failure_and_stops_execution():
    env = envs.make("frozenlake", obs_mode="text")
    env.reset(options={"level": LEVEL})
    _, reward, term, _, info = env.step("<think>x</think><answer>Right, Right, Down</answer>")
    assert term and not info["metrics"]["success"] and info["failure"] == "hole"
    assert info["actions"] == ["Right", "Right"] and reward == pytest.approx(0.02)


def test_invalid_action_stops_and_metrics_stay_distinct():
    env = envs.make("frozenlake", obs_mode="text")
    env.reset(options={"level": LEVEL})
    _, _, _, _, info = env.step("<think>x</think><answer>Down, Jump, Down</answer>")
    m = info["metrics"]
    assert info["actions"] == ["Down"] and m["format_valid"] and not m["action_valid"] and m["action_effective"]
    _, _, _, _, info = env.step("<think>x</think><answer>Left</answer>")  # off the edge
    m = info["metrics"]
    assert m["format_valid"] and m["action_valid"] and not m["action_effective"]
    _, r, _, _, info = env.step("garbage")
    m = info["metrics"]
    assert not m["format_valid"] and not m["action_valid"] and info["actions"] == [] and r == 0.0


def test_format_penalty_and_step_penalty():
    env = envs.make("frozenlake", obs_mode="text", format_penalty=0.1, step_penalty=0.01)
    env.reset(options={"level": LEVEL})
    _, r, *_ = env.step("no tags")
    assert r == pytest.approx(-0.1)
    _, r, *_ = env.step("<think>.</think><answer>Down, Down</answer>")
    assert r == pytest.approx(0.02 - 0.02)


def test_world_model_reward_hand_case():
    env = envs.make("frozenlake", obs_mode="text", format="grounding_world_modeling")
    env.reset(options={"level": LEVEL})
    # before: player (0,0); goal (2,3) is below & right; no adjacent hole ((0,2) is 2 away)
    truth_before = env.relations(env.state())
    assert truth_before == [["goal", "below", "player"], ["goal", "right of", "player"]]
    # after "Right": player (0,1); goal below & right; adjacent hole (0,2) same row & right
    obs_text = "goal is below player. goal is right of player."
    pred_text = "goal is below player. hole is right of player."  # 2 of 4 true relations, both correct
    text = formats.answer(["Right"], "grounding_world_modeling", observation=obs_text, prediction=pred_text)
    _, _, _, _, info = env.step(text)
    # observation F1 = 1; prediction P = 1, R = 2/4 -> F1 = 2/3; weight 0.5 each
    assert info["reward_components"]["world_model"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_slippery_uses_own_rng_and_optimal_action():
    a = envs.make("frozenlake", slip_prob=0.5, obs_mode="text")
    b = envs.make("frozenlake", slip_prob=0.5, obs_mode="text")
    np.random.seed(0)
    a.reset(seed=5)
    np.random.seed(1)  # the global RNG must not matter
    b.reset(seed=5)
    for _ in range(4):
        ra, rb = a.step("<think>.</think><answer>Down,Right</answer>"), b.step("<think>.</think><answer>Down,Right</answer>")
        assert ra[4]["cells"] == rb[4]["cells"]
        if ra[2]:
            break
    env = envs.make("frozenlake", slip_prob=0.3, obs_mode="text")
    env.reset(seed=1)
    with pytest.raises(NotImplementedError):
        env.solve()
    assert env.optimal_action() in env.action_names


def test_heuristics_and_relations_are_json_native():
    env = envs.make("frozenlake", size=5)
    env.reset(seed=7)
    h = env.grid_heuristics()
    assert h["shape"] == [5, 5] and len(h["goal_distance"]) == 5
    gr, gc = h["goals"][0]
    assert h["goal_distance"][gr][gc] == 0
    for r, c in h["hazard"]:
        assert h["goal_distance"][r][c] == -1
    import json

    json.dumps(h)


def test_level_validation_errors():
    env = envs.make("frozenlake")
    with pytest.raises(ValueError, match="symbol"):
        env.reset(options={"level": ["P_Z_", "____", "___G", "____"]})
    with pytest.raises(ValueError, match="exactly one"):
        env.reset(options={"level": ["__O_", "____", "___G", "____"]})


_SNIPPET = (
    "import hashlib, atlasva.envs as E; e=E.make('frozenlake', size=6); o,_=e.reset(seed=11);"
    "o2=e.step('<think>.</think><answer>Down,Right</answer>')[0];"
    "print(hashlib.sha256(o['images'][0].tobytes()+o2['images'][0].tobytes()).hexdigest())"
)


def test_byte_identical_images_across_processes():
    digests = set()
    for hs in ("1", "777"):
        out = subprocess.run([sys.executable, "-c", _SNIPPET], env={**os.environ, "PYTHONHASHSEED": hs},
                             capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    env = envs.make("frozenlake", size=6)
    o, _ = env.reset(seed=11)
    o2 = env.step("<think>.</think><answer>Down,Right</answer>")[0]
    digests.add(hashlib.sha256(o["images"][0].tobytes() + o2["images"][0].tobytes()).hexdigest())
    assert len(digests) == 1
