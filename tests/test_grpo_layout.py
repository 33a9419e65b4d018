# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import math

import pytest
import torch

from pcl.grpo_layout import append_segments, consistency_rewards, group_advantages, split_at_marker, written_segments
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


def test_generated_rewards_see_the_answer_only(tokenizer):
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in ("12|34", "56")]
    marker = ids[0][2]
    texts, answers, segments = split_at_marker(["12|34", "56"], ids, marker, tokenizer)
    assert texts == ["12|", "56"] and answers == [ids[0][:3], ids[1]] and segments == [ids[0][3:], None]
    messages = [[{"role": "assistant", "content": "12|34"}], [{"role": "assistant", "content": "56"}]]
    texts, _, _ = split_at_marker(messages, ids, marker, tokenizer)
    assert texts == [[{"role": "assistant", "content": "12|"}], [{"role": "assistant", "content": "56"}]]


def test_consistency_rewards():
    fmt = SegmentFormat()  # ten levels: level 9 is 1.0
    rewards = consistency_rewards([1.0, 0.0, 1.0, None], [9, 9, None, 3], fmt)
    assert rewards[:3] == [1.0, 0.0, 0.0] and math.isnan(rewards[3])


def test_written_segments_take_the_consistency_advantage():
    tokens = SegmentTokens(marker_id=98, prefix_ids=(7,), level_ids=tuple(range(20, 30)), eos_id=1, eos_ids=(1,))
    output = {
        "completion_ids": torch.zeros(3, 6, dtype=torch.long),
        "completion_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]),
        "advantages": torch.tensor([0.5, -1.0, 2.0]),
    }
    answers, segments = [[5, 98], [5, 6], [5, 98]], [[7, 25, 1], None, [7, 3, 3, 3]]
    n = written_segments(output, answers, segments, [5, None, None], [1.0, 0.0, 0.5], torch.tensor([3.0, 4.0, -2.0]),
                         SegmentFormat(), tokens)  # fmt: skip
    assert n == 2
    assert output["advantages"].tolist() == [
        [0.5, 0.5, 3.0, 3.0, 3.0, 0.0],  # answer: the task's advantage; segment: the consistency's; padding: 0
        [-1.0, -1.0, 0.0, 0.0, 0.0, 0.0],  # no segment written
        [2.0, 2.0, -2.0, -2.0, -2.0, -2.0],
    ]
    # A score position and target only where a level was read: after `answer MARKER prefix`
    assert output["self_assessment_score_index"].tolist() == [3, -1, -1]
    assert output["self_assessment_target"].tolist() == [9, -1, -1]
