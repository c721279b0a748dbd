"""Sokoban: generator, optimal solver, deadlocks, rendering, the env contract and splits."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import deque

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from atlasva import formats
from atlasva.envs import load_spec, make
from atlasva.envs.sokoban import SokobanEnv, generate_level, parse_rows, solve_level
from atlasva.envs.sokoban import render as sk_render
from atlasva.envs.sokoban.solver import board_of, simple_deadlock_cells

# --------------------------------------------------------------------------- helpers

MOVES = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}


def brute_force_length(rows: list[str]) -> int | None:
    """Plain BFS over (player, boxes) with no pruning at all: the reference optimum."""
    rows = [r.strip() for r in rows if r.strip()]
    h, w = len(rows), len(rows[0])
    walls = {(r, c) for r in range(h) for c in range(w) if rows[r][c] == "#"}
    targets = frozenset((r, c) for r in range(h) for c in range(w) if rows[r][c] in "O√S")
    boxes = frozenset((r, c) for r in range(h) for c in range(w) if rows[r][c] in "X√")
    player = next((r, c) for r in range(h) for c in range(w) if rows[r][c] in "PS")

    def free(cell, bx):
        r, c = cell
        return 0 <= r < h and 0 <= c < w and cell not in walls and cell not in bx

    start = (player, boxes)
    dist = {start: 0}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        p, bx = state
        if bx <= targets:
            return dist[state]
        for dr, dc in MOVES.values():
            q = (p[0] + dr, p[1] + dc)
            if q in bx:
                b2 = (q[0] + dr, q[1] + dc)
                if not free(b2, bx):
                    continue
                nxt = (q, (bx - {q}) | {b2})
            elif free(q, bx):
                nxt = (q, bx)
            else:
                continue
            if nxt not in dist:
                dist[nxt] = dist[state] + 1
                queue.append(nxt)
    return None


def play(env: SokobanEnv, actions: list[str]):
    """Feed actions to the env, several per turn, as a well-formed answer."""
    out = None
    for i in range(0, len(actions), env.max_actions_per_turn):
        chunk = actions[i : i + env.max_actions_per_turn]
        out = env.step(formats.answer(chunk, env.format))
        if out[2] or out[3]:
            break
    return out


HAND_LEVELS = {
    "corridor": ["#######", "#P_X_O#", "#######"],
    "around": ["######", "#____#", "#_X__#", "#_#O_#", "#P___#", "######"],
    "two_boxes": ["#######", "#_____#", "#_XX__#", "#_OO_P#", "#_____#", "#######"],
    "no_frame": ["PXO"],
    "side_push": ["#####", "#_O_#", "#_X_#", "#_P_#", "#####"],
    "detour": ["#######", "#__#__#", "#_X_O_#", "#_#___#", "#P____#", "#######"],
    "corner_dead": ["#####", "#X__#", "#__O#", "#P__#", "#####"],
    "solved": ["P√"],
    "blocked_pair": ["#######", "#_XX_O#", "#P__O_#", "#######"],
}


# --------------------------------------------------------------------------- solver


@pytest.mark.parametrize("name", sorted(HAND_LEVELS))
def test_solver_matches_brute_force_on_hand_levels(name):
    rows = HAND_LEVELS[name]
    plan = solve_level(rows)
    expected = brute_force_length(rows)
    if expected is None:
        assert plan is None
        return
    assert plan is not None and len(plan) == expected
    if plan:  # the plan really solves the level
        env = SokobanEnv(obs_mode="text", max_actions_per_turn=max(1, len(plan)))
        env.reset(options={"level": rows})
        _, _, terminated, _, info = env.step(formats.answer(plan, env.format))
        assert terminated and info["metrics"]["success"]


def test_solver_known_answers():
    assert solve_level(HAND_LEVELS["corridor"]) == ["Right", "Right", "Right"]
    assert solve_level(HAND_LEVELS["no_frame"]) == ["Right"]
    assert solve_level("\n".join(HAND_LEVELS["solved"])) == []
    assert solve_level(HAND_LEVELS["corner_dead"]) is None


def test_solver_matches_brute_force_on_generated_levels():
    configs = [((6, 6), 1, 1, None), ((6, 6), 2, 1, None), ((7, 7), 2, 4, 12)]
    for dim, boxes, lo, hi in configs:
        for seed in range(12):
            level = generate_level(seed, dim, boxes, lo, hi)
            plan = solve_level(level.rows())
            assert plan is not None
            assert len(plan) == level.optimal_length == brute_force_length(level.rows())


# --------------------------------------------------------------------------- generator


@pytest.mark.parametrize(
    "dim,boxes,lo,hi", [((6, 6), 1, 1, None), ((6, 6), 1, 3, 6), ((8, 8), 2, 5, 15), ((6, 8), 1, 8, None)]
)
def test_generated_levels_solvable_in_range(dim, boxes, lo, hi):
    for seed in range(25):
        level = generate_level(seed, dim, boxes, lo, hi)
        rows = level.rows()
        assert len(rows) == dim[0] and all(len(r) == dim[1] for r in rows)
        assert len(level.boxes) == boxes == len(level.targets)
        plan = solve_level(rows)
        assert plan is not None and len(plan) == level.optimal_length
        assert lo <= len(plan) <= (hi if hi is not None else 10**9)
        # framed by walls
        assert set(rows[0]) == set(rows[-1]) == {"#"} and all(r[0] == r[-1] == "#" for r in rows)


def test_generator_is_seeded():
    a = [generate_level(s).rows() for s in range(20)]
    b = [generate_level(s).rows() for s in range(20)]
    assert a == b
    assert len({tuple(r) for r in a}) > 10  # seeds give different levels
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert generate_level(rng_a).rows() == generate_level(rng_b).rows()


@pytest.mark.parametrize(
    "kwargs,exc,needle",
    [
        ({"num_boxes": 16}, ValueError, "does not fit"),
        ({"num_boxes": 0}, ValueError, "num_boxes"),
        ({"dim_room": (2, 5)}, ValueError, "at least 3x3"),
        ({"min_solution_length": 0}, ValueError, "min_solution_length"),
        ({"min_solution_length": 6, "max_solution_length": 5}, ValueError, "below"),
        ({"min_solution_length": 80}, RuntimeError, "tried 200 random rooms"),
        ({"dim_room": (3, 3)}, ValueError, "does not fit"),
    ],
)
def test_impossible_configs_fail_fast(kwargs, exc, needle):
    # (how fast: benchmarks/bench_envs.py; a hang would hit pytest's timeout)
    with pytest.raises(exc, match=needle):
        SokobanEnv(**kwargs)


def test_runtime_error_reports_what_was_tried():
    with pytest.raises(RuntimeError) as err:
        generate_level(0, (5, 5), 1, 30, None, max_tries=25)
    msg = str(err.value)
    assert "5x5" in msg and "25 random rooms" in msg and "longest optimal solution" in msg


# --------------------------------------------------------------------------- given levels


def test_given_level_reset_and_text():
    rows = HAND_LEVELS["around"]
    env = SokobanEnv(obs_mode="text")
    obs, info = env.reset(options={"level": rows})
    assert env.level_rows() == rows
    assert "\n".join(rows) in obs["text"]
    assert obs["images"] == ()
    assert info["seed"] is None and info["state"]["player"] == [4, 1]
    assert info["state"]["boxes"] == [[2, 2]] and info["state"]["targets"] == [[3, 3]]
    assert env.render_text() == "\n".join(rows)
    # a newline-joined string with indentation works too
    env.reset(options={"level": "\n    " + "\n    ".join(rows) + "\n"})
    assert env.level_rows() == rows


def test_given_level_of_other_size_updates_spaces():
    env = SokobanEnv(tile_size=8)
    obs, _ = env.reset(options={"level": HAND_LEVELS["corridor"]})
    assert obs["images"][0].shape == (24, 56, 3)
    assert env.observation_space.contains(obs)
    obs, _ = env.reset(seed=1)
    assert obs["images"][0].shape == (48, 48, 3) and env.observation_space.contains(obs)


@pytest.mark.parametrize(
    "rows,needle",
    [
        (["#####", "#PXO#", "#P__#", "#####"], "exactly one player"),
        (["#####", "#_XO#", "#####"], "exactly one player"),
        (["#####", "#PXO#", "#_X_#", "#####"], "as many targets as boxes"),
        (["#####", "#P_O#", "#####"], "at least one box"),
        (["#####", "#PXO#", "####"], "same length"),
        (["#####", "#PXA#", "#####"], "unknown symbol 'A'"),
        (["#######", "#P X O#", "#######"], "unknown symbol ' '"),
        ([], "empty"),
    ],
)
def test_given_level_validation(rows, needle):
    env = SokobanEnv(obs_mode="text")
    with pytest.raises(ValueError, match=needle):
        env.reset(options={"level": rows})
    with pytest.raises(ValueError, match=needle):
        solve_level(rows)


# --------------------------------------------------------------------------- deadlocks


def _cells(rows_of_rc):
    return sorted(tuple(x) for x in rows_of_rc)


def test_box_deadlock_corners_and_wall_lines():
    rows = ["#######", "#_____#", "#_____#", "#__O__#", "#P____#", "#######"]
    env = SokobanEnv(obs_mode="text")
    env.reset(options={"level": rows[:2] + ["#_X___#"] + rows[3:]})
    ring = {(r, c) for r in range(1, 5) for c in range(1, 6) if r in (1, 4) or c in (1, 5)}
    assert _cells(env.grid_heuristics()["box_deadlock"]) == sorted(ring)

    # A target on the bottom wall line frees that line (its corners stay dead).
    rows2 = ["#######", "#_____#", "#_X___#", "#_____#", "#P_O__#", "#######"]
    env.reset(options={"level": rows2})
    dead = set(_cells(env.grid_heuristics()["box_deadlock"]))
    assert (4, 1) in dead and (4, 5) in dead
    assert not {(4, 2), (4, 3), (4, 4)} & dead

    # A gap in the top wall breaks that wall line; the nook itself is a dead end (corner).
    rows3 = ["#######", "###_###", "#__X__#", "#__O__#", "#P____#", "#######"]
    env.reset(options={"level": rows3})
    dead = set(_cells(env.grid_heuristics()["box_deadlock"]))
    assert (1, 3) in dead and (2, 1) in dead and (2, 5) in dead
    assert not {(2, 2), (2, 3), (2, 4)} & dead


def test_simple_deadlocks_are_dead_squares_and_never_targets():
    for seed in range(40):
        level = generate_level(seed)
        board = board_of(level)
        simple = set(simple_deadlock_cells(board))
        dead = {c for c in range(board.size) if board.dead[c]}
        assert simple <= dead
        assert not simple & set(level.targets)


def test_failure_reports_deadlock_without_terminating():
    rows = ["######", "#____#", "#_X__#", "#P__O#", "######"]
    env = SokobanEnv(obs_mode="text")
    env.reset(options={"level": rows})
    assert env.failure() is None
    # push the box up into the top wall line (row 1 holds no target)
    _, _, terminated, truncated, info = env.step("<think>x</think><answer>Right, Up</answer>")
    assert info["actions"] == ["Right", "Up"]
    assert env.state()["boxes"] == [[1, 2]]
    assert env.failure() == "deadlock"
    assert not terminated and not truncated
    assert env.solve() == []  # unsolvable from here
    env.reset(options={"level": HAND_LEVELS["corner_dead"]})
    assert env.failure() == "deadlock" and env.solve() == [] and env.optimal_length is None


# --------------------------------------------------------------------------- relations and rewards


def test_relations_hand_case():
    env = SokobanEnv(obs_mode="text", format="grounding")
    env.reset(options={"level": ["######", "#___O#", "#X__P#", "######"]})
    truth = [
        ["box", "same row as", "player"],
        ["box", "left of", "player"],
        ["target", "above", "player"],
        ["target", "same column as", "player"],
    ]
    assert sorted(env.relations(env.state())) == sorted(truth)
    # parse∘describe is the identity, and a perfect observation earns the full world-model weight
    assert sorted(formats.parse_relations(formats.describe(truth), env.relation_vocabulary)) == sorted(
        tuple(t) for t in truth
    )
    text = formats.answer(["Left"], "grounding", observation=formats.describe(truth))
    _, _, _, _, info = env.step(text)
    assert info["reward_components"]["world_model"] == pytest.approx(env.world_model_weight)
    # a covered target is not listed on its own; the box on it is
    env.reset(options={"level": ["#####", "#P_√#", "#####"]})
    assert sorted(env.relations(env.state())) == [
        ["box", "right of", "player"],
        ["box", "same row as", "player"],
    ]


def test_rewards_success_format_and_step_penalty():
    rows = HAND_LEVELS["corridor"]
    env = SokobanEnv(obs_mode="text")
    env.reset(options={"level": rows})
    obs, reward, terminated, truncated, info = env.step(
        "<think>go</think><answer>Right, right, RIGHT</answer>"
    )
    assert terminated and not truncated
    assert info["reward_components"] == {"env": 1.0, "format": 0.1, "world_model": 0.0}
    assert reward == pytest.approx(1.1)
    assert info["metrics"] == {
        "format_valid": True,
        "action_valid": True,
        "action_effective": True,
        "success": True,
    }
    assert info["cells"] == [[1, 1], [1, 2], [1, 3], [1, 4]]
    json.dumps(info)

    env = SokobanEnv(obs_mode="text", step_penalty=0.01, success_reward=2.0, format_reward=0.5)
    env.reset(options={"level": rows})
    _, reward, terminated, _, info = env.step("<think>a</think><answer> up , Right</answer>")
    assert info["actions"] == ["Up", "Right"] and not terminated
    assert info["reward_components"]["env"] == pytest.approx(-0.02)
    assert info["metrics"]["action_effective"] and info["metrics"]["action_valid"]
    _, reward, terminated, _, info = env.step("<think>a</think><answer>Right, Right</answer>")
    assert terminated and info["reward_components"]["env"] == pytest.approx(2.0 - 0.02)
    assert reward == pytest.approx(2.0 - 0.02 + 0.5)


def test_invalid_and_ineffective_actions():
    env = SokobanEnv(obs_mode="text")
    env.reset(options={"level": HAND_LEVELS["corridor"]})
    _, reward, _, _, info = env.step("<think>a</think><answer>Up</answer>")  # into the wall
    assert info["metrics"]["action_valid"] and not info["metrics"]["action_effective"]
    assert info["cells"] == [[1, 1], [1, 1]]
    _, reward, _, _, info = env.step("<think>a</think><answer>Right, Jump, Right</answer>")
    assert info["actions"] == ["Right"] and not info["metrics"]["action_valid"]
    _, reward, _, _, info = env.step("Right")  # no tags: nothing runs
    assert not info["metrics"]["format_valid"] and info["actions"] == [] and reward == 0.0


def test_solver_plan_plays_to_success_from_any_state():
    env = make("sokoban", obs_mode="text")
    for seed in range(10):
        env.reset(seed=seed)
        plan = env.solve()
        assert len(plan) == env.optimal_length == env.level.optimal_length
        if len(plan) > 1:  # solve() again from mid-episode
            env.step(formats.answer(plan[:1], env.format))
            rest = env.solve()
            assert len(rest) == len(plan) - 1
            plan = rest
        _, _, terminated, _, info = play(env, plan)
        assert terminated and info["metrics"]["success"]


# --------------------------------------------------------------------------- env contract and rendering


@pytest.mark.parametrize("obs_mode", ["vision", "text", "both"])
def test_check_env(obs_mode):
    env = make("sokoban", obs_mode=obs_mode, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)


def test_registry_defaults_and_observation():
    env = make("sokoban")
    obs, info = env.reset(seed=5)
    assert env.grid_shape == (6, 6)
    assert obs["images"][0].shape == (168, 168, 3) and obs["images"][0].dtype == np.uint8
    assert obs["text"].count("<image>") == 1
    assert env.max_actions_per_turn == 3 and env.format_reward == 0.1
    assert info["cells"] == [info["state"]["player"]]
    json.dumps(info)
    heur = env.grid_heuristics()
    json.dumps(heur)
    assert heur["shape"] == [6, 6] and heur["goals"] == info["state"]["targets"]
    dist = np.array(heur["goal_distance"])
    assert dist.shape == (6, 6)
    for r, c in heur["goals"]:
        assert dist[r, c] == 0
    for r, c in heur["hazard"]:
        assert dist[r, c] == -1 and env.level_rows()[r][c] == "#"


def test_blit_matches_per_cell_reference():
    env = SokobanEnv(tile_size=12)
    env.reset(options={"level": ["#######", "#P_X_O#", "#_√_O_#", "#__X__#", "#######"]})
    frame = env.render_rgb()
    tiles = sk_render.tiles(12)
    code = {"#": 0, "_": 1, "O": 2, "√": 3, "X": 4, "P": 5, "S": 6}
    for r, row in enumerate(env.level_rows()):
        for c, ch in enumerate(row):
            assert np.array_equal(frame[r * 12 : (r + 1) * 12, c * 12 : (c + 1) * 12], tiles[code[ch]])
    assert len({tiles[i].tobytes() for i in range(7)}) == 7  # every tile type looks different


_HASH_SCRIPT = """
import hashlib, json
from atlasva.envs.sokoban import SokobanEnv
env = SokobanEnv()
out = []
for seed in (0, 1, 2, 17, 123456):
    obs, info = env.reset(seed=seed)
    obs, *_ = env.step("<think>t</think><answer>Left, Up</answer>")
    out.append([info["level_hash"], hashlib.sha256(obs["images"][0].tobytes()).hexdigest()])
