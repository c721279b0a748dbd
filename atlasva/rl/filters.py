"""Batch filters (pure tensor functions, DESIGN §3).

:func:`reward_variance_filter` is the reward-variance top-p group filter of RAGEN's StarPO-S, as VAGEN
ports it: applied after the advantages are computed and before the critic and actor updates, it keeps
the groups whose rewards vary most (where the group-relative signal is informative) and drops the
ones whose episodes all scored alike (little or no learning signal, and the "echo trap" collapse
RAGEN observed is fed by them).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .advantages import _float, _group_index, _group_mean_std, _ids_to_list

__all__ = ["GroupFilterResult", "reward_variance_filter", "FILTER_METRICS", "FILTER_SCALES"]

FILTER_METRICS = ("std", "var")
FILTER_SCALES = ("sqrt", "linear", "none")


class GroupFilterResult(NamedTuple):
    """Result of :func:`reward_variance_filter`."""

    kept_indices: torch.Tensor  # long [K]: the rows to keep, ascending
    keep_mask: torch.Tensor  # bool [N]
    scale: float  # multiply the kept rows' advantages by this
    kept_groups: int
    n_groups: int
    group_spread: torch.Tensor  # [G] std (or var) of each group's scores, groups in first-appearance order


@torch.no_grad()
def reward_variance_filter(scores: torch.Tensor, group_ids: Any, top_p: float = 0.9, metric: str = "std",
                           scale_mode: str = "sqrt", traj_ids: Any = None) -> GroupFilterResult:
    """Keep the groups with the most reward spread until they hold a share ``top_p`` of the total.

    Args:
        scores: ``[N]`` one trajectory score (sum of rewards) per row.
        group_ids: ``[N]`` group of each row (the ``n`` episodes of one level seed).
        top_p: in ``(0, 1]``. Groups are sorted by spread, largest first (ties: first appearance), and
            the shortest prefix whose cumulative spread reaches ``top_p · total`` is kept. ``top_p = 1``
            disables the filter (every group is kept, zero-spread ones included).
        metric: ``"std"`` (RAGEN: in-group standard deviation) or ``"var"`` (VAGEN: variance); both
            unbiased, 0 for a group of one.
        scale_mode: the advantage rescaling returned in ``scale``, with ``k`` kept of ``G`` groups:

            * ``"sqrt"`` (default, VAGEN): ``sqrt(k / G)``;
            * ``"linear"``: ``k / G``;
            * ``"none"``: 1.

        traj_ids: optional ``[N]``; in non-concatenated mode (one row per turn) pass it so that each
            ``(group, traj)`` counts once in the statistics (its first row's score is used). All rows
            of a kept group are kept.

    Why ``sqrt``: the trainer averages its loss over the tokens it keeps, so after dropping groups
    each kept token weighs about ``G/k`` times more and the gradient keeps the size of a full batch's
    while it is estimated from ``k`` groups only — its noise grows by ``sqrt(G/k)``. Scaling the kept
    advantages by ``sqrt(k/G)`` brings the noise back to the full batch's level at the price of a
    proportionally smaller mean step; ``"linear"`` reproduces exactly a full batch in which the dropped
    groups had zero advantage (for equal-length samples), ``"none"`` treats the filtered batch as a
    full batch. We follow VAGEN (``sqrt``) by default.

    If every group has zero spread (e.g. PPO with one episode per group, or all rewards equal), the
    filter keeps everything with scale 1.

    Returns a :class:`GroupFilterResult`.
    """
    if metric not in FILTER_METRICS:
        raise ValueError(f"metric must be one of {FILTER_METRICS}, got {metric!r}")
    if scale_mode not in FILTER_SCALES:
        raise ValueError(f"scale_mode must be one of {FILTER_SCALES}, got {scale_mode!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    s = _float(scores)
    if s.dim() != 1:
        raise ValueError(f"scores must be [N], got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores holds non-finite values (NaN/inf)")
    N = s.shape[0]
    gidx, G = _group_index(group_ids, N, device=s.device)
    if N == 0:
        empty = torch.zeros(0, dtype=torch.long, device=s.device)
        return GroupFilterResult(empty, torch.zeros(0, dtype=torch.bool), 1.0, 0, 0, torch.zeros(0))

    counted = torch.ones(N, dtype=torch.bool, device=s.device)
    if traj_ids is not None:
        seen: set = set()
        groups = gidx.tolist()
        for i, tr in enumerate(_ids_to_list(traj_ids, N, "traj_ids")):
            key = (groups[i], tr)
            counted[i] = key not in seen
            seen.add(key)
    _, std, _ = _group_mean_std(s, gidx, G, valid=counted)
    spread = std if metric == "std" else std**2

    total = float(spread.sum())
    if top_p >= 1.0 or total <= 0.0:
        kept_g = torch.ones(G, dtype=torch.bool, device=s.device)
    else:
        order = sorted(range(G), key=lambda g: -float(spread[g]))  # stable: ties keep first appearance
        cum = torch.cumsum(spread[order], dim=0)
        target = top_p * total * (1.0 - 1e-9)
        n_keep = int((cum < target).sum()) + 1
        kept_g = torch.zeros(G, dtype=torch.bool, device=s.device)
        kept_g[torch.tensor(order[:n_keep], dtype=torch.long, device=s.device)] = True
    keep_mask = kept_g[gidx]
    k = int(kept_g.sum())
    if scale_mode == "sqrt":
        scale = math.sqrt(k / G)
    elif scale_mode == "linear":
        scale = k / G
    else:
        scale = 1.0
    kept = torch.nonzero(keep_mask).flatten()
    return GroupFilterResult(kept, keep_mask, scale, k, G, spread)
