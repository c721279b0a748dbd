"""atlasva.rl.losses against hand-computed small cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlasva.rl import (
    aggregate_loss,
    all_finite,
    entropy_bonus,
    entropy_from_logits,
    kl_loss,
    kl_penalty,
    ppo_policy_loss,
    value_loss,
)

T_ = torch.tensor
NAN = float("nan")
LN2 = math.log(2.0)


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64).detach(),
                               torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


def test_aggregate_loss_token_mean_vs_seq_mean():
    loss = T_([[1.0, 3.0, 100.0], [5.0, NAN, NAN], [7.0, 7.0, 7.0]])
    mask = T_([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    close(aggregate_loss(loss, mask, "token-mean"), 3.0)  # (1+3+5)/3
    close(aggregate_loss(loss, mask, "seq-mean-token-mean"), 3.5)  # (2 + 5)/2, the empty row left out
    close(aggregate_loss(loss, torch.zeros_like(mask)), 0.0)
    with pytest.raises(ValueError, match="loss_agg"):
        aggregate_loss(loss, mask, "sum")


def _ppo(ratios, advs, **kw):
    lp = torch.log(T_([ratios], dtype=torch.float64)).requires_grad_()
    old = torch.zeros_like(lp)
    return ppo_policy_loss(lp, old, T_([advs], dtype=torch.float64), torch.ones_like(lp), **kw), lp


def test_ppo_clip_each_case():
    # eps 0.2: A=+1,r=1.5 -> max(-1.5,-1.2)=-1.2 (clipped); A=+1,r=0.5 -> max(-0.5,-0.8)=-0.5
    #          A=-1,r=1.5 -> max(1.5,1.2)=1.5;              A=-1,r=0.5 -> max(0.5,0.8)=0.8 (clipped)
    cases = [(1.5, 1.0, -1.2), (0.5, 1.0, -0.5), (1.5, -1.0, 1.5), (0.5, -1.0, 0.8)]
    for r, a, want in cases:
        (loss, _), _ = _ppo([r], [a])
        close(loss, want)
    (loss, stats), lp = _ppo([c[0] for c in cases], [c[1] for c in cases])
    close(loss, (-1.2 - 0.5 + 1.5 + 0.8) / 4)
    close(stats["clipfrac"], 0.5)
    loss.backward()
    # clipped tokens get no gradient; d(-A r)/d log r = -A r on the others
    close(lp.grad, [[0.0, -0.5 / 4, 1.5 / 4, 0.0]])


def test_ppo_asymmetric_clip():
    (loss, _), _ = _ppo([1.5], [1.0], clip_ratio_high=0.28)
    close(loss, -1.28)
    (loss, _), _ = _ppo([0.5], [-1.0], clip_ratio_low=0.4)
    close(loss, 0.6)


def test_ppo_dual_clip():
    # A=-1, r=5: standard clipped loss max(5, 1.2)=5; dual clip c=3 caps it at -c*A = 3
    (loss, _), _ = _ppo([5.0], [-1.0])
    close(loss, 5.0)
    (loss, stats), lp = _ppo([5.0], [-1.0], clip_ratio_c=3.0)
    close(loss, 3.0)
    close(stats["dual_clipfrac"], 1.0)
    loss.backward()
    close(lp.grad, [[0.0]])  # capped: no gradient
    # below the cap (r=2: loss 2 < 3) and for positive advantages the dual clip changes nothing
    (loss, stats), _ = _ppo([2.0, 5.0], [-1.0, 1.0], clip_ratio_c=3.0)
    close(loss, (2.0 - 1.2) / 2)
    close(stats["dual_clipfrac"], 0.0)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        _ppo([1.0], [1.0], clip_ratio_c=1.0)


def test_ppo_mask_zero_tokens_contribute_nothing():
    lp = T_([[0.0, NAN, 0.3], [0.1, 50.0, -0.2]]).requires_grad_()
    old = T_([[0.0, NAN, 0.0], [0.0, 0.0, 0.0]])
    adv = T_([[1.0, NAN, 2.0], [-1.0, 1e9, 0.5]])
    mask = T_([[1, 0, 0], [1, 0, 0]])
    loss, stats = ppo_policy_loss(lp, old, adv, mask)
    # token (0,0): r=1, A=1 -> -1 ; token (1,0): r=e^0.1 (inside 1.2), A=-1 -> e^0.1
    close(loss, (-1.0 + math.exp(0.1)) / 2)
    loss.backward()
    assert torch.isfinite(lp.grad).all()
    assert lp.grad[0, 1] == 0 and lp.grad[0, 2] == 0 and lp.grad[1, 1] == 0 and lp.grad[1, 2] == 0
    assert all_finite(loss, *stats.values())
    # seq-mean-token-mean over the same mask: each row has one token -> the same number
    loss2, _ = ppo_policy_loss(lp, old, adv, mask, loss_agg="seq-mean-token-mean")
    close(loss2, loss)


def test_value_loss_clipping():
    # (v, old, R): (1.0, 0.5, 0.0): unclipped 1.0, v_clip=0.7 -> 0.49; max 1.0
    #              (0.6, 0.5, 1.0): inside the clip range -> 0.16
    #              (0.0, 0.5, 0.0): unclipped 0.0, v_clip=0.3 -> 0.09 (clipped term dominates)
    v = T_([[1.0, 0.6, 0.0, NAN]]).requires_grad_()
    old = T_([[0.5, 0.5, 0.5, NAN]])
    ret = T_([[0.0, 1.0, 0.0, NAN]])
    mask = T_([[1, 1, 1, 0]])
    loss, stats = value_loss(v, old, ret, mask, clip_range=0.2)
    close(loss, 0.5 * (1.0 + 0.16 + 0.09) / 3)
    close(stats["vf_clipfrac"], 1 / 3)
    loss.backward()
    # grads: 0.5/3 * 2(v-R) on the unclipped-max tokens, 0 where the clipped term wins
    close(v.grad, [[1 / 3, 0.5 / 3 * 2 * (0.6 - 1.0), 0.0, 0.0]])
    loss, _ = value_loss(v, old, ret, mask, clip_range=None)
    close(loss, 0.5 * (1.0 + 0.16 + 0.0) / 3)


def test_kl_estimators_hand_case():
    lp = T_([[math.log(0.5)]])
    ref = T_([[math.log(0.25)]])
    close(kl_penalty(lp, ref, "k1"), [[LN2]])
    close(kl_penalty(lp, ref, "k2"), [[0.5 * LN2**2]])
    close(kl_penalty(lp, ref, "k3"), [[0.5 + LN2 - 1.0]])  # x=-ln2: e^x - x - 1
    close(kl_penalty(lp, lp, "k3"), [[0.0]])
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(lp, ref, "k4")
    lp2 = T_([[math.log(0.5), NAN]])
    ref2 = T_([[math.log(0.25), NAN]])
    close(kl_loss(lp2, ref2, T_([[1, 0]]), "k1"), LN2)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-30, 0), st.floats(-30, 0)), min_size=1, max_size=8))
def test_k3_is_nonnegative(pairs):
    lp = T_([[p[0] for p in pairs]])
    ref = T_([[p[1] for p in pairs]])
    assert torch.all(kl_penalty(lp, ref, "k3") >= 0)
    assert torch.all(kl_penalty(lp, ref, "k2") >= 0)


def test_entropy():
    logits = torch.log(T_([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))
    close(entropy_from_logits(logits), [[1.5 * LN2, math.log(3)]])
    masked_vocab = T_([[[0.0, 0.0, float("-inf")]]])
    close(entropy_from_logits(masked_vocab), [[LN2]])
    logits_nan = torch.cat([logits, torch.full((1, 1, 3), NAN)], dim=1).requires_grad_()
    h = entropy_bonus(logits_nan, T_([[1, 0, 0]]))
    close(h, 1.5 * LN2)
    h.backward()
    assert torch.isfinite(logits_nan.grad).all() and torch.all(logits_nan.grad[0, 1:] == 0)


def test_all_finite():
    assert all_finite(T_([1.0, 2.0]), None, 3.0)
    assert not all_finite(T_([1.0]), T_([float("inf")]))
    assert not all_finite(T_(NAN))
