"""Pattern skills for every env: a regularity planted in the episodes becomes the expected rule (3×3 tile
windows on grids, heading/target keys in navigation, target-to-object keys in manipulation), with the
Wilson lower bound, the avoid/prefer templates and the caps on rules and words."""

from __future__ import annotations

import numpy as np
import pytest
from memory_helpers import play

from atlasva import envs
from atlasva.envs.navigation.scene import HEADING_STEPS, HEADINGS
from atlasva.memory import MemoryConfig, SkillMemory
from atlasva.memory.atlas import LevelGeometry
from atlasva.memory.skills import MAX_WORDS, SkillMiner, _nav_key, grid_window, pattern_moves
from atlasva.rollout.episode import Episode, Turn

LAKE = ["P_O", "___", "__G"]  # start (0,0), a hole at (0,2), the goal at (2,2)
SOKOBAN = ["######", "#____#", "#_X__#", "#P__O#", "######"]


def _memory(min_support: int = 10) -> SkillMemory:
    return SkillMemory(MemoryConfig(skill_min_support=min_support, exemplars=False))


def test_grid_window_is_turned_so_the_move_points_up():
    h = {"shape": [3, 3], "hazard": [[0, 2]], "goals": [[2, 2]], "goal_distance": [[4, 3, -1], [3, 2, 1], [2, 1, 0]]}
    g = LevelGeometry.from_heuristics(h)
    # moving Right from (0,0) into (0,1): the hole (0,2) is ahead of the entered cell, i.e. two ahead;
    # the edge (row -1) is on the left of the move, (1,x) on its right
    win = grid_window(g, (0, 1), "right", set())
    assert win[4] == "." and win[1] == "H" and win[7] == "@"
    assert win[0] == "#" and win[3] == "#" and win[6] == "#"  # left of the move: off the grid
    assert win[8] == "." and win[5] == "." and win[2] == "."  # right of the move: row 1
    # moving Down from (1,2) into (2,2): the goal is ahead; the same cells seen from another direction
    assert grid_window(g, (2, 2), "down", set())[4] == "G"
    assert grid_window(g, (1, 1), "up", {(0, 1)})[1] == "B"  # boxes are overlaid per move


def test_frozenlake_planted_hole_rule():
    env = envs.make("frozenlake", obs_mode="text", format="no_think", max_actions_per_turn=1, size=3)
    mem = _memory()
    eps = [play(env, [["Right"], ["Right"]], level=LAKE) for _ in range(12)]  # into the hole, every time
    eps += [play(env, [["Down"], ["Down"], ["Right"], ["Right"]], level=LAKE) for _ in range(12)]  # safe path
    mem.update(eps)
    assert eps[0].outcome == "failure" and eps[-1].success
    lines = mem.skill_lines("frozenlake")
    assert "Avoid Right into a hole: it failed 100% of 12 times." in lines
    assert any(s.startswith("Prefer Right into the goal") for s in lines)


def test_sokoban_planted_deadlock_rule():
    env = envs.make("sokoban", obs_mode="text", format="no_think", max_actions_per_turn=3, max_turns=2)
    mem = _memory()
    # every episode pushes the box Up into the dead top line (a deadlock event)
    eps = [play(env, [["Right", "Up"]], level=SOKOBAN) for _ in range(12)]
    assert all(t.events and t.events[0]["kind"] == "deadlock" for e in eps for t in e.turns)
    mem.update(eps)
    rule = next(s for s in mem.skill_lines("sokoban") if s.startswith("Avoid Up"))
    assert rule.startswith("Avoid Up pushing a box into a dead square") and "failed 100% of 12 times" in rule


def test_navigation_planted_collision_rule():
    env = envs.make("navigation", obs_mode="text", format="no_think", max_actions_per_turn=1, width=32)
    _, info = env.reset(seed=1)
    blocked = np.zeros(info["state"]["shape"], dtype=bool)
    for r, c in info["heuristics"]["hazard"]:
        blocked[r, c] = True
    # walk forward until the way is blocked, then keep bumping: a collision every time
    plan, (r, c) = [], info["state"]["agent"]["cell"]
    dr, dc = HEADING_STEPS[HEADINGS.index(info["state"]["agent"]["heading"])]
    while not blocked[r + dr, c + dc]:
        plan.append(["move_forward"])
        r, c = r + dr, c + dc
    eps = [play(env, plan + [["move_forward"]] * 3, seed=1) for _ in range(4)]
    assert sum(e["kind"] == "collision" for ep in eps for t in ep.turns for e in t.events) == 12
    mem = _memory()
    mem.update(eps)
    rule = next(s for s in mem.skill_lines("navigation") if s.startswith("Avoid move_forward"))
    assert "blocked ahead" in rule and "failed 100% of 12 times" in rule


def _manip_episode(events, success):
    ep = Episode(env_name="manipulation", seed=0, level_hash="M", start_cell=[0, 0],
                 heuristics={"shape": [4, 4], "goals": [[3, 3]]})
    for i, e in enumerate(events):
        t = Turn(prompt_text="", actions=[e["kind"]], cells=[[0, 0], e["cell"]], metrics={},
                 terminated=success and i == len(events) - 1, events=[{**e, "step": 0}])
        ep.turns.append(t)
    ep.finish("success" if success else "truncated")
    return ep


