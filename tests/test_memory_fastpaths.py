"""The memory's batched and cached fast paths agree exactly with the plain per-episode definitions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from memory_helpers import episode, frame, heuristics_3x3

from atlasva.memory import SkillMemory
from atlasva.memory.atlas import (
    LevelGeometry,
    _group_advantages,
    batch_episode_cells,
    episode_cells,
)
from atlasva.memory.exemplars import ExemplarBank, dhash, feature, fingerprint, make_exemplar, thumbnail
from atlasva.memory.skills import SkillMiner, pattern_moves

SUCCESS = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]
FAIL = [(0, 0), (0, 1), (1, 1)]
BUMPY = [(0, 0), (0, 0), (0, 1), (0, 1), (1, 1)]  # two moves that change nothing


def _batch():
    eps = [
        episode(SUCCESS, "success", group_id="g0"),
        episode(FAIL, "failure", group_id="g0"),
        episode(BUMPY, "failure", per_turn=2, group_id="g0"),
        episode(SUCCESS[:3], "truncated", group_id="g1", level="L2", heuristics=heuristics_3x3(hole=(0, 2))),
        episode([(2, 2)], "truncated", group_id="g1"),  # no move at all
        episode(FAIL[:2], "failure", group_id="g1"),  # a failure one move long (trace beyond the start)
    ]
    no_start = episode(SUCCESS, "success", group_id="g2")
    no_start.start_cell = []
    invalid = episode(BUMPY, "truncated", group_id="g2")
    invalid.turns[1].metrics["action_valid"] = False
    odd = episode(SUCCESS, "success", group_id="g2", per_turn=3)
    odd.turns[0].actions = odd.turns[0].actions + ["Left"]  # more actions than moves
    odd.turns[-1].actions = ["wait"] + odd.turns[-1].actions[1:]  # not a grid move
    empty = episode([(0, 0)], "truncated", group_id="g2")
    empty.turns = []
    return eps + [no_start, invalid, odd, empty]


@pytest.mark.parametrize("trace", [0.0, 0.5, 1.0, 0.3])
def test_batch_episode_cells_equal_per_episode(trace):
    eps = _batch()
    got = batch_episode_cells(eps, failure_trace=trace)
    for ep, b in zip(eps, got):
        ref = episode_cells(ep, failure_trace=trace)
        assert b.cells.dtype == ref.cells.dtype and np.array_equal(b.cells, ref.cells)
        assert b.failure_credit.dtype == ref.failure_credit.dtype
        assert np.array_equal(b.failure_credit, ref.failure_credit)
        assert b.success == ref.success


def test_batch_episode_cells_names_a_malformed_cell():
    eps = _batch()
    eps[1].turns[0].cells[1] = [0, 1, 2]
    with pytest.raises(ValueError, match="a cell is"):
        batch_episode_cells(eps, failure_trace=0.0)


def test_batch_skill_counts_equal_summed_per_episode_counts():
    eps = _batch()
    eps[3].env_name = "toy2"
    geoms: dict[str, LevelGeometry | None] = {}
    items = []
    for i, ep in enumerate(eps):
        g = geoms.setdefault(ep.level_hash, LevelGeometry.from_heuristics(ep.heuristics))
        items.append((ep, None if i == 2 else g))  # an episode without geometry is skipped
    want: dict[str, dict] = {}
    for ep, g in items:
        if g is None:
            continue
        for k, v in SkillMiner.counts(ep, g).items():
            acc = want.setdefault(ep.env_name, {}).setdefault(k, [0.0, 0.0, 0.0])
            for j in range(3):
                acc[j] += v[j]
    assert SkillMiner.batch_counts(items) == want
    # and the same as counting the moves one by one
    ev: dict[tuple[str, str], list[float]] = {}
    for ep, g in items:
        if g is not None and ep.env_name == "toy":
            for pattern, action, failed in pattern_moves(ep, g):
                acc = ev.setdefault((pattern, action), [0.0, 0.0, 0.0])
                acc[0] += 1
                acc[1] += failed
                acc[2] += ep.success
    assert want["toy"] == ev


def test_group_advantage_cache_equals_direct_arithmetic():
    for pattern in [(True, False, False, False), (True, True), (False, False, False), (), (True,) * 3 + (False,) * 6]:
        got = _group_advantages(pattern)
        again = _group_advantages(pattern)
        returns = np.array([1.0 if s else 0.0 for s in pattern])
        std = float(returns.std()) if len(returns) else 0.0
        if std > 1e-8:
            assert again is got and np.array_equal(got, (returns - returns.mean()) / (std + 1e-6))
        else:
            assert got is None


def test_add_frame_with_fingerprints_and_lazy_images_equals_add_make_exemplar():
    frames = [frame((r, c)) for r in range(3) for c in range(3)]
    rng = np.random.default_rng(0)
    seq = [(int(rng.integers(9)), ("Down", "Up")[int(rng.integers(2))], ("failure", "success")[int(rng.integers(2))])
           for _ in range(200)]
    for capacity, bits in ((3, 8), (32, 0), (4, 256)):
        fast = ExemplarBank(capacity, bits, 0.9)
        plain = ExemplarBank(capacity, bits, 0.9)
        for now, (k, action, kind) in enumerate(seq):
            img = frames[k].copy()  # a fresh array with the same content, as an env renders it
            fast.add_frame(kind, "toy", "L", [k // 3, k % 3], action, img, now, steps=k, size=16)
            plain.add(make_exemplar(kind, "toy", "L", [k // 3, k % 3], action, img, steps=k, now=now, size=16), now)
        assert [e.meta() for e in fast.items] == [e.meta() for e in plain.items]
        for a, b in zip(fast.items, plain.items):
            assert np.array_equal(a.image, b.image) and np.array_equal(a.hash, b.hash)
            assert np.array_equal(a.feature, b.feature)


def test_thumbnail_identity_fast_path_and_fingerprint_are_exact():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    t = thumbnail(img, 40)
    assert np.array_equal(t, img) and t is not img and t.flags.c_contiguous
    assert np.array_equal(thumbnail(img, 17), img[((np.arange(17) + 0.5) * 40 / 17).astype(int)][
        :, ((np.arange(17) + 0.5) * 40 / 17).astype(int)])
    big = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert fingerprint(big) == big[::7, ::7].tobytes() == fingerprint(np.asfortranarray(big))
    # hash and feature do not depend on the memory layout of the frame
    for f in (dhash, feature):
        assert np.array_equal(f(big), f(np.asfortranarray(big))) and np.array_equal(f(big[::-1]), f(big[::-1].copy()))


def test_memory_update_on_mixed_batches_is_deterministic_and_counts_every_move():
    """Two memories fed the same odd batches hold the same state, and the skill statistics count
    every grid move exactly once (as per-episode counting does)."""
    eps = _batch()
    a, b = SkillMemory(), SkillMemory()
    for i in range(0, len(eps), 3):
        a.update(eps[i : i + 3])
        b.update([replace(e) for e in eps[i : i + 3]])
    assert a.state_equal(b)
    geoms = {ep.level_hash: LevelGeometry.from_heuristics(ep.heuristics) for ep in eps}
    total = sum(sum(v[0] for v in SkillMiner.counts(ep, geoms[ep.level_hash]).values()) for ep in eps)
    assert sum(v[0] for v in a.miner.stats.values()) == total
