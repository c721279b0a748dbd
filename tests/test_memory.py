"""SkillMemory: atlases (danger, affinity, EMA, decay, scopes, groups), exemplars, skills, injection."""

from __future__ import annotations

import math

import numpy as np
import pytest
from memory_helpers import episode, frame, heuristics_3x3

from atlasva.memory import MemoryConfig, SkillMemory, episode_meta
from atlasva.memory.exemplars import ExemplarBank, make_exemplar
from atlasva.memory.skills import SkillMiner, wilson_lower

SUCCESS = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]
FAIL = [(0, 0), (0, 1), (1, 1)]
NO_HAZARD = heuristics_3x3(hole=None)


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# --------------------------------------------------------------------------- danger


def test_danger_rises_on_the_hole_after_failures_beta_smoothed():
    mem = SkillMemory()
    mem.update([episode(FAIL, "failure", heuristics=NO_HAZARD)])
    d = mem.instance_atlas("toy", "L1").danger
    # d̂ = (f + 1) / (n + 1 + 3) where f > 0; the first (debiased) EMA step sets it
    assert d[1, 1] == pytest.approx(2 / 5)
    # visited without failure evidence: no learned danger (not the prior's 1/(n+4))
    assert d[0, 0] == 0.0 and d[0, 1] == 0.0
    assert d[2, 2] == 0.0
    mem.update([episode(FAIL, "failure", heuristics=NO_HAZARD)] * 2)
    d = mem.instance_atlas("toy", "L1").danger
    # second update: rate max(0.2, 1/2) = 0.5, d̂ = 3/6
    assert d[1, 1] == pytest.approx(0.5 * 0.4 + 0.5 * 0.5)
    # decay of unvisited cells: an update that does not visit (1,1)
    mem.update([episode([(0, 0), (1, 0), (2, 0)], "truncated", heuristics=NO_HAZARD)])
    assert mem.instance_atlas("toy", "L1").danger[1, 1] == pytest.approx(0.98 * 0.45)
    # the view the agent sees: the learned danger (no env hazard listed here)
    snap = mem.snapshot()
    _, dv, _, _ = snap.view(episode_meta("toy", "L1", NO_HAZARD))
    assert dv[1, 1] == pytest.approx(0.98 * 0.45)
    # with the env's hazard heuristic, max-blend: the hole is full danger
    _, dh, _, _ = mem.snapshot().view(episode_meta("toy", "L1", heuristics_3x3()))
    assert dh[1, 1] == 1.0


def test_safe_visits_carry_no_danger_and_wash_out_old_danger():
    mem = SkillMemory(MemoryConfig(failure_trace=0.5))
    mem.update([episode(FAIL, "failure", heuristics=NO_HAZARD)])
    # (0,1) is one cell before the hole: credit 0.5, visits 1 -> (0.5 + 1)/(1 + 4)
    assert mem.instance_atlas("toy", "L1").danger[0, 1] == pytest.approx(1.5 / 5)
    # a later batch passes (0,1) safely (twice): D_batch = 0 there, rate max(0.2, 1/2) = 0.5
    safe = episode([(0, 0), (0, 1), (0, 2), (0, 1)], "truncated", heuristics=NO_HAZARD)
    mem.update([safe])
    d = mem.instance_atlas("toy", "L1").danger
    assert d[0, 1] == pytest.approx(0.5 * 0.3)
    assert d[0, 2] == 0.0  # visited only safely: exactly zero
    assert d[0, 0] == pytest.approx(0.5 * (0.25 + 1) / 5)  # trace 0.5² two cells before the hole, then a safe visit
    assert d[1, 1] == pytest.approx(0.98 * 0.4)  # unvisited: decay
    # a level that never fails (Sokoban-like, no terminal failures): the learned danger stays 0 everywhere
    calm = SkillMemory()
    for _ in range(3):
        calm.update([episode(SUCCESS, "success", heuristics=NO_HAZARD, level="S"), episode(FAIL, "truncated",
                     heuristics=NO_HAZARD, level="S")])
    assert calm.instance_atlas("toy", "S").danger.max() == 0.0
    assert calm.canonical_atlas("toy").danger.max() == 0.0
    _, dv, _, _ = calm.snapshot().view(episode_meta("toy", "S", NO_HAZARD))
    assert dv.max() == 0.0


