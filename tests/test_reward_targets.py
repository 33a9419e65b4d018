# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import math
import warnings

import pytest
import torch

from pcl.reward_targets import REWARD_STATE, RewardTargets
from pcl.segment import SegmentFormat


def targets(rows, weights, is_model=None, auto=True, strict=True, fmt=None):
    names = [f"f{i}" for i in range(len(weights))]
    t = RewardTargets(
        fmt or SegmentFormat(), torch.tensor(weights), is_model or [False] * len(weights), names, auto, strict
    )
    return t, t(torch.tensor(rows, dtype=torch.float))


def test_single_binary_reward_maps_to_itself():
    _, out = targets([[0.0], [1.0], [0.3]], [1.0])
    assert out == pytest.approx([0.0, 1.0, 0.3])


def test_summed_rewards_are_normalised_by_the_weights_bounds():
    # accuracy + format with weights [1, 1]: the sum in [0, 2] maps to [0, 1] from the first step
    _, out = targets([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]], [1.0, 1.0])
    assert out == pytest.approx([0.0, 0.5, 1.0])
    # weights [2, 1] and a negative weight: bounds sum(min(w, 0)) .. sum(max(w, 0))
    _, out = targets([[1.0, 0.0], [0.5, 1.0]], [2.0, 1.0])
    assert out == pytest.approx([2 / 3, 2 / 3])
    _, out = targets([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]], [1.0, -1.0])
    assert out == pytest.approx([0.5, 1.0, 0.0])


def test_reward_model_scores_go_through_a_sigmoid():
    _, out = targets([[-2.0], [0.0], [3.5]], [1.0], is_model=[True])
    assert out == pytest.approx([1 / (1 + math.exp(2.0)), 0.5, 1 / (1 + math.exp(-3.5))])


def test_callable_outside_unit_range_widens_its_own_range_and_warns_once():
    t = RewardTargets(SegmentFormat(), torch.tensor([1.0, 1.0]), [False, False], ["length", "acc"], True)
    with pytest.warns(UserWarning, match="'length' returned -1..3"):
        out = t(torch.tensor([[-1.0, 1.0], [3.0, 0.0]]))
    assert t.ranges == [[-1.0, 3.0], [0.0, 1.0]]
    assert out == pytest.approx([0.5, 0.5])  # (0 + 1) / 2 and (1 + 0) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for the same function
        out = t(torch.tensor([[5.0, 1.0]]))
    assert t.ranges[0] == [-1.0, 5.0] and out == pytest.approx([1.0])
    assert t.log_ranges == {"self_assessment/range_lo/length": -1.0, "self_assessment/range_hi/length": 5.0}
    fresh = RewardTargets(SegmentFormat(), torch.tensor([1.0, 1.0]), [False, False], ["length", "acc"], True)
    fresh.load_state_dict(t.state_dict())
    assert fresh.ranges == t.ranges


def test_ranges_saved_in_and_loaded_from_a_checkpoint_folder(tmp_path):
    def make():
        return RewardTargets(SegmentFormat(), torch.tensor([1.0]), [False], ["length"], True)

    t = make()
    with pytest.warns(UserWarning, match="outside"):
        t(torch.tensor([[-2.0], [3.0]]))
    t.save(str(tmp_path))
    assert (tmp_path / REWARD_STATE).is_file()
    fresh = make()
    fresh.load(None)  # no checkpoint: a fresh run
    fresh.load(str(tmp_path / "missing"))  # a checkpoint without the file (e.g. written by plain GRPO)
    assert fresh.ranges == [[0.0, 1.0]]
    fresh.load(str(tmp_path))
    assert fresh.ranges == [[-2.0, 3.0]]


def test_not_applicable_rewards():
    # NaN (TRL's None) is "not applicable": the bounds cover the functions that returned a value
    _, out = targets([[math.nan, math.nan], [math.nan, 1.0], [0.0, math.nan], [math.inf, 1.0]], [1.0, 3.0])
    assert out[0] is None and out[1:] == pytest.approx([1.0, 0.0, 1.0])


def test_declared_range_is_strict_unless_weight_zero():
    fmt = SegmentFormat(reward_range=(-1.0, 1.0))
    _, out = targets([[-1.0, 0.5], [0.0, 0.0]], [1.0, 1.0], auto=False, fmt=fmt)
    assert out == pytest.approx([0.25, 0.5])
    with pytest.raises(ValueError, match="outside the declared `self_assessment_reward_range`"):
        targets([[1.0, 1.0]], [1.0, 1.0], auto=False, fmt=fmt)
    _, out = targets([[1.0, 1.0], [math.inf, 0.0]], [1.0, 1.0], auto=False, strict=False, fmt=fmt)
    assert out == [1.0, None]


def test_evaluation_maps_by_the_running_range_without_widening_it():
    t, _ = targets([[-2.0], [3.0]], [1.0])  # training widens the range to [-2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: nothing changes
        out = t(torch.tensor([[0.5], [8.0], [-7.0]]), update=False)
    assert t.ranges == [[-2.0, 3.0]]
    assert out == pytest.approx([0.5, 1.0, 0.0])  # (0.5 + 2) / 5; beyond the range, clipped