def test_manipulation_planted_grasp_rules():
    far = {"kind": "pick_failed", "cell": [1, 1], "reason": "nothing_in_reach", "nearest_object_m": 0.12}
    on = {"kind": "pick", "cell": [2, 2], "nearest_object_m": 0.004}
    near = {"kind": "place", "cell": [3, 3], "nearest_object_m": 0.045}
    eps = [_manip_episode([far, far], False) for _ in range(6)] + [_manip_episode([on, near], True) for _ in range(12)]
    mem = _memory()
    mem.update(eps)
    lines = mem.skill_lines("manipulation")
    assert "Avoid pick away from every object: it failed 100% of 12 times." in lines
    assert "Prefer place next to an object: it was on successful paths 100% of 12 times." in lines
    assert "Prefer pick at an object: it was on successful paths 100% of 12 times." in lines


def test_pattern_moves_count_bumps_fatal_moves_and_events():
    env = envs.make("frozenlake", obs_mode="text", format="no_think", max_actions_per_turn=2, size=3)
    ep = play(env, [["Up", "Right"], ["Right"]], level=LAKE)  # a bump into the edge, a step, the hole
    moves = pattern_moves(ep, LevelGeometry.from_heuristics(ep.heuristics))
    assert [(a, f) for _, a, f in moves] == [("Up", True), ("Right", False), ("Right", True)]
    assert moves[0][0] == "grid:" + "#" * 9  # a move off the grid: nothing is known there


def test_wilson_threshold_caps_and_word_limit():
    long = "grid:" + "HHHHBHH@H"
    batch = [(long, a, True, False) for a in ("Up", "Down", "Left", "Right") for _ in range(9)]
    batch += [("grid:....G..@.", "Up", False, True) for _ in range(4)]  # support 4 < 5: no rule
    batch += [("grid:.........", "Left", i < 3, False) for i in range(5)]  # 3/5 = 0.6, but Wilson 0.23 < 0.6
    m = SkillMiner(min_support=5, threshold=0.6, max_rules=8)
    m.update([("toy", batch)])
    assert len(m.rules) == 4 and {r.pattern for r in m.rules} == {long}
    assert all(len(r.text().split()) <= MAX_WORDS for r in m.rules)
    capped = SkillMiner(min_support=5, threshold=0.6, max_rules=3)
    capped.update([("toy", batch)])
    assert len(capped.rules) == 3


def test_navigation_key_names_the_target_side_and_the_blocked_sides():
    # a 5×5 room: blocked cells at (1,2) and (2,3); the agent at (2,2)
    g = LevelGeometry.from_heuristics({"shape": [5, 5], "hazard": [[1, 2], [2, 3]], "goals": [[2, 0]]})
    north, east = 0, 1
    assert _nav_key(g, (2, 2), north, (2, 0)) == "nav:left:ahead,right"  # target west, facing north
    assert _nav_key(g, (2, 2), east, (2, 0)) == "nav:behind:ahead,left"  # facing east: (2,3) ahead, (1,2) left
    assert _nav_key(g, (2, 2), north, (4, 3)) == "nav:behind:ahead,right"
    assert _nav_key(g, (2, 2), east, (1, 4)) == "nav:ahead:ahead,left"
    assert _nav_key(g, (0, 0), north, (0, 0)) == "nav:here:ahead,left"  # the grid edge blocks too


@pytest.mark.parametrize("env", ["frozenlake", "sokoban", "navigation", "manipulation"])
def test_every_env_has_pattern_keys(env):
    """pattern_moves gives every env a key family (a planted-regularity test per env is above)."""
    prefix = {"frozenlake": "grid:", "sokoban": "grid:", "navigation": "nav:", "manipulation": "grasp:"}[env]
    if env == "manipulation":
        ep = _manip_episode([{"kind": "pick", "cell": [1, 1], "nearest_object_m": 0.0}], True)
        keys = pattern_moves(ep, LevelGeometry.from_heuristics(ep.heuristics))
    else:
        e = envs.make(env, obs_mode="text", format="no_think", max_actions_per_turn=1, **({"width": 32} if env == "navigation" else {}))
        e.reset(seed=4)
        ep = play(e, [[a] for a in e.action_names[:4]], seed=4)
        keys = pattern_moves(ep, LevelGeometry.from_heuristics(ep.heuristics))
    assert keys and all(k.startswith(prefix) for k, _, _ in keys)


def test_prefer_rules_must_beat_the_base_rate_of_success_path_moves():
    goal = "grid:....G..@."
    m = SkillMiner(min_support=10, threshold=0.6)
    m.update([("toy", [(goal, "Up", False, True)] * 20 + [("grid:.........", "Left", False, True)] * 200)])
    assert m.rules == []  # every move lies on a successful path: Up-into-the-goal says nothing more
    m2 = SkillMiner(min_support=10, threshold=0.6)
    m2.update([("toy", [(goal, "Up", False, True)] * 20 + [("grid:.........", "Left", False, i < 50) for i in range(200)])])
    assert [r.text() for r in m2.rules] == ["Prefer Up into the goal: it was on successful paths 100% of 20 times."]
