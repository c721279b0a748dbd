"""Advantage estimators and masked statistics (pure tensor functions, DESIGN §3).

Conventions shared by every function here:

* Token tensors are ``[B, T]``: ``B`` samples (one episode per row in concatenated mode, one turn per
  row in non-concatenated mode), ``T`` response positions. Position ``t`` of a row is the token at
  that position; rewards, values and advantages at ``t`` refer to that token.
* ``mask`` / ``loss_mask`` / ``response_mask`` is 1 (or ``True``) on the tokens the policy generated
  and is trained on, 0 on environment-observation tokens (image tokens included) and on padding.
  Masks may be ``bool``, integer or float 0/1 tensors.
* ``turn_end_mask`` is 1 on the last policy token of each turn (the end-of-turn token) and must lie
  inside the loss mask.
* Estimators run under ``torch.no_grad`` on detached float copies (bf16/fp16 inputs are computed in
  fp32, fp64 stays fp64) and return tensors that are **exactly 0 on mask-0 positions** (advantages and
  returns alike). Whatever a mask-0 position holds (NaN padding included) never reaches a result.
* Estimators return *raw* advantages; whiten them with :func:`masked_whiten` if wanted (verl and VAGEN
  whiten GAE advantages over the loss mask; GRPO advantages are already normalised per group).
* Bad input raises ``ValueError`` with the argument's name: wrong shapes, a non-finite reward or value
  on a mask-1 position, a non-zero reward on a mask-0 position (it would be silently dropped), a turn
  end outside the loss mask. A trainer that prefers to skip such a batch calls
  :func:`atlasva.rl.all_finite` first, or catches the ``ValueError``.

Ids (``group_ids``, ``traj_ids``, ``turn_ids``) are any 1-D sequence of hashables: a list, a numpy
array or a 1-D tensor; equal ids mean the same group / trajectory / turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

__all__ = [
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "turn_ends_from_mask",
    "turn_rewards_to_tokens",
    "gae",
    "bi_level_gae",
    "turn_level_gae",
    "TurnGAEResult",
    "grpo_advantages",
    "turn_grpo_advantages",
]


# ----------------------------------------------------------------------------------------------------
# small helpers (private; shared with losses.py and filters.py)


def _float(x: torch.Tensor) -> torch.Tensor:
    """A detached floating copy: fp64 stays fp64, everything else becomes fp32."""
    x = torch.as_tensor(x).detach()
    return x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def _bool_mask(mask: torch.Tensor, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    mask = torch.as_tensor(mask, device=like.device)
    if mask.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(like.shape)}")
    return mask != 0


def _check_2d(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be [B, T], got shape {tuple(x.shape)}")


def _check_same_shape(ref: torch.Tensor, ref_name: str, **others: torch.Tensor) -> None:
    for name, x in others.items():
        if x.shape != ref.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(ref.shape)} like {ref_name}")


def _check_finite_on(x: torch.Tensor, where: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(x) & where
    if bool(bad.any()):
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite value(s) (NaN/inf) on mask-1 positions")


def _check_no_reward_off_mask(rewards: torch.Tensor, mask: torch.Tensor, name: str = "rewards") -> None:
    off = (~mask) & (rewards != 0) & ~torch.isnan(rewards)  # NaN padding is ignored, inf is not
    if bool(off.any()):
        raise ValueError(
            f"{name} has {int(off.sum())} non-zero value(s) on mask-0 positions; place rewards on "
            "policy tokens (e.g. the turn's end token), they would be dropped otherwise"
        )


def _ids_to_list(ids: Any, n: int, name: str) -> list:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(ids.shape)}")
        out = ids.tolist()
    elif hasattr(ids, "tolist") and hasattr(ids, "ndim"):  # numpy array
        if ids.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(ids.shape)}")
        out = ids.tolist()
    else:
        out = list(ids)
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries, expected {n} (one per row)")
    return out


def _group_index(ids: Sequence[Any] | torch.Tensor, n: int, name: str = "group_ids",
                 device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """Map ids to ``0..G-1`` in order of first appearance. Returns (index ``[n]`` long, G)."""
    lookup: dict[Any, int] = {}
    idx = [lookup.setdefault(key, len(lookup)) for key in _ids_to_list(ids, n, name)]
    return torch.tensor(idx, dtype=torch.long, device=device), len(lookup)


def _group_mean_std(x: torch.Tensor, idx: torch.Tensor, n_groups: int,
                    valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group mean, unbiased std (0 for groups of one) and count of the 1-D ``x``.

    ``valid`` (bool, like ``x``) leaves entries out of the statistics. Returns three ``[n_groups]``
    tensors.
    """
    w = torch.ones_like(x) if valid is None else valid.to(x.dtype)
    xs = torch.where(w > 0, x, torch.zeros_like(x))
    cnt = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, idx, w)
    tot = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, idx, xs)
    mean = tot / cnt.clamp(min=1)
    dev2 = (xs - mean[idx]) ** 2 * w
    ss = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, idx, dev2)
    var = ss / (cnt - 1).clamp(min=1)
    return mean, var.sqrt(), cnt