def test_plain_ema_without_debias():
    mem = SkillMemory(MemoryConfig(ema_debias=False, ema=0.2))
    mem.update([episode(FAIL, "failure")])
    assert mem.instance_atlas("toy", "L1").danger[1, 1] == pytest.approx(0.2 * 0.4)
    mem.update([episode(FAIL, "failure")] * 2)
    assert mem.instance_atlas("toy", "L1").danger[1, 1] == pytest.approx(0.8 * 0.08 + 0.2 * 0.5)


def test_bumps_carry_no_danger_and_the_failure_trace_credits_the_cells_before_a_hole():
    bump = episode([(0, 0), (0, 0), (0, 1)], "truncated")  # first move bumps into the edge
    mem = SkillMemory(MemoryConfig(failure_trace=0.5))
    mem.update([bump, episode(FAIL, "failure")])
    d = mem.instance_atlas("toy", "L1").danger
    # (0,0): visits 3 (bump start, bump, FAIL start), credit 0.5² only (two cells before the hole)
    assert d[0, 0] == pytest.approx((0.25 + 1) / (3 + 4))
    # (0,1): visits 2, trace credit 0.5 (one cell before the hole) -> (0.5+1)/(2+4)
    assert d[0, 1] == pytest.approx(1.5 / 6)
    assert d[1, 1] == pytest.approx(2 / 5)  # the hole: (1 + 1) / (1 + 4)


# --------------------------------------------------------------------------- affinity


def test_affinity_group_relative_visitation_advantage():
    mem = SkillMemory(MemoryConfig(visit_discount=1.0))
    mem.update([episode(SUCCESS, "success", group_id="g"), episode(FAIL, "failure", group_id="g")])
    a = mem.instance_atlas("toy", "L1").affinity
    adv = 0.5 / (0.5 + 1e-6)  # returns (1, 0): mean 0.5, std 0.5
    assert a[1, 0] == pytest.approx(sig(adv), rel=1e-6)  # success path only
    assert a[0, 1] == pytest.approx(sig(-adv), rel=1e-6)  # failure path only
    assert a[0, 0] == pytest.approx(0.5)  # both
    assert a[0, 2] == pytest.approx(0.5)  # unvisited: initial value
    ev = mem.instance_atlas("toy", "L1").evidence
    assert ev[0, 0] == 2 and ev[1, 0] == 1 and ev[0, 2] == 0


