"""RL algorithms as pure tensor functions (DESIGN §3): advantages, losses, filters.

Nothing here knows about environments, models or episodes: inputs are ``[B, T]`` token tensors with
masks (1 = a policy token to train on, 0 = an observation token or padding) plus per-row ids.

* :mod:`.advantages` — masked statistics (``masked_mean``, ``masked_var``, ``masked_whiten``),
  masked token GAE (``gae``), ``bi_level_gae``, ``turn_level_gae`` (non-concatenated samples),
  trajectory GRPO (``grpo_advantages``) and turn-level GRPO (``turn_grpo_advantages``).
* :mod:`.losses` — ``ppo_policy_loss`` (clip, dual-clip), ``value_loss`` (clipped), ``kl_penalty`` /
  ``kl_loss`` (k1, k2, k3), ``entropy_bonus``, ``aggregate_loss`` and the ``all_finite`` guard.
* :mod:`.filters` — ``reward_variance_filter`` (top-p on group reward std/var, with rescaling).

NaN/inf policy: estimators and filters raise ``ValueError`` on non-finite inputs at mask-1 positions
(a bug or a diverged critic upstream; the trainer may catch it and skip the batch); losses do not
check (they are on the gradient path) — the trainer calls ``all_finite(loss)`` and skips the step.
"""

from .advantages import (
    TurnGAEResult,
    bi_level_gae,
    gae,
    grpo_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    turn_ends_from_mask,
    turn_grpo_advantages,
    turn_level_gae,
    turn_rewards_to_tokens,
)
from .filters import GroupFilterResult, reward_variance_filter
from .losses import (
    KL_KINDS,
    LOSS_AGGS,
    aggregate_loss,
    all_finite,
    entropy_bonus,
    entropy_from_logits,
    kl_loss,
    kl_penalty,
    ppo_policy_loss,
    value_loss,
)

__all__ = [
    "KL_KINDS",
    "LOSS_AGGS",
    "GroupFilterResult",
    "TurnGAEResult",
    "aggregate_loss",
    "all_finite",
    "bi_level_gae",
    "entropy_bonus",
    "entropy_from_logits",
    "gae",
    "grpo_advantages",
    "kl_loss",
    "kl_penalty",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "reward_variance_filter",
    "turn_ends_from_mask",
    "turn_grpo_advantages",
    "turn_level_gae",
    "turn_rewards_to_tokens",
    "value_loss",
]
