# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The segment loss's arithmetic on a hand-built batch; its reads from a real forward are checked through the trainer
(tests/test_grpo_trainer.py: the level logits are the model's own, and weight 0 gives GRPO's gradients)."""

import pytest
import torch

from pcl import PCLGRPOConfig
from pcl.grpo_layout import append_segments
from pcl.segment import SegmentFormat, SegmentTokens
from pcl.segment_loss import SegmentLoss, check_score_trains, metric_sums


# Two EOS ids, so that a replaced stop must find its own EOS's column among the stop ids
TOKENS = SegmentTokens(marker_id=9, prefix_ids=(), level_ids=tuple(range(20, 30)), eos_id=1, eos_ids=(1, 2))


def batch():
    """Rows ending at the marker, at the second EOS id, and truncated, laid out as the trainer lays them."""
    ids = [[3, 4, 9], [3, 2], [3, 4, 4, 4]]
    output = {
        "prompt_ids": torch.ones(3, 2, dtype=torch.long),
        "completion_ids": torch.tensor([[3, 4, 9, 0], [3, 2, 0, 0], [3, 4, 4, 4]]),
        "completion_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]),
    }
    assert append_segments(output, ids, [1.0, 0.0, 0.5], SegmentFormat(), TOKENS, 0) == 2
    return output


def args(**kwargs):
    return PCLGRPOConfig(output_dir="x", bf16=False, **kwargs)


def test_teacher_forced_reads_policy_log_probs_and_nll():
    inputs = batch()
    loss = SegmentLoss(None, TOKENS, temperature=1.0)
    logps = torch.randn(3, 5, requires_grad=True)
    stop = torch.randn(2, 3)  # the stop ids' logits (marker, EOS ids) at rows 0 and 1's stops
    with loss.armed(inputs, args(self_assessment_backbone_grad=0.5)):
        rows, positions, ids, grad = loss.reads["stop"]
        assert rows.tolist() == [0, 1] and positions.tolist() == [2 + 2, 2 + 1] and ids.tolist() == [9, 1, 2] and grad
        rows, positions, ids, grad = loss.reads["level"]
        assert rows.tolist() == [0, 1] and positions.tolist() == [2 + 3, 2 + 2] and not grad
        # The hidden states predicting the segment after each stop (one position before each token)
        seg_rows, seg_positions, factor = loss.segment_rows
        assert seg_rows.tolist() == [0, 0, 1, 1] and seg_positions.tolist() == [4, 5, 3, 4] and factor == 0.5
        loss.read_logits = {"stop": stop}  # what the backbone hook reads during the forward
        policy = loss.policy_logps(logps)
    expected = logps.detach().clone()
    expected[0, 3:5] = expected[1, 2:4] = 0.0  # the segment after the stop: not the policy's
    expected[1, 1] += stop[1, 2] - stop[1, 0]  # log p(EOS) where EOS id 2 was sampled and replaced by the marker
    torch.testing.assert_close(policy.detach(), expected)
    assert loss.reads == {} and loss.segment_rows is None and loss.policy_logps(logps) is logps  # disarmed

    nll_sum, n_items, level_logp = loss.nll(inputs, args())
    segment = logps[0, 3:5].sum() + logps[1, 2:4].sum()
    stop_share = (stop[:, 0] - stop.logsumexp(-1)).sum()  # log p(MARKER) / (p(MARKER) + p(EOS ids)) at each stop
    torch.testing.assert_close(nll_sum, -(segment + stop_share))
    assert n_items == 6 and level_logp is None
    nll_sum.backward()
    assert logps.grad[:, :1].eq(0).all() and logps.grad[2].eq(0).all()  # answers and unsegmented rows: no NLL


def test_a_failing_forward_disarms():
    loss = SegmentLoss(None, TOKENS, temperature=1.0)
    with pytest.raises(RuntimeError), loss.armed(batch(), args()):
        raise RuntimeError("forward failed")
    logps = torch.randn(3, 5)
    assert loss.reads == {} and loss.segment_rows is None and loss.policy_logps(logps) is logps


def test_a_failing_forward_leaves_nothing_to_the_next():
    """A forward that raises after the backbone hook read its rows (e.g. out of memory in the LM head, which
    `auto_find_batch_size` catches and retries) must not hand its stop logits or log-probs to the next micro-batch."""
    loss = SegmentLoss(None, TOKENS, temperature=1.0)
    with pytest.raises(RuntimeError), loss.armed(batch(), args()):
        loss.read_logits = {"stop": torch.randn(2, 3), "level": torch.randn(2, 10)}  # read by the hook
        loss.policy_logps(torch.randn(3, 5, requires_grad=True))
        raise RuntimeError("out of memory")
    # The next batch was truncated everywhere: no stop, no segment, so no NLL
    truncated = {
        "prompt_ids": torch.ones(2, 2, dtype=torch.long),
        "completion_ids": torch.tensor([[3, 4, 4], [3, 3, 3]]),
        "completion_mask": torch.ones(2, 3, dtype=torch.long),
    }
    assert append_segments(truncated, [[3, 4, 4], [3, 3, 3]], [1.0, 0.0], SegmentFormat(), TOKENS, 0) == 0
    logps = torch.randn(2, 3)
    with loss.armed(truncated, args()):
        assert "stop" not in loss.reads and loss.logps is None
        loss.read_logits["level"] = torch.zeros(0, 10)  # what the hook reads for no scored row
        torch.testing.assert_close(loss.policy_logps(logps), logps)
    nll_sum, n_items, _ = loss.nll(truncated, args())
    assert nll_sum.item() == 0.0 and n_items == 0


def test_both_mode_nll_is_the_levels_cross_entropy():
    inputs = {
        "prompt_ids": torch.ones(3, 2, dtype=torch.long),
        "self_assessment_score_index": torch.tensor([4, -1, 2]),
        "self_assessment_target": torch.tensor([7, -1, 2]),
    }
    loss = SegmentLoss(None, TOKENS, temperature=1.0)
    with loss.armed(inputs, args(self_assessment_mode="both")):
        assert loss.reads["level"][3] and "stop" not in loss.reads  # the level read trains in "both"
    loss.read_logits = {"level": torch.randn(2, 10)}
    level_logits = loss.read_logits["level"]
    nll_sum, n_items, level_logp = loss.nll(inputs, args(self_assessment_mode="both"))
    expected = -(level_logits.log_softmax(-1)[0, 7] + level_logits.log_softmax(-1)[1, 2])
    torch.testing.assert_close(nll_sum, expected)
    assert n_items == 2 and loss.read_logits == {}
    loss.read_logits = {"level": level_logits}
    assert loss.nll(inputs, args(self_assessment_mode="generated"))[:2] == (None, None)  # no NLL when generated


def test_metric_sums():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    target = torch.tensor([0, -1, 2, 1])  # row 1 has no score: the level rows are rows 0, 2 and 3
    stats = metric_sums(torch.tensor(4.0), torch.tensor(2), probs.log(), target, torch.device("cpu"))
    brier = (0.25 - 0.0) ** 2 + (0.1 * 0 + 0.2 * 0.5 + 0.7 * 1 - 1.0) ** 2 + (0.3 * 0.5 + 0.1 * 1 - 0.5) ** 2
    # Rows 0 and 2 have their target as argmax (row 0 by the first of a tie), row 3 does not
    assert [s.item() for s in stats] == pytest.approx([4.0, 2.0, brier, 2.0, 3.0])
    assert [s.item() for s in metric_sums(None, None, None, target, torch.device("cpu"))] == [0.0] * 5


def test_check_score_trains(tiny_model):
    level_ids = SegmentTokens(99, (), tuple(range(20, 30)), 1, (1,))
    check_score_trains(tiny_model, level_ids, args())
    tiny_model.get_output_embeddings().weight.requires_grad_(False)
    with pytest.raises(ValueError, match="self-score would not train.*self_assessment_backbone_grad=1.0"):
        check_score_trains(tiny_model, level_ids, args())
    # Only a teacher-forced segment at a positive weight and no body gradient relies on the LM head's rows alone
    for kwargs in ({"self_assessment_backbone_grad": 1.0}, {"self_assessment_weight": 0.0}):
        check_score_trains(tiny_model, level_ids, args(**kwargs))
    check_score_trains(tiny_model, level_ids, args(self_assessment_mode="generated"))
