# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import math

import pytest
import torch

from pcl.grpo_layout import append_segments, group_advantages
from pcl.segment import SegmentFormat, SegmentTokens


def trl_std(x):
    """Sample std over the non-NaN values, as TRL's `nanstd` (Bessel-corrected)."""
    x = [v for v in x if not math.isnan(v)]
    mean = sum(x) / len(x)
    return math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1))


VALUES = [1.0, 0.0, 0.5, math.nan, 0.9, 0.1, 0.3, 0.7]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_consistency_advantages_match_trls_scaling(scale):
    adv = group_advantages(torch.tensor(VALUES), 4, scale)
    groups = [VALUES[:4], VALUES[4:]]
    expected = []
    for g in groups:
        mean = sum(v for v in g if not math.isnan(v)) / sum(not math.isnan(v) for v in g)
        std = {"group": trl_std(g), "batch": trl_std(VALUES), "none": None}[scale]
        expected += [0.0 if math.isnan(v) else (v - mean) / (1 if std is None else std + 1e-4) for v in g]
    torch.testing.assert_close(adv, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_group_of_one():
    assert torch.equal(group_advantages(torch.tensor([0.3, 0.9]), 1, "group"), torch.zeros(2))


def test_token_type_ids_are_widened_with_the_completion():
    """Vision-language batches carry (mm_)token_type_ids over prompt + completion: they must grow with the segment,
    text type 0, or the forward pass sees mismatched widths."""
    tokens = SegmentTokens(marker_id=98, prefix_ids=(), level_ids=tuple(range(20, 30)), eos_id=1, eos_ids=(1,))
    ids = [[5, 6, 7, 1], [5, 6, 7, 8]]
    types = torch.tensor([[0, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]])
    output = {
        "prompt_ids": torch.ones(2, 3, dtype=torch.long), "completion_ids": torch.tensor(ids),
        "completion_mask": torch.ones(2, 4, dtype=torch.long), "token_type_ids": types.clone(),
        "mm_token_type_ids": types.clone(),
    }  # fmt: skip
    assert append_segments(output, ids, [1.0, 0.5], SegmentFormat(), tokens, 0) == 1
    width = output["prompt_ids"].size(1) + output["completion_ids"].size(1)
    assert output["completion_ids"].size(1) > 4
    for key in ("token_type_ids", "mm_token_type_ids"):
        assert output[key].shape == (2, width)
        assert torch.equal(output[key][:, :7], types) and not output[key][:, 7:].any()
