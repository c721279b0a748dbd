"""Potential-based shaping: telescoping, cycles, truncation, scale, and policy invariance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_helpers import episode, heuristics_3x3

from atlasva.memory import MemoryConfig, SkillMemory, episode_meta
from atlasva.memory.shaping import default_lambda, turn_shaping

H = heuristics_3x3()
META = episode_meta("toy", "L1", H)


def trained_memory(**cfg) -> SkillMemory:
    mem = SkillMemory(MemoryConfig(**cfg))
    mem.update([
        episode([(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)], "success"),
        episode([(0, 0), (0, 1), (1, 1)], "failure"),
        episode([(0, 0), (0, 1), (0, 2), (0, 1)], "truncated"),
    ])
    return mem


def episode_shaping(snap, cells, terminated, gamma, per_turn=1):
    total, i = 0.0, 0
    while i < len(cells) - 1:
        seg = cells[i : i + per_turn + 1]
        last = i + per_turn >= len(cells) - 1
        total += snap.shaping(META, [list(c) for c in seg], terminated and last, gamma)
        i += per_turn
    return total


def test_default_lambda_bounds_potential_at_a_tenth_of_success_reward():
    assert default_lambda(1.0, 1.0, 1.0) == pytest.approx(0.1)
    assert default_lambda(2.0, 0.5, 2.0) == pytest.approx(0.1)  # 0.1 * 2 / 2
    fresh = SkillMemory().snapshot()  # heuristics only
    # hole: D = 1 (heuristic), A = 0 (unreachable, no evidence) -> Φ = 0.1·(0 − 1)
    assert fresh.potential(META, [1, 1]) == pytest.approx(-0.1)
    # goal: D = 0, A = h_A = 1 -> Φ = +0.1; start (0,0): distance 4 of 4 -> A = 0, Φ = 0
    assert fresh.potential(META, [2, 2]) == pytest.approx(0.1)
    assert fresh.potential(META, [0, 0]) == pytest.approx(0.0)
    assert fresh.potential(META, [1, 0]) == pytest.approx(0.1 * (1 - 3 / 4))
    phi = trained_memory().snapshot().view(META)[3]
    assert np.abs(phi).max() <= 0.1 + 1e-12


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from(list(itertools.product(range(3), range(3)))), min_size=2, max_size=12),
    st.booleans(),
    st.floats(0.1, 5.0),
    st.floats(0.1, 5.0),
)
def test_episode_shaping_stays_within_a_fifth_of_success_reward(path, terminated, wa, wd):
    snap = trained_memory(w_affinity=wa, w_danger=wd, success_reward=1.0).snapshot()
    assert abs(episode_shaping(snap, path, terminated, 1.0)) <= 0.2 + 1e-9


def test_terminated_episode_sums_to_minus_phi_start():
    snap = trained_memory().snapshot()
    cells = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]
    phi0 = snap.potential(META, [0, 0])
    assert phi0 != 0.0
    for per_turn in (1, 2, 3):
        assert episode_shaping(snap, cells, True, 1.0, per_turn) == pytest.approx(-phi0, abs=1e-12)


def test_truncated_episode_keeps_final_potential():
    snap = trained_memory().snapshot()
    cells = [(0, 0), (0, 1), (0, 2), (1, 2)]
    expected = snap.potential(META, [1, 2]) - snap.potential(META, [0, 0])
    assert expected != 0.0
    assert episode_shaping(snap, cells, False, 1.0) == pytest.approx(expected, abs=1e-12)


def test_cycle_sums_to_zero_and_multi_action_turn_is_one_term():
    snap = trained_memory().snapshot()
    cycle = [(0, 0), (0, 1), (0, 2), (1, 2), (0, 2), (0, 1), (0, 0)]
    assert episode_shaping(snap, cycle, False, 1.0) == pytest.approx(0.0, abs=1e-12)
    # one turn of three primitive moves = γΦ(end) − Φ(start), whatever happens in between
    g = 0.9
    f = snap.shaping(META, [[0, 0], [0, 1], [1, 1], [0, 1]], False, g)
    assert f == pytest.approx(g * snap.potential(META, [0, 1]) - snap.potential(META, [0, 0]))
    # termination zeroes the end potential
    assert snap.shaping(META, [[0, 1], [1, 1]], True, g) == pytest.approx(-snap.potential(META, [0, 1]))


def test_shaping_errors_and_switches():
    snap = trained_memory().snapshot()
    with pytest.raises(ValueError, match="outside the level grid"):
        snap.shaping(META, [[0, 0], [3, 0]], False, 1.0)
    with pytest.raises(ValueError, match="gamma_turn"):
        snap.shaping(META, [[0, 0]], False, 1.5)
    with pytest.raises(ValueError, match="level_hash"):
        snap.shaping({"env": "toy"}, [[0, 0]], False, 1.0)
    assert snap.shaping(META, [], False, 1.0) == 0.0
    off = trained_memory(shaping=False).snapshot()
    assert off.shaping(META, [[0, 0], [1, 0]], False, 1.0) == 0.0
    unknown = episode_meta("toy", "never-seen")  # no heuristics, no instance: nothing known
    assert snap.shaping(unknown, [[0, 0], [1, 0]], False, 1.0) == 0.0
    assert turn_shaping(np.array([[0.5]]), [[0, 0]], False, 0.5) == pytest.approx(-0.25)


def _values(snap, gamma, shaped):
    """Value iteration on the 3×3 lake (hole (1,1) and goal (2,2) absorbing) with optional shaping."""
    moves = [(0, -1), (1, 0), (0, 1), (-1, 0)]
    states = [(r, c) for r in range(3) for c in range(3) if (r, c) not in ((1, 1), (2, 2))]
    v = {s: 0.0 for s in states}

    def q(s, m):
        nr, nc = min(max(s[0] + m[0], 0), 2), min(max(s[1] + m[1], 0), 2)
        term = (nr, nc) in ((1, 1), (2, 2))
        r = 1.0 if (nr, nc) == (2, 2) else 0.0
        if shaped:
            r += snap.shaping(META, [list(s), [nr, nc]], term, gamma)
        return r + (0.0 if term else gamma * v[(nr, nc)])

    for _ in range(200):
        v = {s: max(q(s, m) for m in moves) for s in states}
    return {s: [q(s, m) for m in moves] for s in states}


def test_frozen_snapshot_leaves_the_optimal_policy_unchanged():
    # an adversarial memory: the true shortest path is marked dangerous, a dead end attractive
    mem = SkillMemory(MemoryConfig(w_danger=3.0, w_affinity=2.0))
    for _ in range(3):
        mem.update([
            episode([(0, 0), (1, 0), (2, 0), (2, 1)], "failure", group_id="g"),
            episode([(0, 0), (0, 1), (0, 2)], "success", group_id="g"),
        ])
    snap = mem.snapshot()
    gamma = 0.9
    plain, shaped = _values(snap, gamma, False), _values(snap, gamma, True)
    changed = 0
    for s in plain:
        best_plain = {a for a, x in enumerate(plain[s]) if x >= max(plain[s]) - 1e-9}
        best_shaped = {a for a, x in enumerate(shaped[s]) if x >= max(shaped[s]) - 1e-9}
        assert best_plain == best_shaped, s
        # Q_shaped = Q − Φ(s) for every action (Ng et al.)
        np.testing.assert_allclose(np.array(shaped[s]), np.array(plain[s]) - snap.potential(META, list(s)), atol=1e-9)
        changed += abs(snap.potential(META, list(s))) > 1e-6
    assert changed >= 5  # the shaping is far from trivial
