"""The object layers of the memory: Sokoban's box atlas (deadlock danger, box-path affinity, push-distance
heuristic) and manipulation's grasp atlas (pick/place outcomes by target), in updates, shaping, injection
and save/load; and bumps as skill facts rather than cell danger."""

from __future__ import annotations

import math

import numpy as np
import pytest
from memory_helpers import episode, frame, heuristics_3x3, play

from atlasva.envs.sokoban import SokobanEnv
from atlasva.memory import MemoryConfig, SkillMemory, episode_meta
from atlasva.memory.atlas import replay_boxes
from atlasva.memory.render import BOX_LEGEND, GRASP_LEGEND
from atlasva.rollout.episode import Episode, Turn

# box (2,2), target (3,4), player (3,1); row 1 is a dead wall line
LEVEL = ["######", "#____#", "#_X__#", "#P__O#", "######"]
SOLVE = [["Up", "Right", "Right"], ["Up", "Right", "Down"]]  # the solver's plan: box (2,2) -> (2,3) -> (2,4) -> (3,4)
DEADLOCK = [["Right", "Up"], ["Left", "Left"]]  # pushes the box into row 1, then wanders


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture()
def sok():
    return SokobanEnv(obs_mode="text", format="no_think", max_actions_per_turn=3, max_turns=10)


def test_replay_boxes_follows_the_push_rule():
    boxes, pushes = replay_boxes({(2, 2)}, [(3, 2), (2, 2), (2, 2), (2, 3)])
    assert boxes == {(1, 2)} and pushes == [(0, (2, 2), (1, 2))]  # a bump and a step beside it move nothing
    boxes, pushes = replay_boxes({(1, 1), (3, 3)}, [(1, 0), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3)])
    assert boxes == {(1, 3), (4, 3)} and pushes == [(0, (1, 1), (1, 2)), (1, (1, 2), (1, 3)), (4, (3, 3), (4, 3))]


def test_solve_and_deadlock_plans_do_what_the_tests_say(sok):
    ok = play(sok, SOLVE, level=LEVEL)
    assert ok.success and ok.turns[-1].state["boxes"] == [[3, 4]]
    dead = play(sok, DEADLOCK, level=LEVEL)
    assert dead.outcome == "truncated" or not dead.success
    assert [e["kind"] for t in dead.turns for e in t.events] == ["deadlock"]


def test_box_atlas_learns_deadlock_danger_and_successful_box_paths(sok):
    ok, dead = play(sok, SOLVE, level=LEVEL, group_id="g"), play(sok, DEADLOCK, level=LEVEL, group_id="g")
    mem = SkillMemory(MemoryConfig(visit_discount=1.0))
    mem.update([ok, dead])
    inst = mem._instances[("sokoban", ok.level_hash)]
    assert inst.object_kind == "box"
    box = inst.objects
    # the deadlock push put the box on (1,2) once, a failure: Beta-smoothed (1 + 1) / (1 + 1 + 3)
    assert box.danger[1, 2] == pytest.approx(2 / 5)
    assert box.danger[2, 3] == 0 and box.danger[3, 4] == 0  # cells the box crossed safely
    # group advantages of returns (1, 0): +1 and -1; cells only the winner's box entered get sigmoid(+1)
    assert box.affinity[2, 4] == pytest.approx(sig(1.0), rel=1e-5) and box.affinity[3, 4] == pytest.approx(sig(1.0), rel=1e-5)
    assert box.affinity[1, 2] == pytest.approx(sig(-1.0), rel=1e-5)
    assert box.affinity[2, 2] == pytest.approx(0.5)  # the start cell: both, equal weight at visit discount 1


def test_box_view_without_learning_is_the_push_distance_heuristic(sok):
    ep = play(sok, SOLVE, level=LEVEL)
    meta = episode_meta("sokoban", ep.level_hash, ep.heuristics, ep.start_cell)
    v = SkillMemory(MemoryConfig(learn_atlases=False)).snapshot().level_view(meta)
    dist = np.asarray(ep.heuristics["box_distance"])
    assert v.object_kind == "box"
    np.testing.assert_allclose(v.object_affinity, np.where(dist >= 0, 1 - dist / dist.max(), 0), rtol=1e-6)
    dead = np.zeros(dist.shape)
    for r, c in ep.heuristics["box_deadlock"]:
        dead[r, c] = 1
    np.testing.assert_array_equal(v.object_danger, dead)
    cfg = MemoryConfig()
    np.testing.assert_allclose(v.object_phi, cfg.box_weight * cfg.lam * (v.object_affinity - v.object_danger), rtol=1e-6)


