"""The ``info["events"]`` contract (docs/memory.md): failure and irreversible events of a turn's primitive
actions, each ``{"kind", "step", "cell", ...}``, JSON-native, in every env; and the heuristics the
object atlases read (Sokoban's start boxes and push distance, manipulation's table-to-image homography)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from atlasva import envs, formats
from atlasva.envs.sokoban import SokobanEnv

# two boxes below the top wall line, which holds a target: one box pushed up stays live, two side by side
# form a 2×2 square with the wall (a "block")
BLOCK_LEVEL = ["#######", "#O____#", "#__XX_#", "#___P_#", "#O____#", "#######"]


def _step(env, *actions):
    return env.step(formats.answer(list(actions), env.format, action_sep=env.action_sep))


def _check_events(info):
    assert json.loads(json.dumps(info["events"])) == info["events"]
    for e in info["events"]:
        assert {"kind", "step", "cell"} <= set(e) and 0 <= e["step"] < len(info["actions"])
        assert len(e["cell"]) == 2


@pytest.mark.parametrize("name,kwargs", [("sokoban", {}), ("frozenlake", {}), ("navigation", {"width": 32})])
def test_every_step_reports_events(name, kwargs):
    env = envs.make(name, obs_mode="text", **kwargs)
    env.reset(seed=3)
    for action in env.action_names[:4]:
        *_, info = _step(env, action, action)
        assert isinstance(info["events"], list)
        _check_events(info)
        if info["metrics"]["success"]:
            break


def test_sokoban_deadlock_push_reports_the_box_cell_and_the_episode_goes_on():
    env = SokobanEnv(obs_mode="text", format="no_think")
    env.reset(options={"level": ["######", "#____#", "#_X__#", "#P__O#", "######"]})
    *_, term, trunc, info = _step(env, "Right", "Up", "Up")  # the second action pushes the box into row 1
    assert info["events"] == [
        {"kind": "deadlock", "step": 1, "cell": [1, 2], "from": [2, 2], "action": "Up", "reason": "dead_square"}]
    assert not term and not trunc and env.failure() == "deadlock"
    *_, info = _step(env, "Left", "Up", "Right")  # sliding the stuck box along the line is no new event
    assert info["state"]["boxes"] == [[1, 3]] and info["events"] == []


def test_sokoban_two_boxes_side_by_side_under_a_wall_are_a_block_deadlock():
    env = SokobanEnv(obs_mode="text", format="no_think", max_actions_per_turn=4)
    env.reset(options={"level": BLOCK_LEVEL})
    *_, info = _step(env, "Up")  # box (2,4) -> (1,4): the top line holds a target, the box is still live
    assert info["events"] == [] and env.failure() is None
    *_, info = _step(env, "Down", "Left", "Up")  # box (2,3) -> (1,3), beside the other one
    assert info["events"] == [
        {"kind": "deadlock", "step": 2, "cell": [1, 3], "from": [2, 3], "action": "Up", "reason": "block"}]
    assert env.failure() == "deadlock"
    _check_events(info)


def test_sokoban_heuristics_carry_start_boxes_and_push_distance():
    env = SokobanEnv(obs_mode="text")
    env.reset(options={"level": ["######", "#____#", "#_X__#", "#P__O#", "######"]})
    h = env.grid_heuristics()
    assert h["boxes"] == [[2, 2]]
    dist = np.asarray(h["box_distance"])
    # target (3,4); a box reaches it by pushes Right along row 3 (player behind it on the left), and
    # (2,4) by one push Down (player above it at (1,4))
    assert dist[3, 4] == 0 and dist[3, 3] == 1 and dist[3, 2] == 2 and dist[2, 4] == 1
    assert dist[1, 2] == -1 and dist[0, 0] == -1  # the top line is dead; walls are never reachable
    dead = {tuple(c) for c in h["box_deadlock"]}
    assert all(dist[r, c] == -1 for r, c in dead)  # a simple deadlock cell is never push-reachable
    assert dist[2, 2] == 3  # Down to (3,2), then Right twice (or Right twice, then Down)


def test_navigation_collision_reports_the_blocked_cell():
    env = envs.make("navigation", obs_mode="text", format="no_think", max_actions_per_turn=1, width=32)
    _, info = env.reset(seed=1)
    blocked = {tuple(c) for c in info["heuristics"]["hazard"]}
    for _ in range(40):
        before = info["cells"][-1]
        *_, info = _step(env, "move_forward")
        if info["events"]:
            break
        if info["cells"][-1] == before:
            pytest.fail("a blocked move without a collision event")
    (e,) = info["events"]
    assert e["kind"] == "collision" and e["from"] == before and info["cells"] == [before, before]
    assert tuple(e["cell"]) in blocked and abs(e["cell"][0] - before[0]) + abs(e["cell"][1] - before[1]) == 1
    assert e["heading"] == info["state"]["agent"]["heading"] and e["action"] == "move_forward"
    _check_events(info)


def test_frozenlake_reports_no_events():
    env = envs.make("frozenlake", obs_mode="text")
    env.reset(seed=2)
    *_, info = _step(env, *env.solve()[:3])
    assert info["events"] == []


@pytest.fixture(scope="module")
def manip():
    env = envs.make("manipulation", obs_mode="vision", format="no_think", max_actions_per_turn=2, max_turns=50)
    yield env
    env.close()


def test_manipulation_reports_picks_and_places_with_their_targets(manip):
    _, info = manip.reset(seed=5)
    objs = {o["name"]: o["position"] for o in info["state"]["objects"]}
    g, r = objs["green cube"], objs["red cube"]
    *_, info = _step(manip, f"pick({g[0]:.3f}, {g[1]:.3f}, {g[2]:.3f})", "pick(0.0, 0.0, 0.02)")
    assert [e["kind"] for e in info["events"]] == ["pick", "pick_failed"]
    ok, again = info["events"]
    assert ok["object"] == "green cube" and ok["cell"] == manip._bin(g[0], g[1]) and ok["nearest_object_m"] < 0.005
    assert again["reason"] == "already_holding" and again["step"] == 1
    # dropped 2 cm beside the red cube's centre, the green cube slides off it: a failed place
    *_, info = _step(manip, f"place({r[0] + 0.02:.3f}, {r[1]:.3f}, 0.02)", "place(0.1, 0.1, 0.02)")
    miss, empty = info["events"]
    assert miss["kind"] == "place_failed" and miss["reason"] == "off_target" and miss["miss_m"] > 0.02
    assert miss["cell"] == manip._bin(r[0] + 0.02, r[1]) and miss["nearest_object_m"] == pytest.approx(0.02, abs=1e-3)
    assert empty["kind"] == "place_failed" and empty["reason"] == "gripper_empty"
    *_, info = _step(manip, "pick(0.2, -0.2, 0.02)")  # nothing there
    (e,) = info["events"]
    assert e["kind"] == "pick_failed" and e["reason"] == "nothing_in_reach" and e["nearest_object_m"] > 0.05
    _check_events(info)


def test_manipulation_table_to_image_projects_objects_onto_their_pixels(manip):
    obs, info = manip.reset(seed=2)
    h = np.asarray(info["heuristics"]["table_to_image"])
    img = obs["images"][0]
    cell_w = 0.5 / manip.grid
    colours = {"red cube": 0, "green cube": 1}
    for o in info["state"]["objects"]:
        x, y, _ = o["position"]
        u, v, w = h @ [(x + 0.25) / cell_w, (0.25 - y) / cell_w, 1.0]
        px = img[int(v / w * img.shape[0]), int(u / w * img.shape[1])].astype(int)
        assert np.argmax(px) == colours[o["name"]] and px.max() > 150, (o["name"], px)


def test_the_agent_loop_records_the_events_and_the_record_keeps_them():
    # the record the memory learns from is written by the agent loop: a turn's info["events"] must reach
    # Turn.events and survive the episode's JSON form (the verl transport and the run's episode files)
    from atlasva.envs.pool import InProcessEnvPool
    from atlasva.rollout.episode import Episode
    from atlasva.rollout.loop import AgentLoop, EpisodeRequest, RolloutConfig
    from atlasva.rollout.scripted import scripted_policy

    config = {"format": "no_think", "max_actions_per_turn": 1, "width": 32}
    env = envs.make("navigation", obs_mode="text", **config)
    env.reset(seed=1)
    expected = []
    for _ in range(12):  # forward until blocked (a collision every turn from then on)
        *_, info = _step(env, "move_forward")
        expected.append(info["events"])
    assert any(expected), "navigation seed 1 never collides moving forward: pick another seed"
    answer = formats.answer(["move_forward"], "no_think")
    loop = AgentLoop(scripted_policy({1: [answer] * 12}), InProcessEnvPool(), RolloutConfig(max_turns=12))
    (ep,) = loop.run([EpisodeRequest("navigation", 1, dict(config))]).episodes
    assert [t.events for t in ep.turns] == expected
    assert [t.events for t in Episode.from_dict(json.loads(json.dumps(ep.to_dict()))).turns] == expected
