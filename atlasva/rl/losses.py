"""PPO / GRPO losses over token masks (pure tensor functions, DESIGN §3).

All inputs are ``[B, T]`` token tensors (logits ``[B, T, V]``) with a ``mask`` that is 1 on the
tokens to train (the policy's own tokens) and 0 on observation tokens and padding. Mask-0 positions
contribute exactly nothing to a loss, its value or its gradient — even if they hold NaN or inf.

Aggregation (``loss_agg``), where ``ℓ_{b,t}`` is the per-token loss and ``m_{b,t}`` the mask:

* ``"token-mean"`` (default, verl's default): ``Σ_{b,t} m ℓ / Σ_{b,t} m`` — every trained token of the
  batch weighs the same, so long episodes weigh more than short ones.
* ``"seq-mean-token-mean"``: ``mean_b (Σ_t m ℓ / Σ_t m)`` — each sequence weighs the same whatever its
  length; rows with no mask-1 token are left out of the mean.

An empty mask gives a loss of 0 (not NaN). With gradient accumulation over micro-batches the
token-mean of each micro-batch is a mean over that micro-batch only; scale by its token share if
exact batch-level token weighting is wanted.

These functions don't validate finiteness (they sit on the gradient path; checking costs a device
sync). The trainer calls :func:`all_finite` on the loss (and, if wanted, on its inputs) and skips the
optimiser step when it is False.
"""

from __future__ import annotations

import torch

from .advantages import masked_mean

__all__ = [
    "LOSS_AGGS",
    "KL_KINDS",
    "all_finite",
    "aggregate_loss",
    "ppo_policy_loss",
    "value_loss",
    "kl_penalty",
    "kl_loss",
    "entropy_from_logits",
    "entropy_bonus",
]

LOSS_AGGS = ("token-mean", "seq-mean-token-mean")
KL_KINDS = ("k1", "k2", "k3")


def all_finite(*tensors: torch.Tensor | float | None) -> bool:
    """True when every element of every given tensor (or number) is finite; ``None`` is skipped.

    The trainer uses it to skip (and log) an optimiser step whose loss or gradients hold NaN/inf.
    """
    for t in tensors:
        if t is None:
            continue
        if not bool(torch.isfinite(torch.as_tensor(t)).all()):
            return False
    return True


def _mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=like.device)
    if mask.shape != like.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(like.shape)}")
    return mask != 0


def aggregate_loss(loss_mat: torch.Tensor, mask: torch.Tensor, loss_agg: str = "token-mean") -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar over the mask (see the module docstring)."""
    if loss_mat.dim() != 2:
        raise ValueError(f"loss_mat must be [B, T], got shape {tuple(loss_mat.shape)}")
    m = _mask(mask, loss_mat)
    lm = torch.where(m, loss_mat, torch.zeros_like(loss_mat))
    if loss_agg == "token-mean":
        return lm.sum() / m.sum().clamp(min=1).to(lm.dtype)
    if loss_agg == "seq-mean-token-mean":
        n = m.sum(dim=1)
        seq = lm.sum(dim=1) / n.clamp(min=1).to(lm.dtype)
        has = n > 0
        return torch.where(has, seq, torch.zeros_like(seq)).sum() / has.sum().clamp(min=1).to(lm.dtype)
    raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")


def ppo_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip_ratio: float = 0.2, clip_ratio_low: float | None = None,
                    clip_ratio_high: float | None = None, clip_ratio_c: float | None = None,
                    loss_agg: str = "token-mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate, optionally dual-clip (Ye et al. 2020), averaged over the mask.

    Args:
        log_probs: ``[B, T]`` log π_θ of the taken tokens (with grad).
        old_log_probs: ``[B, T]`` log π_old at rollout time; advantages ``[B, T]``; mask ``[B, T]``.
        clip_ratio: ε of ``clip(ρ, 1−ε_low, 1+ε_high)``; ``clip_ratio_low/high`` override either side
            (asymmetric "clip-higher").
        clip_ratio_c: dual-clip constant ``c > 1``. For ``A < 0`` the loss is further capped at
            ``−c·A``, so a token whose ratio exploded (ρ ≫ 1) with a negative advantage cannot
            dominate. ``None`` disables it.

    Per token, with ``ρ = exp(log_probs − old_log_probs)`` (log-ratio clamped to ±20)::

        ℓ = max(−A·ρ, −A·clip(ρ, 1−ε_low, 1+ε_high))
        if dual-clip and A < 0:  ℓ = min(ℓ, −c·A)

    Returns ``(loss, stats)``; stats (detached scalars, token-mean over the mask): ``clipfrac``
    (share of tokens where the clipped term is active), ``dual_clipfrac`` (share where the dual clip
    is active), ``approx_kl`` (mean of ``old − new`` log-probs, k1), ``ratio_mean``.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be [B, T], got shape {tuple(log_probs.shape)}")
    for name, x in (("old_log_probs", old_log_probs), ("advantages", advantages)):
        if x.shape != log_probs.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(log_probs.shape)}")
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1.0 for dual-clip, got {clip_ratio_c}")
    m = _mask(mask, log_probs)
    lo = clip_ratio if clip_ratio_low is None else clip_ratio_low
    hi = clip_ratio if clip_ratio_high is None else clip_ratio_high

    zero = torch.zeros_like(log_probs)
    adv = torch.where(m, advantages.detach().to(log_probs.dtype), zero)
    log_ratio = torch.where(m, log_probs - old_log_probs.detach().to(log_probs.dtype), zero)
    log_ratio = log_ratio.clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss1 = -adv * ratio
    loss2 = -adv * ratio.clamp(1.0 - lo, 1.0 + hi)
    clipped = torch.maximum(loss1, loss2)
    stats = {
        "clipfrac": masked_mean((loss2 > loss1).to(log_probs.dtype), m).detach(),
        "approx_kl": masked_mean(-log_ratio, m).detach(),
        "ratio_mean": masked_mean(ratio, m).detach(),
    }
    if clip_ratio_c is not None:
        loss3 = -adv * clip_ratio_c
        dual = torch.minimum(clipped, loss3)
        stats["dual_clipfrac"] = masked_mean(((clipped > loss3) & (adv < 0)).to(log_probs.dtype), m).detach()
        per_token = torch.where(adv < 0, dual, clipped)
    else:
        stats["dual_clipfrac"] = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
        per_token = clipped
    return aggregate_loss(per_token, m, loss_agg), stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float | None = 0.2,
               loss_agg: str = "token-mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss ``½·max((V − R)², (V_clip − R)²)`` over the mask (verl / PPO2).

    ``values`` ``[B, T]`` (with grad), ``old_values`` the critic's values at rollout time, ``returns``
    the targets, ``mask`` where the critic trains (the loss mask; for :func:`turn_level_gae` its
    ``value_mask``). ``V_clip = old + clip(V − old, −clip_range, clip_range)``; ``clip_range=None``
    gives the plain ``½(V − R)²``.

    Returns ``(loss, stats)``; stats: ``vf_clipfrac`` (share of tokens where the clipped term is the
    larger), ``vf_mean`` (mean prediction).
    """
    if values.dim() != 2:
        raise ValueError(f"values must be [B, T], got shape {tuple(values.shape)}")
    for name, x in (("old_values", old_values), ("returns", returns)):
        if x.shape != values.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(values.shape)}")
    m = _mask(mask, values)
    zero = torch.zeros_like(values)
    v = torch.where(m, values, zero)
    old = torch.where(m, old_values.detach().to(values.dtype), zero)
    ret = torch.where(m, returns.detach().to(values.dtype), zero)
    loss1 = (v - ret) ** 2
    if clip_range is None:
        per_token = loss1
        clipfrac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        v_clip = old + (v - old).clamp(-clip_range, clip_range)
        loss2 = (v_clip - ret) ** 2
        per_token = torch.maximum(loss1, loss2)
        clipfrac = masked_mean((loss2 > loss1).to(values.dtype), m).detach()
    stats = {"vf_clipfrac": clipfrac, "vf_mean": masked_mean(v, m).detach()}
    return 0.5 * aggregate_loss(per_token, m, loss_agg), stats