print(json.dumps(out))
"""


def test_same_seed_same_bytes_across_processes():
    results = []
    for hash_seed in ("0", "987654"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-c", _HASH_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        results.append(json.loads(proc.stdout))
    assert results[0] == results[1]
    here = SokobanEnv()
    obs, info = here.reset(seed=17)
    obs, *_ = here.step("<think>t</think><answer>Left, Up</answer>")
    assert [info["level_hash"], hashlib.sha256(obs["images"][0].tobytes()).hexdigest()] == results[0][3]


# --------------------------------------------------------------------------- splits


def test_train_validation_splits_are_disjoint():
    spec = load_spec("sokoban")
    assert spec.env == "sokoban"
    train = spec.seeds("train", 40)
    val = spec.seeds("validation", 40)
    assert not set(train) & set(val)
    env = spec.make(obs_mode="text")
    hashes = {}
    for split, seeds in (("train", train), ("validation", val)):
        hs = set()
        for s in seeds:
            _, info = env.reset(seed=s)
            assert spec.in_split(info["level_hash"], split)
            hs.add(info["level_hash"])
        hashes[split] = hs
    assert not hashes["train"] & hashes["validation"]


def test_parse_rows_roundtrip():
    for rows in HAND_LEVELS.values():
        assert parse_rows(rows).rows() == rows