# ----------------------------------------------------------------------------------------------------
# masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1.

    ``x`` and ``mask`` have the same shape (any). ``dim=None`` reduces everything to a scalar,
    otherwise only ``dim``. Where the mask selects nothing the mean is 0 (not NaN). Values at mask-0
    positions never matter (NaN there is fine). Differentiable in ``x``.
    """
    m = _bool_mask(mask, x)
    xm = torch.where(m, x, torch.zeros_like(x))
    mf = m.to(xm.dtype)
    if dim is None:
        return xm.sum() / mf.sum().clamp(min=1)
    return xm.sum(dim=dim) / mf.sum(dim=dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all mask-1 positions (a scalar), as verl computes it.

    ``unbiased=True`` applies Bessel's correction n/(n−1); with fewer than two selected positions the
    variance is 0. Shapes as in :func:`masked_mean`.
    """
    m = _bool_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum()
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), torch.zeros_like(var))
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Whiten ``x`` with the mean and (unbiased) variance of its mask-1 positions.

    ``(x − mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back (scale only).
    Any shape; statistics are over all mask-1 entries of the whole tensor (the batch), as verl does.
    Mask-0 positions of the result are 0. With fewer than two mask-1 entries the variance is 0, so
    the result is ``(x − mean)/sqrt(eps)`` = 0 for a single entry.
    """
    m = _bool_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros_like(out))


# ----------------------------------------------------------------------------------------------------
# turn layout helpers


def turn_ends_from_mask(loss_mask: torch.Tensor) -> torch.Tensor:
    """The last token of every contiguous run of mask-1 tokens, as a bool ``[B, T]`` mask.

    In concatenated mode each assistant turn is one run of policy tokens between observation spans,
    so this recovers the turn ends when they were not recorded. (Two turns with no observation
    tokens between them are one run: record turn ends explicitly in that case.)
    """
    m = torch.as_tensor(loss_mask) != 0
    _check_2d(m, "loss_mask")
    nxt = torch.zeros_like(m)
    nxt[:, :-1] = m[:, 1:]
    return m & ~nxt


def turn_rewards_to_tokens(turn_rewards: torch.Tensor, turn_ends: torch.Tensor,
                           seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Place per-turn rewards on their turn-end tokens.

    ``turn_rewards``: ``[B, K]`` float, reward of turn ``k`` of row ``b``.
    ``turn_ends``: ``[B, K]`` long, the position of turn ``k``'s end token in ``[0, seq_len)``, or −1
    for a padded (absent) turn.
    Returns ``(token_rewards [B, seq_len], turn_end_mask [B, seq_len] bool)``.
    """
    r = _float(turn_rewards)
    ends = torch.as_tensor(turn_ends, device=r.device).long()
    _check_2d(r, "turn_rewards")
    _check_same_shape(r, "turn_rewards", turn_ends=ends)
    present = ends >= 0
    if bool((ends >= seq_len).any()):
        raise ValueError(f"turn_ends has positions >= seq_len={seq_len}")
    rows = torch.arange(r.shape[0], device=r.device).unsqueeze(1).expand_as(ends)
    token_rewards = torch.zeros(r.shape[0], seq_len, dtype=r.dtype, device=r.device)
    end_mask = torch.zeros(r.shape[0], seq_len, dtype=torch.bool, device=r.device)
    token_rewards.index_put_((rows[present], ends[present]), r[present], accumulate=True)
    end_mask[rows[present], ends[present]] = True
    return token_rewards, end_mask


# ----------------------------------------------------------------------------------------------------
# token GAE (verl / VAGEN "masked GAE")


@torch.no_grad()
def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level GAE that skips mask-0 tokens (verl's ``compute_gae_advantage_return``).

    Args:
        token_rewards: ``[B, T]`` reward at each token (e.g. each turn's reward on its end token, or
            the episode total on the last policy token). Must be 0 on mask-0 positions.
        values: ``[B, T]`` critic value ``V_t`` of each token.
        mask: ``[B, T]`` 1 on policy tokens. Mask-0 tokens (observations, padding) are not steps of
            the recursion: going backwards, ``next_value`` and ``last_gae`` carry over them unchanged
            (``next = V_t·m_t + (1−m_t)·next``, likewise ``last_gae``), so a policy token bootstraps
            from the next *policy* token's value across an observation span.
        gamma, lam: discount and GAE λ per policy token.

    Returns:
        ``(advantages, returns)``, both ``[B, T]``, 0 on mask-0 positions; ``returns = A + V`` on
        mask-1 positions. The result equals plain GAE on each row's compressed (mask-1-only) sequence.
    """
    r, v = _float(token_rewards), _float(values)
    _check_2d(r, "token_rewards")
    _check_same_shape(r, "token_rewards", values=v)
    m = _bool_mask(mask, r)
    _check_finite_on(r, m, "token_rewards")
    _check_finite_on(v, m, "values")
    _check_no_reward_off_mask(r, m)
    zero = torch.zeros_like(r)
    r, v = torch.where(m, r, zero), torch.where(m, v, zero)

    B, T = r.shape
    adv = torch.zeros_like(r)
    next_value = torch.zeros(B, dtype=r.dtype, device=r.device)
    last_gae = torch.zeros_like(next_value)
    for t in range(T - 1, -1, -1):
        delta = r[:, t] + gamma * next_value - v[:, t]
        a = delta + gamma * lam * last_gae
        mt = m[:, t]
        adv[:, t] = torch.where(mt, a, 0.0)
        next_value = torch.where(mt, v[:, t], next_value)
        last_gae = torch.where(mt, a, last_gae)
    returns = torch.where(m, adv + v, zero)
    return adv, returns


# ----------------------------------------------------------------------------------------------------
# bi-level GAE (VAGEN-Full)


@torch.no_grad()
def bi_level_gae(token_rewards: torch.Tensor, values: torch.Tensor, loss_mask: torch.Tensor,
                 turn_end_mask: torch.Tensor, gamma_turn: float = 1.0, gamma_token: float = 1.0,
                 lam: float = 1.0, lam_turn: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bi-level GAE: turn-level GAE over turn ends, then token-level GAE inside each turn.

    Args:
        token_rewards: ``[B, T]``. The reward at a turn-end position is that turn's reward (use
            :func:`turn_rewards_to_tokens` to build it from ``[B, K]`` per-turn rewards). Rewards on
            other policy tokens (e.g. a per-token KL penalty) enter only the token-level recursion of
            their turn. Must be 0 on mask-0 positions.
        values: ``[B, T]`` critic values.
        loss_mask: ``[B, T]`` 1 on policy tokens; mask-0 tokens are skipped as in :func:`gae`.
        turn_end_mask: ``[B, T]`` 1 on each turn's last policy token ``e_1 < … < e_K``; must be inside
            ``loss_mask`` (:func:`turn_ends_from_mask` derives it from the loss mask).
        gamma_turn: discount between turns (γ_turn, VAGEN's ``high_level_gamma``).
        gamma_token: discount between tokens inside a turn (γ_token, VAGEN's ``gamma``).
        lam: GAE λ of the token level; ``lam_turn`` that of the turn level (default: ``lam``).

    The recursion, per row (VAGEN legacy ``compute_bi_level_gae_advantage_return``):

    1. turn level, ``k = K … 1`` with ``V[e_{K+1}] = 0``, ``A[e_{K+1}] = 0``::

           δ_k = r[e_k] + γ_turn·V[e_{k+1}] − V[e_k]
           A[e_k] = δ_k + γ_turn·λ_turn·A[e_{k+1}];   R[e_k] = A[e_k] + V[e_k]

    2. token level, backwards over policy tokens; a turn-end token starts afresh from its turn
       return, other tokens bootstrap from the next policy token (which is in the same turn)::

           at t = e_k:   δ_t = R[e_k] − V[t];                     A[t] = δ_t
           otherwise:    δ_t = r[t] + γ_token·V[t⁺] − V[t];       A[t] = δ_t + γ_token·λ·A[t⁺]

       (``t⁺`` the next policy token). Policy tokens after the last turn end (a turn cut off without
       its end token) form a turn of their own bootstrapping from 0.

    With γ_turn = γ_token = λ = 1 and rewards only on turn ends every policy token's return is its
    Monte-Carlo return (the sum of the rewards of its own and all later turns).

    Returns:
        ``(advantages, returns)``, ``[B, T]``, 0 on mask-0 positions; at a turn end the return is
        the turn-level return ``R[e_k]``.
    """
    r, v = _float(token_rewards), _float(values)
    _check_2d(r, "token_rewards")
    _check_same_shape(r, "token_rewards", values=v)
    m = _bool_mask(loss_mask, r, "loss_mask")
    e = _bool_mask(turn_end_mask, r, "turn_end_mask")
    if bool((e & ~m).any()):
        raise ValueError(f"turn_end_mask has {int((e & ~m).sum())} turn end(s) outside loss_mask")
    _check_finite_on(r, m, "token_rewards")
    _check_finite_on(v, m, "values")
    _check_no_reward_off_mask(r, m)
    zero = torch.zeros_like(r)
    r, v = torch.where(m, r, zero), torch.where(m, v, zero)
    lam_turn = lam if lam_turn is None else lam_turn

    B, T = r.shape
    # 1) turn level over the turn-end positions
    turn_adv = torch.zeros_like(r)
    next_value = torch.zeros(B, dtype=r.dtype, device=r.device)
    last_gae = torch.zeros_like(next_value)
    for t in range(T - 1, -1, -1):
        et = e[:, t]
        a = r[:, t] + gamma_turn * next_value - v[:, t] + gamma_turn * lam_turn * last_gae
        turn_adv[:, t] = torch.where(et, a, 0.0)
        next_value = torch.where(et, v[:, t], next_value)
        last_gae = torch.where(et, a, last_gae)
    pseudo_r = torch.where(e, turn_adv + v, r)  # the turn end's reward becomes its turn return

    # 2) token level inside each turn
    adv = torch.zeros_like(r)
    next_value.zero_()
    last_gae.zero_()
    for t in range(T - 1, -1, -1):
        mt, et = m[:, t], e[:, t]
        nv = torch.where(et, 0.0, next_value)
        lg = torch.where(et, 0.0, last_gae)
        a = pseudo_r[:, t] + gamma_token * nv - v[:, t] + gamma_token * lam * lg
        adv[:, t] = torch.where(mt, a, 0.0)
        next_value = torch.where(mt, v[:, t], next_value)
        last_gae = torch.where(mt, a, last_gae)
    returns = torch.where(m, adv + v, zero)
    return adv, returns


# ----------------------------------------------------------------------------------------------------
# turn-level GAE for non-concatenated samples (one sample per turn)


class TurnGAEResult(NamedTuple):
    """Result of :func:`turn_level_gae`; every tensor is ``[N, T]`` except ``unique`` (``[N]``)."""

    advantages: torch.Tensor  # A_k on every response token of the row, 0 elsewhere
    returns: torch.Tensor  # A_k + v_k at the anchor token only, 0 elsewhere
    value_mask: torch.Tensor  # bool, True at each row's anchor token: train the critic there only
    unique: torch.Tensor  # bool [N], True for the first row of each (group, traj, turn) key


@torch.no_grad()
def turn_level_gae(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor,
                   group_ids: Any, traj_ids: Any, turn_ids: Any, gamma: float = 1.0, lam: float = 1.0,
                   anchor: str = "first", whiten: bool = False, eps: float = 1e-8) -> TurnGAEResult:
    """Turn-level GAE over non-concatenated samples (VAGEN-Lite ``no_concat_gae``).

    Each row is one turn of one trajectory: ``sys + current observation → response``.

    Args:
        rewards: the turn's reward, either ``[N]`` or ``[N, T]`` token rewards that are summed over
            the row's response tokens (must be 0 off the mask).
        values: ``[N, T]`` critic values; the turn's value ``v_k`` is read at the anchor token.
        response_mask: ``[N, T]`` 1 on the row's response tokens. Every row needs at least one.
        group_ids, traj_ids, turn_ids: ``[N]`` ids. A trajectory is the key ``(group, traj)``, its
            turns are ordered by ``turn_ids`` (any sortable values; consecutive in order, gaps are
            fine). Rows sharing ``(group, traj, turn)`` are duplicates (padding to a multiple of the
            data-parallel size): only the first such row enters the recursion and the statistics, and
            every copy receives its results.
        gamma, lam: turn-level discount and GAE λ.
        anchor: ``"first"`` or ``"last"`` response token of the row holds ``v_k`` and the return.
        whiten: whiten the advantages with the mean/std over the response tokens of unique rows
            (VAGEN does this); duplicates get the same whitened values.

    Per trajectory, turns ``k = 1..K`` in order, ``v_{K+1} = 0`` (the final turn bootstraps from 0)::

        δ_k = r_k + γ·v_{k+1} − v_k;    A_k = δ_k + γ·λ·A_{k+1}

    Returns a :class:`TurnGAEResult`: ``A_k`` broadcast to the row's response tokens, ``A_k + v_k``
    at the anchor only (0 elsewhere, not a −100 sentinel) with ``value_mask`` marking the anchors of
    all rows, and ``unique`` so the trainer can leave duplicate rows out of its losses.
    """
    if anchor not in ("first", "last"):
        raise ValueError(f"anchor must be 'first' or 'last', got {anchor!r}")
    v = _float(values)
    _check_2d(v, "values")
    N, T = v.shape
    m = _bool_mask(response_mask, v, "response_mask")
    r = _float(rewards).to(v.device)
    if r.dim() == 2:
        _check_same_shape(v, "values", rewards=r)
        _check_finite_on(r, m, "rewards")
        _check_no_reward_off_mask(r, m)
        r = torch.where(m, r, torch.zeros_like(r)).sum(dim=1)
    elif r.shape != (N,):
        raise ValueError(f"rewards must be [N] or [N, T], got {tuple(r.shape)} with N={N}, T={T}")
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards holds non-finite values (NaN/inf)")
    counts = m.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError(f"response_mask has {int((counts == 0).sum())} row(s) without response tokens")
    _check_finite_on(v, m, "values")

    pos = torch.arange(T, device=v.device).expand(N, T)
    if anchor == "first":
        anchor_pos = torch.where(m, pos, T).min(dim=1).values
    else:
        anchor_pos = torch.where(m, pos, -1).max(dim=1).values
    rows = torch.arange(N, device=v.device)
    v_anchor = v[rows, anchor_pos]

    groups = _ids_to_list(group_ids, N, "group_ids")
    trajs = _ids_to_list(traj_ids, N, "traj_ids")
    turns = _ids_to_list(turn_ids, N, "turn_ids")
    first_row: dict[tuple, int] = {}
    source = [first_row.setdefault((g, tr, k), i) for i, (g, tr, k) in enumerate(zip(groups, trajs, turns))]
    unique = torch.tensor([s == i for i, s in enumerate(source)], dtype=torch.bool, device=v.device)

    by_traj: dict[tuple, list[tuple[Any, int]]] = {}
    for (g, tr, k), i in first_row.items():
        by_traj.setdefault((g, tr), []).append((k, i))
    r_list, v_list = r.tolist(), v_anchor.tolist()
    adv_row = [0.0] * N
    for turns_of_traj in by_traj.values():
        turns_of_traj.sort(key=lambda kv: kv[0])
        next_v = last = 0.0
        for _, i in reversed(turns_of_traj):
            last = r_list[i] + gamma * next_v - v_list[i] + gamma * lam * last
            adv_row[i] = last
            next_v = v_list[i]
    src = torch.tensor(source, dtype=torch.long, device=v.device)
    a = torch.tensor(adv_row, dtype=v.dtype, device=v.device)[src]
    ret = a + v_anchor[src]

    if whiten:
        w = counts.to(v.dtype) * unique.to(v.dtype)  # token weight of each row's (constant) advantage
        n = w.sum()
        mean = (a * w).sum() / n
        var = torch.where(n > 1, ((a - mean) ** 2 * w).sum() / (n - 1).clamp(min=1), torch.zeros_like(n))
        a = (a - mean) * torch.rsqrt(var + eps)

    advantages = torch.where(m, a.unsqueeze(1).expand(N, T), torch.zeros_like(v))
    value_mask = torch.zeros(N, T, dtype=torch.bool, device=v.device)
    value_mask[rows, anchor_pos] = True
    returns = torch.where(value_mask, ret.unsqueeze(1).expand(N, T), torch.zeros_like(v))
    return TurnGAEResult(advantages, returns, value_mask, unique)


# ----------------------------------------------------------------------------------------------------
# GRPO


@torch.no_grad()
def grpo_advantages(scores: torch.Tensor, response_mask: torch.Tensor, group_ids: Any,
                    norm_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Trajectory (outcome) GRPO advantages, broadcast over the response mask.

    Args:
        scores: ``[B]`` trajectory returns, or ``[B, T]`` token rewards summed over the mask.
        response_mask: ``[B, T]`` 1 on policy tokens.
        group_ids: ``[B]`` ids; rows with the same id (same level seed, ``n`` samples) form a group.
        norm_by_std: divide by the group's std (verl ``norm_adv_by_std_in_grpo``); otherwise only
            subtract the group mean (Dr. GRPO).

    ``A_b = (R_b − mean_g) / (std_g + eps)`` with the unbiased std of the group (``torch.std``).
    A group of one sample has no baseline and gets advantage 0 (verl instead passes the raw score
    through); a group whose rewards are identical gets 0 too.

    Returns ``[B, T]`` advantages, 0 on mask-0 positions.
    """
    mask = torch.as_tensor(response_mask)
    _check_2d(mask, "response_mask")
    B, T = mask.shape
    s = _float(scores).to(mask.device)
    m = mask != 0
    if s.dim() == 2:
        _check_same_shape(mask, "response_mask", scores=s)
        _check_finite_on(s, m, "scores")
        s = torch.where(m, s, torch.zeros_like(s)).sum(dim=1)
    elif s.shape != (B,):
        raise ValueError(f"scores must be [B] or [B, T], got {tuple(s.shape)} with B={B}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores holds non-finite values (NaN/inf)")
    idx, G = _group_index(group_ids, B, device=s.device)
    mean, std, cnt = _group_mean_std(s, idx, G)
    a = s - mean[idx]
    if norm_by_std:
        den = std[idx] + eps
        a = torch.where(den > 0, a / torch.where(den > 0, den, 1.0), torch.zeros_like(a))
    a = torch.where(cnt[idx] > 1, a, torch.zeros_like(a))
    return torch.where(m, a.unsqueeze(1).expand(B, T), torch.zeros(B, T, dtype=s.dtype, device=s.device))


@torch.no_grad()
def turn_grpo_advantages(token_rewards: torch.Tensor, response_mask: torch.Tensor,
                         turn_end_mask: torch.Tensor, group_ids: Any, gamma: float = 1.0,
                         norm_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Turn-level GRPO: per-turn returns-to-go normalised within the group at each turn index.

    Args:
        token_rewards: ``[B, T]`` rewards; turn ``k``'s reward ``r_{b,k}`` is the sum of the rewards
            on its policy tokens (usually one value on its end token). 0 on mask-0 positions.
        response_mask: ``[B, T]`` 1 on policy tokens.
        turn_end_mask: ``[B, T]`` 1 on each turn's last policy token; turn ``k`` of a row is its
            policy tokens after turn end ``k−1`` up to and including turn end ``k``. Policy tokens after
            the row's last turn end belong to no finished turn and get advantage 0.
        group_ids: ``[B]``; a group is the ``n`` episodes started from the same level seed.
        gamma: turn-level discount of the returns-to-go.
        norm_by_std: divide by the std as in :func:`grpo_advantages`.

    Definition. For row ``b`` with ``K_b`` turns, the return-to-go of turn ``k`` (0-based) is
    ``G_{b,k} = Σ_{j ≥ k} γ^{j−k} r_{b,j}``. At each turn index ``k``, the rows of a group that have a
    turn ``k`` are compared with each other::

        Â_{b,k} = (G_{b,k} − mean_{b' ∈ g, K_b' > k} G_{b',k}) / (std(…) + eps)

    (unbiased std; an index where only one row of the group is still running gets 0). ``Â_{b,k}``
    is broadcast to every policy token of turn ``k``. At ``k = 0`` this is trajectory GRPO on the
    discounted returns; at later turns the baseline is the group's other episodes at the same turn
    index, so shaping and per-turn rewards move credit between turns.

    Returns ``[B, T]`` advantages, 0 on mask-0 positions.
    """
    r = _float(token_rewards)
    _check_2d(r, "token_rewards")
    B, T = r.shape
    m = _bool_mask(response_mask, r, "response_mask")
    e = _bool_mask(turn_end_mask, r, "turn_end_mask")
    if bool((e & ~m).any()):
        raise ValueError(f"turn_end_mask has {int((e & ~m).sum())} turn end(s) outside response_mask")
    _check_finite_on(r, m, "token_rewards")
    _check_no_reward_off_mask(r, m)
    r = torch.where(m, r, torch.zeros_like(r))

    n_turns = e.sum(dim=1)  # K_b
    K = int(n_turns.max()) if B else 0
    if K == 0:
        return torch.zeros_like(r)
    turn_of = torch.cumsum(e.long(), dim=1) - e.long()  # index of the turn each token belongs to
    in_turn = m & (turn_of < n_turns.unsqueeze(1))
    tk = turn_of.clamp(max=K - 1)
    per_turn = torch.zeros(B, K, dtype=r.dtype, device=r.device)
    per_turn.scatter_add_(1, tk, torch.where(in_turn, r, torch.zeros_like(r)))
    has_turn = torch.arange(K, device=r.device).unsqueeze(0) < n_turns.unsqueeze(1)  # [B, K]

    rtg = torch.zeros_like(per_turn)
    acc = torch.zeros(B, dtype=r.dtype, device=r.device)
    for k in range(K - 1, -1, -1):
        acc = per_turn[:, k] + gamma * acc
        rtg[:, k] = acc

    gidx, G = _group_index(group_ids, B, device=r.device)
    cell = (gidx.unsqueeze(1) * K + torch.arange(K, device=r.device).unsqueeze(0)).reshape(-1)
    flat_rtg, flat_has = rtg.reshape(-1), has_turn.reshape(-1)
    mean, std, cnt = _group_mean_std(flat_rtg, cell, G * K, valid=flat_has)
    a = flat_rtg - mean[cell]
    if norm_by_std:
        den = std[cell] + eps
        a = torch.where(den > 0, a / torch.where(den > 0, den, 1.0), torch.zeros_like(a))
    a = torch.where(flat_has & (cnt[cell] > 1), a, torch.zeros_like(a)).reshape(B, K)
    out = torch.gather(a, 1, tk)
    return torch.where(in_turn, out, torch.zeros_like(out))