def kl_penalty(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from the sampled tokens' log-probs (Schulman's k-estimators).

    With ``x = log π_ref − log π_θ`` (log-ratio clamped to ±20):

    * ``"k1"``: ``−x = log π_θ − log π_ref`` — unbiased, can be negative per token;
    * ``"k2"``: ``½ x²`` — biased, ≥ 0, low variance;
    * ``"k3"``: ``eˣ − x − 1`` — unbiased, ≥ 0 (verl's ``low_var_kl``); clamped to ``[0, 10]`` as verl
      does, so an outlier token neither explodes nor, by rounding, goes below 0.

    Shapes: any, equal; returns the same shape (no masking: use :func:`kl_loss` for that).
    """
    if log_probs.shape != ref_log_probs.shape:
        raise ValueError(f"ref_log_probs has shape {tuple(ref_log_probs.shape)}, expected {tuple(log_probs.shape)}")
    x = (ref_log_probs.detach().to(log_probs.dtype) - log_probs).clamp(-20.0, 20.0)
    if kind == "k1":
        return -x
    if kind == "k2":
        return 0.5 * x**2
    if kind == "k3":
        return (torch.expm1(x) - x).clamp(0.0, 10.0)
    raise ValueError(f"kind must be one of {KL_KINDS}, got {kind!r}")


def kl_loss(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, mask: torch.Tensor, kind: str = "k3",
            loss_agg: str = "token-mean") -> torch.Tensor:
    """KL to the reference policy as a loss term: :func:`kl_penalty` aggregated over the mask.

    ``[B, T]`` inputs; mask-0 positions (which may hold NaN) contribute nothing.
    """
    m = _mask(mask, log_probs)
    zero = torch.zeros_like(log_probs)
    lp = torch.where(m, log_probs, zero)
    ref = torch.where(m, ref_log_probs.to(log_probs.dtype), zero)
    return aggregate_loss(kl_penalty(lp, ref, kind), m, loss_agg)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: ``[..., V]`` logits → ``[...]``.

    ``H = logsumexp(l) − Σ softmax(l)·l``; ``−inf`` logits (masked vocabulary entries) are allowed.
    """
    p = torch.softmax(logits, dim=-1)
    finite = torch.where(torch.isfinite(logits), logits, torch.zeros_like(logits))
    return torch.logsumexp(logits, dim=-1) - (p * finite).sum(dim=-1)


def entropy_bonus(logits: torch.Tensor, mask: torch.Tensor, loss_agg: str = "token-mean") -> torch.Tensor:
    """Mean policy entropy over the mask, from ``[B, T, V]`` logits (a scalar, with grad).

    The trainer *subtracts* ``entropy_coef · entropy_bonus(...)`` from its loss to encourage
    exploration. Total loss, by convention:
    ``pg_loss + vf_coef·value_loss + kl_coef·kl_loss − entropy_coef·entropy_bonus``.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    m = _mask(mask, logits[..., 0])
    logits = torch.where(m.unsqueeze(-1), logits, torch.zeros_like(logits))  # NaN padding stays out
    return aggregate_loss(entropy_from_logits(logits), m, loss_agg)
