"""Potential-based shaping over state cells (DESIGN §3).

Φ(s) = λ·(w_A·A(c(s)) − w_D·D(c(s))) and, per turn, F = γ_turn·Φ(s_end) − Φ(s_start) with
Φ(s_end) := 0 when the turn *terminated* the episode (not when it was truncated). Several primitive
actions in one turn telescope to this single term, so over an episode at γ_turn = 1 the shaping sums
to Φ(s_T) − Φ(s_0) (−Φ(s_0) when it terminated): policy-invariant (Ng, Harada & Russell 1999), and
with a snapshot frozen for a batch the dynamic-potential argument (Devlin & Kudenko 2012) applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def default_lambda(success_reward: float, w_affinity: float, w_danger: float) -> float:
    """The largest λ with |Φ| ≤ 0.1 × success reward for any A, D ∈ [0, 1]."""
    w = max(abs(w_affinity), abs(w_danger))
    if w == 0:
        return 0.0
    return 0.1 * abs(success_reward) / w


def potential_grid(danger: np.ndarray, affinity: np.ndarray, lam: float, w_affinity: float, w_danger: float) -> np.ndarray:
    return (lam * (w_affinity * affinity.astype(np.float64) - w_danger * danger.astype(np.float64))).astype(np.float64)


def turn_shaping(phi: np.ndarray, cells: Sequence[Sequence[int]], terminated: bool, gamma_turn: float) -> float:
    """F for one turn from the potential grid ``phi`` and the turn's cells (first = before the turn)."""
    if not 0.0 <= gamma_turn <= 1.0:
        raise ValueError(f"gamma_turn must be in [0, 1], got {gamma_turn}")
    if not cells:
        return 0.0
    h, w = phi.shape
    for c in (cells[0], cells[-1]):
        if len(c) != 2 or not (0 <= int(c[0]) < h and 0 <= int(c[1]) < w):
            raise ValueError(f"cell {list(c)!r} is outside the level grid of shape {(h, w)}")
    start = float(phi[int(cells[0][0]), int(cells[0][1])])
    end = 0.0 if terminated else float(phi[int(cells[-1][0]), int(cells[-1][1])])
    return float(gamma_turn * end - start)