def test_visit_discount_weights_late_cells():
    mem = SkillMemory(MemoryConfig(visit_discount=0.5))
    loop = [(0, 0), (0, 1), (0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]  # success revisits (0,0)
    mem.update([episode(loop, "success", group_id="g"), episode([(0, 0), (0, 1), (1, 1)], "failure", group_id="g")])
    a = mem.instance_atlas("toy", "L1").affinity
    adv = 0.5 / (0.5 + 1e-6)
    # (0,0): success weights 0.5^6 + 0.5^4, failure weight 0.5^2
    ws, wf = 0.5**6 + 0.5**4, 0.5**2
    assert a[0, 0] == pytest.approx(sig(adv * (ws - wf) / (ws + wf)), rel=1e-6)


def test_groups_without_outcome_variance_carry_no_affinity_evidence():
    mem = SkillMemory()
    mem.update([episode(SUCCESS, "success", group_id="a"), episode(SUCCESS, "success", group_id="a")])
    assert mem.instance_atlas("toy", "L1").evidence.sum() == 0


def test_grouping_by_level_when_each_group_holds_one_episode():
    mem = SkillMemory(MemoryConfig(visit_discount=1.0))
    # PPO-style: distinct group ids -> grouped by level; two levels
    mem.update([
        episode(SUCCESS, "success", group_id="1"), episode(FAIL, "failure", group_id="2"),
        episode(SUCCESS, "success", group_id="3", level="L2"),
    ])
    assert mem.instance_atlas("toy", "L1").affinity[1, 0] > 0.7
    assert mem.instance_atlas("toy", "L2").evidence.sum() == 0  # L2 alone: no variance
    # canonical scope groups the whole env: 2 successes, 1 failure
    can = mem.canonical_atlas("toy")
    r = mem.config.canonical_radius
    assert can.evidence.sum() > 0
    assert can.affinity[r - 1, r - 2] > 0.5  # (1,0) relative to goal (2,2): offset (-1,-2)


def test_canonical_scope_transfers_to_a_level_with_the_goal_elsewhere():
    mem = SkillMemory(MemoryConfig(scope="canonical", use_heuristics=False, visit_discount=1.0))
    for _ in range(3):
        mem.update([episode(SUCCESS, "success", group_id="g"), episode(FAIL, "failure", group_id="g")])
    # new level: goal at (1,2) instead of (2,2): offsets shift up one row
    other = heuristics_3x3(hole=None, goal=(1, 2))
    _, _, a, _ = mem.snapshot().view(episode_meta("toy", "L9", other))
    r = mem.config.canonical_radius
    # cell (0,0) is at offset (-1,-2), where (1,0) of the old level was: success path only
    learned = mem.canonical_atlas("toy").affinity[r - 1, r - 2]
    ev = 0.98**2 + 0.98 + 1  # decayed evidence after three updates
    conf = ev / (ev + 4)
    assert a[0, 0] == pytest.approx(conf * learned + (1 - conf) * 0.5, rel=1e-5)
    assert a[0, 0] > 0.5


def test_affinity_heuristic_weight_anneals_with_evidence():
    mem = SkillMemory(MemoryConfig(visit_discount=1.0))
    meta = episode_meta("toy", "L1", heuristics_3x3())
    h_a = 1 - 3 / 4  # goal distance 3 of max 4 at (1,0)
    assert mem.snapshot().view(meta)[2][1, 0] == pytest.approx(h_a)
    mem.update([episode(SUCCESS, "success", group_id="g"), episode(FAIL, "failure", group_id="g")])
    inst = mem.instance_atlas("toy", "L1")
    can = mem.canonical_atlas("toy")
    r = mem.config.canonical_radius
    ci, cc = 1 / (1 + 4), 1 / (1 + 4)  # one piece of evidence in each scope
    conf = ci + (1 - ci) * cc
    learned = (ci * inst.affinity[1, 0] + (1 - ci) * cc * can.affinity[r - 1, r - 2]) / conf
    w = 0.3 + 0.7 * (1 - conf)
    assert mem.snapshot().view(meta)[2][1, 0] == pytest.approx(w * h_a + (1 - w) * learned, rel=1e-5)


def test_heuristics_only_config_learns_no_atlas():
    mem = SkillMemory(MemoryConfig(learn_atlases=False))
    mem.update([episode(FAIL, "failure")])
    assert mem.instance_atlas("toy", "L1") is None and mem.version == 1


def test_update_rejects_running_episodes_and_bad_config():
    ep = episode(FAIL, "failure")
    ep.outcome = "running"
    with pytest.raises(ValueError, match="still running"):
        SkillMemory().update([ep])
    with pytest.raises(ValueError, match="scope"):
        MemoryConfig(scope="global")
    with pytest.raises(ValueError, match="ema"):
        MemoryConfig(ema=1.5)
    with pytest.raises(ValueError, match="unknown memory config"):
        MemoryConfig.from_dict({"emaa": 0.1})


def test_snapshot_is_frozen():
    mem = SkillMemory()
    mem.update([episode(FAIL, "failure")])
    snap = mem.snapshot()
    meta = episode_meta("toy", "L1", heuristics_3x3())
    before = snap.view(meta)[3].copy()
    v0 = snap.version
    for _ in range(3):
        mem.update([episode(FAIL, "failure"), episode(SUCCESS, "success")])
    assert snap.version == v0 == 1 and mem.version == 4
    # recomputed from the snapshot's own state (not its cache), the view is still the old one …
    snap._views.clear()
    np.testing.assert_array_equal(snap.view(meta)[3], before)
    # … while the live memory has moved on
    assert not np.array_equal(mem.snapshot().view(meta)[3], before)


# --------------------------------------------------------------------------- exemplars


def test_exemplars_from_failures_and_shortest_success_with_captions():
    mem = SkillMemory()
    long_win = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2)]
    mem.update([episode(FAIL, "failure"), episode(FAIL, "failure"), episode(SUCCESS, "success"), episode(long_win + [], "success")])
    fails = [e for e in mem.exemplars if e.kind == "failure"]
    wins = [e for e in mem.exemplars if e.kind == "success"]
    assert len(fails) == 1 and fails[0].count == 2  # the same key frame deduplicated
    assert fails[0].caption() == "FAILURE at (0,1): Down → fell into a hole, seen 2×"
    assert len(wins) == 1 and wins[0].steps == 4
    assert wins[0].caption() == "SUCCESS at (2,1): Right → reached the goal in 4 steps, seen 1×"