def test_box_shaping_is_potential_based_over_player_and_boxes(sok):
    ok, dead = play(sok, SOLVE, level=LEVEL, group_id="g"), play(sok, DEADLOCK, level=LEVEL, group_id="g")
    mem = SkillMemory()
    mem.update([ok, dead])
    snap = mem.snapshot()
    for ep in (ok, dead):
        meta = episode_meta("sokoban", ep.level_hash, ep.heuristics, ep.start_cell)
        rec = Episode(env_name="sokoban", seed=None, level_hash=ep.level_hash, start_cell=ep.start_cell,
                      heuristics=ep.heuristics)
        meta1 = episode_meta("sokoban", ep.level_hash, ep.heuristics, ep.start_cell)  # shaped at γ = 1
        total, boxes = 0.0, ep.heuristics["boxes"]
        phi0 = snap.potential(meta, ep.start_cell, boxes)
        for turn in ep.turns:
            f = snap.shaping(meta, turn.cells, turn.terminated, 0.9)
            assert meta["boxes"] == turn.state["boxes"]  # the tracked boxes follow the env's
            # the same F from the Episode record itself (boxes replayed over its cells so far)
            assert snap.shaping(rec, turn.cells, turn.terminated, 0.9) == pytest.approx(f)
            rec.turns.append(turn)
            end = 0.0 if turn.terminated else snap.potential(meta, turn.cells[-1], turn.state["boxes"])
            start = snap.potential(meta, turn.cells[0], boxes)
            assert f == pytest.approx(0.9 * end - start)
            boxes = turn.state["boxes"]
            total += snap.shaping(meta1, turn.cells, turn.terminated, 1.0)
        last = ep.turns[-1]
        want = -phi0 if last.terminated else snap.potential(meta, last.cells[-1], last.state["boxes"]) - phi0
        assert total == pytest.approx(want)  # at γ = 1 the turns telescope
        assert abs(phi0) <= 0.1 + 1e-9


