"""atlasva.rl.advantages against hand-computed small cases (numbers worked out by hand below)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlasva.rl import (
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

T_ = torch.tensor
NAN = float("nan")


def close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               atol=tol, rtol=0)


# A 2-turn, 5-token episode: [a0 a1 | obs | a2 a3]; turn 1 ends at t=1 (reward 0.5), turn 2 at t=4 (reward 1).
MASK = T_([[1, 1, 0, 1, 1]])
REWARDS = T_([[0.0, 0.5, 0.0, 0.0, 1.0]])
VALUES = T_([[0.5, 0.4, 9.0, 0.3, 0.2]])  # 9.0 sits on the observation token and must be ignored
ENDS = T_([[0, 1, 0, 0, 1]]).bool()


# ---------------------------------------------------------------------------------------------------
# masked statistics


def test_masked_mean_var_whiten():
    x = T_([[1.0, 2.0, NAN], [3.0, 100.0, 4.0]])
    m = T_([[1, 1, 0], [1, 0, 1]])
    close(masked_mean(x, m), 2.5)  # (1+2+3+4)/4
    close(masked_mean(x, m, dim=1), [1.5, 3.5])
    # deviations -1.5 -0.5 0.5 1.5 -> sum sq 5; biased 1.25, unbiased 5/3
    close(masked_var(x, m, unbiased=False), 1.25)
    close(masked_var(x, m), 5 / 3)
    w = masked_whiten(x, m, eps=0.0)
    s = math.sqrt(5 / 3)
    close(w, [[-1.5 / s, -0.5 / s, 0.0], [0.5 / s, 0.0, 1.5 / s]])
    w2 = masked_whiten(x, m, shift_mean=False, eps=0.0)
    close(w2, [[-1.5 / s + 2.5, -0.5 / s + 2.5, 0.0], [0.5 / s + 2.5, 0.0, 1.5 / s + 2.5]])
    # empty mask: mean 0, whitened zeros, no NaN
    close(masked_mean(x, torch.zeros_like(m)), 0.0)
    close(masked_whiten(x, torch.zeros_like(m)), torch.zeros(2, 3))


# ---------------------------------------------------------------------------------------------------
# masked token GAE


def test_gae_hand_case_with_observation_gap_and_padding():
    # row 0: the 2-turn episode, gamma = lam = 0.5 (gamma*lam = 0.25), compressed r=[0,.5,0,1], V=[.5,.4,.3,.2]
    #   t=4: d=1-0.2=0.8                      A=0.8
    #   t=3: d=0+0.5*0.2-0.3=-0.2             A=-0.2+0.25*0.8=0.0
    #   t=1: d=0.5+0.5*0.3-0.4=0.25  (bootstraps from t=3 across the observation)   A=0.25
    #   t=0: d=0+0.5*0.4-0.5=-0.3             A=-0.3+0.25*0.25=-0.2375
    # row 1: one turn [a a a pad pad], reward 1 at t=2, V=0.2 on the turn (pad values NaN)
    #   t=2: A=0.8; t=1: d=0.1-0.2=-0.1, A=-0.1+0.2=0.1; t=0: d=-0.1, A=-0.1+0.025=-0.075
    rewards = torch.cat([REWARDS, T_([[0.0, 0.0, 1.0, 0.0, 0.0]])])
    values = torch.cat([VALUES, T_([[0.2, 0.2, 0.2, NAN, NAN]])])
    mask = torch.cat([MASK, T_([[1, 1, 1, 0, 0]])])
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    close(adv, [[-0.2375, 0.25, 0.0, 0.0, 0.8], [-0.075, 0.1, 0.8, 0.0, 0.0]])
    close(ret, [[0.2625, 0.65, 0.0, 0.3, 1.0], [0.125, 0.3, 1.0, 0.0, 0.0]])


def test_gae_gamma_lam_one_is_monte_carlo():
    adv, ret = gae(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    close(ret, [[1.5, 1.5, 0.0, 1.0, 1.0]])
    close(adv, [[1.0, 1.1, 0.0, 0.7, 0.8]])


def _plain_gae(r, v, gamma, lam):
    adv, last, nxt = [0.0] * len(r), 0.0, 0.0
    for t in reversed(range(len(r))):
        last = r[t] + gamma * nxt - v[t] + gamma * lam * last
        adv[t], nxt = last, v[t]
    return adv


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(-2, 2), st.floats(-2, 2)), min_size=1, max_size=9),
       st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_masked_gae_equals_plain_gae_on_compressed_sequence(cells, gamma, lam):
    mask = T_([[float(c[0]) for c in cells]], dtype=torch.float64)
    r = T_([[c[1] if c[0] else 0.0 for c in cells]], dtype=torch.float64)
    v = T_([[c[2] if c[0] else 123.0 for c in cells]], dtype=torch.float64)
    adv, ret = gae(r, v, mask, gamma, lam)
    keep = [i for i, c in enumerate(cells) if c[0]]
    ref = _plain_gae([float(r[0, i]) for i in keep], [float(v[0, i]) for i in keep], gamma, lam)
    close(adv[0, keep], ref, tol=1e-9)
    close(ret[0, keep], [a + float(v[0, i]) for a, i in zip(ref, keep)], tol=1e-9)
    off = [i for i, c in enumerate(cells) if not c[0]]
    assert torch.all(adv[0, off] == 0) and torch.all(ret[0, off] == 0)


def test_gae_rejects_bad_input():
    with pytest.raises(ValueError, match="mask-0"):
        gae(T_([[0.0, 0.0, 1.0, 0.0, 0.0]]), VALUES, MASK)  # reward on the observation token
    with pytest.raises(ValueError, match="values"):
        gae(REWARDS, T_([[NAN, 0.4, 0.0, 0.3, 0.2]]), MASK)
    with pytest.raises(ValueError, match="shape"):
        gae(REWARDS, VALUES[:, :4], MASK)


# ---------------------------------------------------------------------------------------------------
# bi-level GAE


def test_bi_level_gae_hand_case():
    # gamma_turn = 0.5, gamma_token = 0.5, lam = 0.5. Turn ends e1=1 (V .4, r .5), e2=4 (V .2, r 1).
    # turn level: k=2: A=1-0.2=0.8, R=1.0;  k=1: d=0.5+0.5*0.2-0.4=0.2, A=0.2+0.25*0.8=0.4, R=0.8
    # token level: t=4 (end): A=1.0-0.2=0.8;  t=3: d=0+0.5*0.2-0.3=-0.2, A=-0.2+0.25*0.8=0.0
    #              t=1 (end): A=0.8-0.4=0.4;  t=0: d=0+0.5*0.4-0.5=-0.3, A=-0.3+0.25*0.4=-0.2
    adv, ret = bi_level_gae(REWARDS, VALUES, MASK, ENDS, gamma_turn=0.5, gamma_token=0.5, lam=0.5)
    close(adv, [[-0.2, 0.4, 0.0, 0.0, 0.8]])
    close(ret, [[0.3, 0.8, 0.0, 0.3, 1.0]])


def test_bi_level_gae_all_ones_is_monte_carlo():
    # rewards only on turn ends: every policy token's return = sum of its own and later turns' rewards
    adv, ret = bi_level_gae(REWARDS, VALUES, MASK, ENDS, 1.0, 1.0, 1.0)
    close(ret, [[1.5, 1.5, 0.0, 1.0, 1.0]])
    close(adv, [[1.0, 1.1, 0.0, 0.7, 0.8]])
    # ... and then it equals plain masked GAE with gamma = lam = 1
    adv2, ret2 = gae(REWARDS, VALUES, MASK, 1.0, 1.0)
    close(adv, adv2)


def test_bi_level_gae_turn_discount_and_in_turn_reward():
    # gamma_turn=0.5, gamma_token=lam=1, plus a 0.25 token reward on t=3 (inside turn 2, not its end)
    # turn level ignores it: k=2: A=0.8, R=1.0; k=1: d=0.5+0.5*0.2-0.4=0.2, A=0.2+0.5*1*0.8=0.6, R=1.0
    # token level: t=4: A=0.8, ret 1.0; t=3: d=0.25+0.2-0.3=0.15, A=0.15+0.8=0.95, ret 1.25
    #              t=1: A=1.0-0.4=0.6, ret 1.0; t=0: d=0+0.4-0.5=-0.1, A=-0.1+0.6=0.5, ret 1.0
    r = REWARDS.clone()
    r[0, 3] = 0.25
    adv, ret = bi_level_gae(r, VALUES, MASK, ENDS, gamma_turn=0.5, gamma_token=1.0, lam=1.0)
    close(adv, [[0.5, 0.6, 0.0, 0.95, 0.8]])
    close(ret, [[1.0, 1.0, 0.0, 1.25, 1.0]])


def test_bi_level_gae_from_per_turn_rewards_and_batch():
    tok_r, ends = turn_rewards_to_tokens(T_([[0.5, 1.0], [2.0, 0.0]]), T_([[1, 4], [3, -1]]), 5)
    close(tok_r, [[0.0, 0.5, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 2.0, 0.0]])
    assert ends.tolist() == [[False, True, False, False, True], [False, False, False, True, False]]
    mask = torch.cat([MASK, T_([[0, 1, 1, 1, 0]])])
    assert torch.equal(turn_ends_from_mask(mask), ends)
    values = torch.cat([VALUES, T_([[NAN, 1.0, 1.5, 0.5, NAN]])])
    adv, ret = bi_level_gae(tok_r, values, mask, ends, 1.0, 1.0, 1.0)
    close(ret, [[1.5, 1.5, 0.0, 1.0, 1.0], [0.0, 2.0, 2.0, 2.0, 0.0]])
    close(adv, [[1.0, 1.1, 0.0, 0.7, 0.8], [0.0, 1.0, 0.5, 1.5, 0.0]])


def test_bi_level_gae_rejects_turn_end_outside_mask():
    with pytest.raises(ValueError, match="turn_end_mask"):
        bi_level_gae(REWARDS, VALUES, MASK, T_([[0, 1, 1, 0, 1]]))


# ---------------------------------------------------------------------------------------------------
# turn-level GAE (non-concatenated samples)

# rows: (g0, traj0, turn0), (g0, traj0, turn1), (g0, traj1, turn0), duplicate of (g0, traj0, turn1)
NC_MASK = T_([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
NC_VALUES = T_([[0.4, 0.1, 0.2, NAN], [0.3, 0.6, NAN, NAN], [0.1, NAN, NAN, NAN], [7.0, 7.0, NAN, NAN]])
NC_REWARDS = T_([0.5, 1.0, 0.0, 1.0])
NC_IDS = (["g0"] * 4, [0, 0, 1, 0], [0, 1, 0, 1])


def test_turn_level_gae_first_anchor():
    # gamma = lam = 0.5. traj0: v=[0.4, 0.3]; k=1: A=1.0-0.3=0.7; k=0: d=0.5+0.5*0.3-0.4=0.25, A=0.25+0.25*0.7=0.425
    # traj1: A=0-0.1=-0.1.  Row 3 duplicates row 1 (its own values are ignored).
    res = turn_level_gae(NC_REWARDS, NC_VALUES, NC_MASK, *NC_IDS, gamma=0.5, lam=0.5, anchor="first")
    close(res.advantages, [[0.425, 0.425, 0.425, 0], [0.7, 0.7, 0, 0], [-0.1, 0, 0, 0], [0.7, 0.7, 0, 0]])
    close(res.returns, [[0.825, 0, 0, 0], [1.0, 0, 0, 0], [0.0, 0, 0, 0], [1.0, 0, 0, 0]])
    assert res.value_mask.tolist() == [[True, False, False, False]] * 4
    assert res.unique.tolist() == [True, True, True, False]


def test_turn_level_gae_last_anchor_and_token_rewards():
    # v=[0.2, 0.6] for traj0; k=1: A=1-0.6=0.4; k=0: d=0.5+0.5*0.6-0.2=0.6, A=0.6+0.25*0.4=0.7; traj1 A=-0.1
    tok_r = T_([[0.25, 0.0, 0.25, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    res = turn_level_gae(tok_r, NC_VALUES, NC_MASK, *NC_IDS, gamma=0.5, lam=0.5, anchor="last")
    close(res.advantages[:, 0], [0.7, 0.4, -0.1, 0.4])
    close(res.returns, [[0, 0, 0.9, 0], [0, 1.0, 0, 0], [0.0, 0, 0, 0], [0, 1.0, 0, 0]])
    assert res.value_mask.nonzero().tolist() == [[0, 2], [1, 1], [2, 0], [3, 1]]


def test_turn_level_gae_turn_order_and_whiten():
    # rows given out of turn order; gamma=lam=1 -> A_k = return-to-go - v_k
    res = turn_level_gae(T_([1.0, 0.5]), T_([[0.0, 0.0], [0.0, 0.0]]), T_([[1, 1], [1, 0]]),
                         [0, 0], [0, 0], [1, 0])
    close(res.advantages, [[1.0, 1.0], [1.5, 0.0]])
    # whitening over unique rows' tokens: values 1, 1, 1.5 -> mean 7/6, unbiased var (1/36+1/36+4/36)/2=1/12
    res = turn_level_gae(T_([1.0, 0.5, 0.5]), torch.zeros(3, 2), T_([[1, 1], [1, 0], [1, 0]]),
                         [0, 0, 0], [0, 0, 0], [1, 0, 0], whiten=True, eps=0.0)
    s = math.sqrt(1 / 12)
    close(res.advantages, [[-1 / 6 / s, -1 / 6 / s], [1 / 3 / s, 0.0], [1 / 3 / s, 0.0]])


def test_turn_level_gae_rejects_empty_row():
    with pytest.raises(ValueError, match="without response tokens"):
        turn_level_gae(T_([1.0]), T_([[0.0, 0.0]]), T_([[0, 0]]), [0], [0], [0])


# ---------------------------------------------------------------------------------------------------
# GRPO


def test_grpo_hand_case():
    # group a: scores 1, 0, 0 -> mean 1/3, unbiased var 1/3 -> (2/3)/sqrt(1/3)=2/sqrt3, -1/sqrt3
    # group b: 2, 2 -> identical -> 0; group c: a single sample -> 0
    scores = T_([1.0, 0.0, 0.0, 2.0, 2.0, 5.0])
    mask = T_([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    ids = ["a", "a", "a", "b", "b", "c"]
    adv = grpo_advantages(scores, mask, ids, eps=0.0)
    r3 = math.sqrt(3)
    close(adv, [[2 / r3, 2 / r3, 0], [-1 / r3, 0, 0], [-1 / r3] * 3, [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    adv = grpo_advantages(scores, mask, ids, norm_by_std=False)
    close(adv[:3, 0], [2 / 3, -1 / 3, -1 / 3])
    # [B, T] token rewards are summed over the mask
    tok = T_([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0, 0, 0.0]])
    close(grpo_advantages(tok, mask, ids, eps=0.0), grpo_advantages(scores, mask, ids, eps=0.0))


def test_grpo_identical_rewards_give_zeros():
    adv = grpo_advantages(T_([0.7, 0.7, 0.7, 0.7]), torch.ones(4, 3), [1, 1, 1, 1])
    assert torch.all(adv == 0)


def test_turn_grpo_hand_case():
    # one group of 3; rows 0,1 have 2 turns (ends at 1 and 4), row 2 one turn (end at 1); gamma = 1
    # row0 turn rewards (0, 1) -> G=(1, 1); row1 (0.5, 0) -> G=(0.5, 0); row2 (0) -> G=(0)
    # turn 0: G=(1, .5, 0), mean .5, unbiased std .5 -> (1, 0, -1)
    # turn 1: G=(1, 0) among rows 0, 1, mean .5, std sqrt(.5) -> (±1/sqrt2)
    mask = T_([[1, 1, 0, 1, 1], [1, 1, 0, 1, 1], [1, 1, 0, 0, 0]])
    ends = T_([[0, 1, 0, 0, 1], [0, 1, 0, 0, 1], [0, 1, 0, 0, 0]])
    rew = T_([[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 0.0, 0.0, 0.0], [0.0] * 5])
    adv = turn_grpo_advantages(rew, mask, ends, [0, 0, 0], eps=0.0)
    h = 1 / math.sqrt(2)
    close(adv, [[1, 1, 0, h, h], [0, 0, 0, -h, -h], [-1, -1, 0, 0, 0]])
    adv = turn_grpo_advantages(rew, mask, ends, [0, 0, 0], norm_by_std=False)
    close(adv, [[0.5, 0.5, 0, 0.5, 0.5], [0, 0, 0, -0.5, -0.5], [-0.5, -0.5, 0, 0, 0]])
    # gamma = 0.5: G row0 = (0.5, 1), row1 = (0.5, 0), row2 = (0): turn 0 (0.5, 0.5, 0) mean 1/3
    adv = turn_grpo_advantages(rew, mask, ends, [0, 0, 0], gamma=0.5, norm_by_std=False)
    close(adv[:, 0], [1 / 6, 1 / 6, -1 / 3])
    close(adv[:2, 3], [0.5, -0.5])


def test_turn_grpo_turn_zero_equals_trajectory_grpo_and_groups_separate():
    mask = T_([[1, 1, 0, 1, 1]] * 4)
    ends = T_([[0, 1, 0, 0, 1]] * 4)
    rew = T_([[0, 1.0, 0, 0, 2.0], [0, 0.0, 0, 0, 1.0], [0, 3.0, 0, 0, 0.0], [0, 3.0, 0, 0, 0.0]])
    ids = ["x", "x", "y", "y"]
    adv = turn_grpo_advantages(rew, mask, ends, ids)
    traj = grpo_advantages(rew, mask, ids)
    close(adv[:, :2], traj[:, :2])
    assert torch.all(adv[2:] == 0)  # identical rewards in group y
    assert torch.all(adv[:, 2] == 0)  # observation token


def test_turn_grpo_tokens_after_last_end_get_zero():
    adv = turn_grpo_advantages(T_([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]), T_([[1, 1, 1], [1, 1, 1]]),
                               T_([[1, 0, 0], [1, 0, 0]]), [0, 0], norm_by_std=False)
    close(adv, [[0.5, 0, 0], [-0.5, 0, 0]])


def _bi_level_reference(r, v, valid, ends, g_turn, g_tok, lam):
    """Scalar port of VAGEN's legacy pseudo-code (vagen.md §4.3) on one row."""
    T = len(r)
    adv, ret, r2 = [0.0] * T, [0.0] * T, list(r)
    e = [t for t in range(T) if ends[t]]
    last = 0.0
    for i in reversed(range(len(e))):
        nv = v[e[i + 1]] if i + 1 < len(e) else 0.0
        last = r[e[i]] + g_turn * nv - v[e[i]] + g_turn * lam * last
        r2[e[i]] = last + v[e[i]]
    pos = [t for t in range(T) if valid[t]]
    last = 0.0
    for i in reversed(range(len(pos))):
        t = pos[i]
        if ends[t]:
            nv, last = 0.0, 0.0
        else:
            nv = v[pos[i + 1]]
        last = r2[t] + g_tok * nv - v[t] + g_tok * lam * last
        adv[t], ret[t] = last, last + v[t]
    return adv, ret


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 2), st.floats(-1, 1)), min_size=1, max_size=4),
       st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.randoms(use_true_random=False))
def test_bi_level_gae_matches_legacy_reference(turns, g_turn, g_tok, lam, rnd):
    # each turn: n policy tokens (reward on the end token, sometimes one inside) then k observation tokens
    valid, ends, r = [], [], []
    for n, k, reward in turns:
        for j in range(n):
            valid.append(1)
            ends.append(int(j == n - 1))
            r.append(reward if j == n - 1 else (0.5 if rnd.random() < 0.3 else 0.0))
        valid += [0] * k
        ends += [0] * k
        r += [0.0] * k
    v = [rnd.uniform(-1, 1) if m else 0.0 for m in valid]
    adv, ret = bi_level_gae(T_([r], dtype=torch.float64), T_([v], dtype=torch.float64), T_([valid]),
                            T_([ends]), g_turn, g_tok, lam)
    ref_adv, ref_ret = _bi_level_reference(r, v, valid, ends, g_turn, g_tok, lam)
    close(adv[0], ref_adv, tol=1e-9)
    close(ret[0], ref_ret, tol=1e-9)