def test_exemplar_dedup_by_perceptual_hash_and_eviction_by_utility():
    bank = ExemplarBank(capacity=2, dedup_bits=8, recency=0.5)
    a = make_exemplar("failure", "toy", "L", [0, 0], "Down", frame((0, 0)), now=1)
    a2 = make_exemplar("failure", "toy", "L", [0, 0], "Down", frame((0, 0)), now=1)
    b = make_exemplar("failure", "toy", "L", [2, 2], "Down", frame((2, 2)), now=1)
    c = make_exemplar("failure", "toy", "L", [0, 2], "Down", frame((0, 2)), now=3)
    bank.add(a, 1)
    bank.add(a2, 1)
    assert len(bank.items) == 1 and bank.items[0].count == 2
    bank.add(b, 1)
    assert len(bank.items) == 2
    # at now=3: utilities a = 2·0.5² = 0.5, b = 1·0.5² = 0.25, c = 1 -> b is evicted
    bank.add(c, 3)
    assert sorted(tuple(e.cell) for e in bank.items) == [(0, 0), (0, 2)]
    # retrieval: most similar frame first
    top = bank.retrieve("toy", frame((0, 2)), "L", k_failure=1, k_success=0, now=3)
    assert top[0].cell == [0, 2]
    top = bank.retrieve("toy", frame((0, 0)), "L", k_failure=1, k_success=0, now=3)
    assert top[0].cell == [0, 0]


# --------------------------------------------------------------------------- skills


HOLE_AHEAD = "grid:....H..@."  # the rotated 3×3 window: a hole in the cell the move enters


def _events(n: int, fails: int, pattern: str = HOLE_AHEAD, action: str = "Down"):
    return [(pattern, action, i < fails, False) for i in range(n)]


def test_wilson_lower_bound_hand_values():
    z = 1.959963984540054  # the 95% quantile the run summaries use too (one Wilson for the project)
    assert wilson_lower(10, 10) == pytest.approx(10 / (10 + z**2))
    assert wilson_lower(0, 0) == 0.0
    assert wilson_lower(5, 10) == pytest.approx(0.2366, abs=1e-4)


def test_skill_mining_thresholds_votes_and_cap():
    m = SkillMiner(min_support=10, threshold=0.6, max_rules=8)
    m.update([("frozenlake", _events(9, 9))])
    assert m.rules == []  # support 9 < 10
    m.update([("frozenlake", _events(1, 1))])
    assert [r.text() for r in m.rules] == ["Avoid Down into a hole: it failed 100% of 10 times."]
    m2 = SkillMiner(min_support=10, threshold=0.6)
    m2.update([("frozenlake", _events(10, 7))])  # Wilson(7/10) = 0.397 < 0.6
    assert m2.rules == []
    # a contradicting batch votes the rule down (score 1 -> 0 kept, -1 dropped)
    m.update([("frozenlake", _events(3, 0))])
    assert len(m.rules) == 1 and m.rules[0].score == 0
    m.update([("frozenlake", _events(3, 0))])
    assert m.rules == []
    # cap per env
    m3 = SkillMiner(min_support=1, threshold=0.1, max_rules=2)
    m3.update([("toy", _events(20, 20, action=a)) for a in ("Left", "Right", "Up", "Down")])
    assert len(m3.rules) == 2 and all(len(r.text().split()) <= 32 for r in m3.rules)


def test_memory_mines_skills_from_episodes():
    mem = SkillMemory(MemoryConfig(skill_min_support=3))
    mem.update([episode(FAIL, "failure", env="frozenlake") for _ in range(5)])
    assert mem.skill_lines("frozenlake") == []  # Wilson(5/5) = 0.566 < 0.6
    mem.update([episode(FAIL, "failure", env="frozenlake")])
    # FAIL's last move goes Down into the hole at (1, 1); the goal (2, 2) is two ahead on its left
    assert mem.skill_lines("frozenlake") == [
        "Avoid Down into a hole (goal 2-ahead-left): it failed 100% of 6 times."]