def test_sokoban_injection_shows_the_player_map_and_the_box_map_side_by_side(sok):
    ok, dead = play(sok, SOLVE, level=LEVEL, group_id="g"), play(sok, DEADLOCK, level=LEVEL, group_id="g")
    mem = SkillMemory(MemoryConfig(inject_exemplars=False, atlas_size=120))
    mem.update([ok, dead])
    meta = episode_meta("sokoban", ok.level_hash, ok.heuristics, ok.start_cell)
    obs = {"text": "<image>", "images": (np.zeros((60, 60, 3), np.uint8),)}
    text, images = mem.snapshot().inject(meta, obs, 0)
    assert text.startswith(BOX_LEGEND) and text.count("<image>") == len(images) == 2
    img = images[0]
    tile = 120 // 6
    assert img.shape == (5 * tile, 2 * 6 * tile + 6, 3)
    assert (img[:, 6 * tile : 6 * tile + 6] == 128).all()  # the grey bar between the two maps
    right = img[:, 6 * tile + 6 :]
    r, c = 2, 2  # the box's start cell is outlined white on the box map, the player's (3,1) on the left
    assert (right[r * tile, c * tile + tile // 2] == 255).all() and (img[3 * tile, 1 * tile + tile // 2] == 255).all()
    assert not (right[3 * tile, 1 * tile + tile // 2] == 255).all()


# --------------------------------------------------------------------------- grasp atlas

GRASP_H = {**heuristics_3x3(hole=None), "table_to_image": [[1 / 3, 0, 0], [0, 1 / 3, 0], [0, 0, 1]]}


def _grasp_episode(events_per_turn, success, group="g"):
    """A manipulation-like record on a 3×3 table: the gripper cell follows each event's target."""
    ep = Episode(env_name="manip", seed=0, level_hash="T", group_id=group, start_cell=[2, 0], heuristics=GRASP_H)
    cell = [2, 0]
    for i, evs in enumerate(events_per_turn):
        last = i == len(events_per_turn) - 1
        cells = [cell] + [e["cell"] for e in evs]
        cell = cells[-1]
        t = Turn(prompt_text="", actions=[e["kind"] for e in evs], cells=cells, terminated=last and success,
                 truncated=last and not success, metrics={"success": last and success},
                 events=[{**e, "step": k} for k, e in enumerate(evs)], frames=[frame((0, 0))])
        ep.turns.append(t)
    ep.finish("success" if success else "truncated")
    return ep


def test_grasp_atlas_keeps_pick_and_place_outcomes_by_target_and_shapes_at_the_gripper_cell():
    win = _grasp_episode([[{"kind": "pick", "cell": [0, 2]}], [{"kind": "place", "cell": [2, 2]}]], True)
    lose = _grasp_episode([[{"kind": "pick_failed", "cell": [0, 1]}], [{"kind": "place_failed", "cell": [1, 2]}]], False)
    mem = SkillMemory(MemoryConfig(visit_discount=1.0))
    mem.update([win, lose])
    inst = mem._instances[("manip", "T")]
    assert inst.object_kind == "grasp"
    g = inst.objects
    assert g.danger[0, 1] == pytest.approx(2 / 5) and g.danger[1, 2] == pytest.approx(2 / 5) and g.danger[0, 2] == 0
    assert g.affinity[0, 2] == pytest.approx(sig(1.0), rel=1e-5) and g.affinity[0, 1] == pytest.approx(sig(-1.0), rel=1e-5)
    snap = mem.snapshot()
    meta = episode_meta("manip", "T", GRASP_H)
    v = snap.level_view(meta)
    cfg = mem.config
    grasp_phi = cfg.grasp_weight * cfg.lam * (v.object_affinity - v.object_danger)
    np.testing.assert_allclose(v.object_phi, grasp_phi, rtol=1e-6)
    # Φ at the gripper cell = agent part + grasp part; F over a pick at (0,2) from (2,0)
    phi = v.phi + v.object_phi
    assert snap.potential(meta, [0, 2]) == pytest.approx(phi[0, 2])
    assert snap.shaping(meta, [[2, 0], [0, 2]], False, 0.95) == pytest.approx(0.95 * phi[0, 2] - phi[2, 0])
    assert phi[0, 2] > phi[0, 1]  # a target where a pick succeeded beats one where it failed


def test_grasp_overlay_tints_only_the_cells_with_evidence():
    win = _grasp_episode([[{"kind": "pick", "cell": [2, 2]}]], True)
    lose = _grasp_episode([[{"kind": "pick_failed", "cell": [0, 1]}]], False)
    mem = SkillMemory(MemoryConfig(inject_exemplars=False, inject_skills=False))
    for _ in range(6):  # evidence accumulates: D = 0.4 at the failed target, A leaves 0.5 on both
        mem.update([win, lose])
    obs = {"text": "<image>", "images": (np.full((30, 30, 3), 100, np.uint8),)}
    text, images = mem.snapshot().inject(episode_meta("manip", "T", GRASP_H, [2, 0]), obs, 0)
    assert GRASP_LEGEND in text and text.count("<image>") == len(images) == 2
    tinted = images[-1]
    # the homography maps grid cell (row r, col c) onto pixel rows 10r..10r+9, columns 10c..10c+9
    changed = (tinted != 100).any(axis=2)
    assert changed[0:10, 10:20].all() and changed[20:30, 20:30].all() and changed.sum() == 200
    assert tinted[5, 15, 0] > tinted[5, 15, 1]  # red: the failed pick
    assert tinted[25, 25, 1] > tinted[25, 25, 0]  # green: the successful one
    assert (np.asarray(obs["images"][0]) == 100).all()  # the caller's frame is not modified


def test_object_atlases_survive_save_and_load(tmp_path, sok):
    mem = SkillMemory()
    mem.update([play(sok, SOLVE, level=LEVEL, group_id="g"), play(sok, DEADLOCK, level=LEVEL, group_id="g")])
    mem.update([_grasp_episode([[{"kind": "pick", "cell": [0, 2]}]], True),
                _grasp_episode([[{"kind": "pick_failed", "cell": [0, 1]}]], False)])
    loaded = SkillMemory.load(mem.save(tmp_path / "m"))
    assert loaded.state_equal(mem)
    assert loaded._instances[("manip", "T")].object_kind == "grasp" and loaded._canonical_objects.keys() == {"sokoban"}


# --------------------------------------------------------------------------- bumps


def test_bumps_are_skill_facts_not_cell_danger():
    bumps = [episode([(0, 0), (0, 0), (0, 0), (0, 0)], "truncated", env="frozenlake", heuristics=heuristics_3x3())
             for _ in range(12)]  # Up from (0,0): into the edge, three times each
    mem = SkillMemory(MemoryConfig(skill_min_support=10))
    mem.update(bumps)
    assert mem.instance_atlas("frozenlake", "L1").danger.max() == 0  # no cell danger by default
    assert mem.skill_lines("frozenlake") == ["Avoid Up into the edge: it failed 100% of 36 times."]
    with pytest.raises(TypeError, match="ineffective_weight"):  # the former option is gone (see MemoryConfig)
        MemoryConfig(ineffective_weight=0.25)


def test_the_panel_shows_the_box_atlas_and_the_grasp_atlas(tmp_path, sok, monkeypatch):
    import atlasva.memory.memory as memory_module

    captions: dict[str, list[str]] = {}
    draw = memory_module.panel

    def capture(path, rows, title):
        captions.update({row["name"]: [caption for _, caption in row["tiles"]] for row in rows})
        return draw(path, rows, title)

    monkeypatch.setattr(memory_module, "panel", capture)
    mem = SkillMemory()
    mem.update([play(sok, SOLVE, level=LEVEL, group_id="g"), play(sok, DEADLOCK, level=LEVEL, group_id="g")])
    mem.update([_grasp_episode([[{"kind": "pick", "cell": [0, 2]}]], True),
                _grasp_episode([[{"kind": "pick_failed", "cell": [0, 1]}]], False)])
    assert mem.render_png(tmp_path / "panel.png").stat().st_size > 0
    assert any(c.startswith("box atlas") for c in captions["sokoban"])
    assert "injected image: player map | box map" in captions["sokoban"]
    assert any(c.startswith("grasp atlas: pick/place targets (2 cells)") for c in captions["manip"])
    assert "observation with the grasp overlay (injected)" in captions["manip"]
