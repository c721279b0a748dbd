"""atlasva.rl.filters: reward-variance top-p group filter against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from atlasva.rl import reward_variance_filter

T_ = torch.tensor

# groups (2 episodes each) and their unbiased stds:
#   g0 (0, 2): sqrt(2) = 1.4142   g1 (0, 1): 0.7071   g2 (1, 1): 0   g3 (0, 0.5): 0.3536
# total 2.4749; shares sorted: g0 .5714, g1 .2857 (cum .8571), g3 .1429 (cum 1.0), g2 0
SCORES = T_([0.0, 2.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5])
GROUPS = ["g0", "g0", "g1", "g1", "g2", "g2", "g3", "g3"]


@pytest.mark.parametrize(("top_p", "kept_groups", "rows"), [
    (0.5, 1, [0, 1]),
    (0.5714, 1, [0, 1]),
    (0.8, 2, [0, 1, 2, 3]),
    (0.8571, 2, [0, 1, 2, 3]),
    (0.9, 3, [0, 1, 2, 3, 6, 7]),
    (1.0, 4, list(range(8))),
])
def test_filter_keeps_highest_std_groups(top_p, kept_groups, rows):
    res = reward_variance_filter(SCORES, GROUPS, top_p=top_p)
    assert res.kept_indices.tolist() == rows
    assert res.keep_mask.tolist() == [i in rows for i in range(8)]
    assert res.kept_groups == kept_groups and res.n_groups == 4
    assert res.scale == pytest.approx(math.sqrt(kept_groups / 4))
    torch.testing.assert_close(res.group_spread.double(),
                               T_([math.sqrt(2), math.sqrt(0.5), 0.0, math.sqrt(0.125)], dtype=torch.float64))


def test_filter_var_metric_and_scale_modes():
    # variances 2, 0.5, 0, 0.125 (total 2.625): top 0.8 -> g0 (0.762) + g1 (0.952) -> 2 groups
    res = reward_variance_filter(SCORES, GROUPS, top_p=0.8, metric="var", scale_mode="linear")
    assert res.kept_indices.tolist() == [0, 1, 2, 3]
    assert res.scale == pytest.approx(0.5)
    # top 0.7 with var: g0 alone holds 0.762 -> 1 group, whereas with std it holds only 0.571 -> 2 groups
    assert reward_variance_filter(SCORES, GROUPS, top_p=0.7, metric="var").kept_groups == 1
    assert reward_variance_filter(SCORES, GROUPS, top_p=0.7, metric="std").kept_groups == 2
    assert reward_variance_filter(SCORES, GROUPS, top_p=0.5, scale_mode="none").scale == 1.0


def test_filter_all_zero_spread_keeps_everything():
    res = reward_variance_filter(T_([1.0, 1.0, 0.0, 0.0]), [0, 0, 1, 1], top_p=0.5)
    assert res.kept_indices.tolist() == [0, 1, 2, 3] and res.scale == 1.0
    res = reward_variance_filter(T_([1.0, 0.0, 3.0]), [0, 1, 2], top_p=0.5)  # PPO: one episode per group
    assert res.kept_groups == 3 and res.scale == 1.0


def test_filter_ties_and_unsorted_rows():
    # groups interleaved in the batch; g "b" and "c" tie (std 0.7071), "a" is 0: the first seen tie wins
    res = reward_variance_filter(T_([0.0, 1.0, 5.0, 1.0, 0.0, 5.0]), ["b", "c", "a", "b", "c", "a"], top_p=0.5)
    assert res.kept_indices.tolist() == [0, 3]


def test_filter_traj_ids_count_each_trajectory_once():
    # non-concat rows: group 0 has traj 0 (3 turn rows, score 1) and traj 1 (1 row, score 0);
    # group 1 has traj 0 (score 0.2) and traj 1 (score 0). Per trajectory: std g0 .7071, g1 .1414
    scores = T_([1.0, 1.0, 1.0, 0.0, 0.2, 0.0])
    groups = [0, 0, 0, 0, 1, 1]
    trajs = [0, 0, 0, 1, 0, 1]
    res = reward_variance_filter(scores, groups, top_p=0.8, traj_ids=trajs)
    assert res.kept_indices.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(res.group_spread.double(), T_([math.sqrt(0.5), math.sqrt(0.02)], dtype=torch.float64))


def test_filter_bad_input():
    with pytest.raises(ValueError, match="top_p"):
        reward_variance_filter(SCORES, GROUPS, top_p=0.0)
    with pytest.raises(ValueError, match="non-finite"):
        reward_variance_filter(T_([float("nan"), 1.0]), [0, 0])
    with pytest.raises(ValueError, match="group_ids"):
        reward_variance_filter(SCORES, GROUPS[:3])