# --------------------------------------------------------------------------- injection


def _obs():
    return {"text": "The initial observation is:\n<image>\nDecide your next action(s).", "images": (frame((0, 0)),)}


def test_injection_layers_placeholders_and_turn_policy():
    mem = SkillMemory(MemoryConfig(skill_min_support=3))
    mem.update([episode(FAIL, "failure", env="frozenlake", level="L", heuristics=heuristics_3x3()) for _ in range(6)]
               + [episode(SUCCESS, "success", env="frozenlake", level="L")])
    snap = mem.snapshot()
    meta = episode_meta("frozenlake", "L", heuristics_3x3(), cell=[0, 0])
    text, images = snap.inject(meta, _obs(), turn=0)
    assert text.count("<image>") == len(images) == 1 + 2 + 1  # atlas, failure + success exemplar, observation
    assert text.startswith("Memory map <image>: red = danger")
    assert "FAILURE at (0,1): Down → fell into a hole, seen 6×" in text
    assert "- Avoid Down into a hole" in text
    atlas = images[0]
    assert atlas.shape == (222, 222, 3) and atlas.dtype == np.uint8  # 3 cells × 74 px
    assert atlas[111, 111, 0] == 255 and atlas[111, 111, 2] == 0  # the hole (1,1) is full red
    assert tuple(atlas[0, 0]) == (255, 255, 255)  # agent outlined at (0,0)
    assert tuple(atlas[148, 148]) == (60, 120, 255)  # goal outlined at (2,2)
    np.testing.assert_array_equal(images[-1], _obs()["images"][0])  # observation last, untouched
    # later turns: nothing by default; every turn on request
    t1, i1 = snap.inject(meta, _obs(), turn=1)
    assert t1 == _obs()["text"] and len(i1) == 1
    every = SkillMemory(MemoryConfig(inject_every_turn=True)).snapshot()
    t2, i2 = every.inject(meta, _obs(), turn=3)
    assert t2.count("<image>") == len(i2) == 2


@pytest.mark.parametrize(
    "switches, n_images",
    [
        ({"inject_atlas": False}, 1 + 2),
        ({"inject_exemplars": False}, 1 + 1),
        ({"inject_skills": False, "inject_exemplars": False, "inject_atlas": False}, 1),
        ({"overlay": True}, 1 + 2),
        ({"enable": False}, 1),
    ],
)
def test_injection_switches_keep_placeholders_matched(switches, n_images):
    mem = SkillMemory(MemoryConfig(skill_min_support=3, **switches))
    mem.update([episode(FAIL, "failure", level="L") for _ in range(6)] + [episode(SUCCESS, "success", level="L")])
    text, images = mem.snapshot().inject(episode_meta("toy", "L", heuristics_3x3(), [0, 0]), _obs(), 0)
    if switches.get("enable", True) is not False and switches.get("inject_skills", True):
        assert "- Avoid Down into a hazard" in text
    assert text.count("<image>") == len(images) == n_images
    if switches.get("overlay"):
        assert "tinted with the memory map" in text
        assert not np.array_equal(images[-1], _obs()["images"][0])


def test_injection_rejects_mismatched_observation_and_accepts_episode_meta():
    snap = SkillMemory().snapshot()
    with pytest.raises(ValueError, match="placeholders"):
        snap.inject(episode_meta("toy", "L"), {"text": "<image><image>", "images": (frame((0, 0)),)}, 0)
    ep = episode(FAIL, "failure")
    text, images = snap.inject(ep, _obs(), 0)  # the Episode itself as meta (agent = its last cell)
    assert text.count("<image>") == len(images) == 2
    assert tuple(images[0][74, 74]) == (255, 255, 255)  # agent outline at (1,1)


def test_placeholder_matches_the_env_contract():
    from atlasva.envs import IMAGE_PLACEHOLDER
    from atlasva.memory.memory import IMAGE_PLACEHOLDER as MEM_PLACEHOLDER

    assert MEM_PLACEHOLDER == IMAGE_PLACEHOLDER
