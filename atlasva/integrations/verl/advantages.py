"""atlasva's advantage estimators on verl's response tensors (verl's trainer hook calls this; no verl import).

verl holds, per output row, the response tokens ``[B, T]`` with ``response_mask`` (1 = generated), the
reward model's scores (``rm_scores``: the episode's total reward on the row's last token, as verl places a
``reward_score``), the same plus an optional in-reward KL penalty (``token_level_rewards``), critic
``values`` (``values[:, t]`` = V of the state in which token ``t`` was chosen, as in atlasva) and each
row's ``extra_fields["atlasva"]`` (turn rewards and turn ends from :mod:`.outputs`).

:func:`atlasva_advantages` rebuilds atlasva's view of the batch — each turn's reward on its end token
(so bi-level and turn-level credit assignment see per-turn rewards, not one trajectory sum), whatever
verl added per token (the KL penalty), turn-end mask, group ids (verl's ``uid``: the episodes of one level
in one batch), episode and turn indices — and calls atlasva's own estimator registry
(:func:`atlasva.train.estimators.compute_advantages`), so the numbers are those of :mod:`atlasva.rl` exactly.

verl's critic trains on every response token, so a critic target is needed wherever the mask is 1: for
``turn_gae`` (whose return lives on one anchor token per turn) the turn's return is given to all of its
tokens; for critic-free estimators the returns are the advantages (verl's convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from atlasva import rl
from atlasva.integrations.verl.outputs import EXTRA_KEY
from atlasva.train.config import AlgorithmConfig
from atlasva.train.estimators import compute_advantages, get_estimator


@dataclass
class ResponseBatch:
    """The fields of :class:`atlasva.train.ppo.Batch` the estimators read, built from verl's rows."""

    loss_mask: torch.Tensor
    turn_end_mask: torch.Tensor
    token_rewards: torch.Tensor
    group_ids: list[str]
    episode_index: list[int]
    turn_ids: list[int]


def turn_extras(extra_fields: Sequence[Any]) -> list[dict[str, Any]]:
    """Each row's ``extra_fields["atlasva"]`` (rows from another agent loop are refused: no turn data)."""
    out = []
    for i, extra in enumerate(extra_fields):
        if not isinstance(extra, dict) or EXTRA_KEY not in extra:
            raise ValueError(f"row {i} has no extra_fields[{EXTRA_KEY!r}]: atlasva's estimators need rows from the "
                             "`atlasva` agent loop (set agent_name=atlasva in the dataset)")
        out.append(extra[EXTRA_KEY])
    return out


def response_batch(response_mask: torch.Tensor, token_level_rewards: torch.Tensor, extras: Sequence[dict[str, Any]],
                   uids: Sequence[Any]) -> tuple[ResponseBatch, Any]:
    """atlasva's batch view of verl's rows, and a result-like object with each episode's total reward."""
    mask = (torch.as_tensor(response_mask) != 0).float()
    n, width = mask.shape
    if len(extras) != n or len(uids) != n:
        raise ValueError(f"{n} rows but {len(extras)} extra fields and {len(uids)} uids")
    turn_rewards = torch.zeros(n, max(1, max(len(e["turn_rewards"]) for e in extras)))
    turn_ends = torch.full(turn_rewards.shape, -1, dtype=torch.long)
    episode_of: dict[str, int] = {}
    totals: list[float] = []
    for r, e in enumerate(extras):
        k = len(e["turn_rewards"])
        turn_rewards[r, :k] = torch.tensor(e["turn_rewards"], dtype=torch.float32)
        turn_ends[r, :k] = torch.tensor(e["turn_ends"], dtype=torch.long)
        if e["episode_key"] not in episode_of:
            episode_of[e["episode_key"]] = len(totals)
            totals.append(float(e["total_reward"]))
    if bool((turn_ends >= width).any()):
        raise ValueError("a turn end lies past its row's response: extra_fields do not match the response tensors")
    placed, end_mask = rl.turn_rewards_to_tokens(turn_rewards, turn_ends, width)
    # what verl added on top of the episode total it placed on the last token (an in-reward KL penalty)
    last = (mask * torch.arange(width)).argmax(dim=1)
    extra = torch.as_tensor(token_level_rewards, dtype=torch.float32).clone()
    extra[torch.arange(n), last] -= torch.tensor([float(e["total_reward"]) for e in extras])
    batch = ResponseBatch(
        loss_mask=mask, turn_end_mask=end_mask, token_rewards=placed + extra * mask,
        group_ids=[str(u) for u in uids], episode_index=[episode_of[e["episode_key"]] for e in extras],
        turn_ids=[int(e["turn_ids"][0]) if e["turn_ids"] else 0 for e in extras],
    )
    result = SimpleNamespace(episodes=[SimpleNamespace(total_reward=t) for t in totals])
    return batch, result


def atlasva_advantages(response_mask: torch.Tensor, token_level_rewards: torch.Tensor, values: torch.Tensor | None,
                       extra_fields: Sequence[Any], uids: Sequence[Any],
                       algorithm: AlgorithmConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(advantages, returns)`` ``[B, T]`` for verl, from atlasva's estimator ``algorithm.estimator``."""
    batch, result = response_batch(response_mask, token_level_rewards, turn_extras(extra_fields), uids)
    critic = get_estimator(algorithm.estimator).critic
    if critic and values is None:
        raise ValueError(f"algorithm.estimator={algorithm.estimator} needs critic values: set critic.enable=true")
    vals = torch.as_tensor(values, dtype=torch.float32) * batch.loss_mask if critic else None
    adv, returns, value_mask = compute_advantages(batch, vals, result, algorithm)
    if returns is None:
        returns = adv
    elif algorithm.estimator == "turn_gae":  # one anchor per row: the turn's return for all its tokens
        returns = (returns * value_mask).sum(dim=1, keepdim=True) * batch.loss_mask
    return adv, returns
