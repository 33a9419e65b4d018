# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import copy
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import make_trainer, rollout
from trl import GRPOTrainer

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


# Through PCLGRPOTrainer: the segments laid out on real rollouts
class TestSegmentLayout:
    def test_marker_is_a_stop_only_when_teacher_forced(self, model_dir, tokenizer, tmp_path):
        trainer = make_trainer(model_dir, tokenizer, tmp_path)
        marker = trainer.segment_tokens.marker_id
        assert marker in trainer.eos_token_ids and marker in trainer.generation_config.eos_token_id
        assert marker in trainer.model.generation_config.eos_token_id  # saved with every checkpoint
        generated = make_trainer(model_dir, tokenizer, tmp_path, self_assessment_mode="generated")
        assert marker not in generated.eos_token_ids and marker not in generated.generation_config.eos_token_id

    def test_vllm_stop_token_ids(self, model_dir, tokenizer, tmp_path):
        trainer = make_trainer(model_dir, tokenizer, tmp_path)
        trainer.use_vllm = True
        trainer.vllm_generation = SimpleNamespace(generation_kwargs={"stop_token_ids": [5]})
        trainer._configure_stop_ids()
        assert trainer.vllm_generation.generation_kwargs["stop_token_ids"] == [5, trainer.segment_tokens.marker_id]

    def test_segments_carry_true_reward_and_stay_out_of_policy_loss(self, model_dir, tokenizer, tmp_path):
        seen = {}

        def reward(completions, **kwargs):
            # Mixed rewards, and a record of what each completion was scored
            values = [float(len(c) % 2) for c in completions]
            seen.update(zip(completions, values, strict=True))
            return values

        trainer = make_trainer(model_dir, tokenizer, tmp_path, reward=reward, self_assessment_prefix="s:")
        originals = None
        batch = next(iter(trainer.get_train_dataloader()))
        torch.manual_seed(0)
        plain = GRPOTrainer._generate_and_score_completions(trainer, batch)
        originals = [list(ids) for ids in trainer._pcl_completion_ids]
        pcl = {k: v.clone() if torch.is_tensor(v) else copy.copy(v) for k, v in plain.items()}
        trainer._append_segments(pcl)
        tokens = trainer.segment_tokens
        ends = {"marker": 0, "eos": 0}
        for i, ids in enumerate(originals):
            row = pcl["completion_ids"][i].tolist()
            assert torch.equal(pcl["completion_mask"][i, : len(ids)], plain["completion_mask"][i, : len(ids)])
            if ids[-1] not in (tokens.marker_id, *tokens.eos_ids):  # truncated: no segment, row unchanged
                assert row[: len(ids)] == ids
                assert pcl["self_assessment_target"][i] == -1 and not pcl["self_assessment_mask"][i].any()
                continue
            # The level comes from the reward function's own value for this completion, not from the trainer
            text = tokenizer.decode(ids, skip_special_tokens=True)
            level = round(seen[text] * 9)
            segment = tokens.assessment_ids(level)
            # Rows ending at EOS end at the marker instead: the score sits where the readout reads it
            assert row[: len(ids)] == ids[:-1] + [tokens.marker_id]
            span = slice(len(ids), len(ids) + len(segment))
            assert row[span] == segment
            assert pcl["tool_mask"][i, span].sum() == 0 and pcl["completion_mask"][i, span].all()
            assert pcl["tool_mask"][i, len(ids) - 1] == 1  # the stop is a policy token
            nll = pcl["self_assessment_mask"][i]
            stop_replaced = ids[-1] != tokens.marker_id
            assert nll[span].all() and nll.sum() == len(segment) + 1
            assert nll[len(ids) - 1]  # teach the stop: log p(MARKER) joins the segment NLL, whatever was sampled
            assert pcl["self_assessment_stop_index"][i] == len(ids) - 1
            assert pcl["self_assessment_stop_id"][i] == ids[-1]
            assert pcl["self_assessment_target"][i] == level
            ends["eos" if stop_replaced else "marker"] += 1
        assert ends["marker"] + ends["eos"] > 0
        assert pcl["num_items_in_batch"] == plain["num_items_in_batch"]  # the policy's token count is unchanged


def test_segment_of_an_eos_rollout_is_trained_where_the_readout_reads(model_dir, tokenizer, tmp_path):
    """For a rollout that ended at EOS, the trained score position sees `prompt + answer + MARKER`: the level
    distribution there is exactly what `pcl.readout.self_scores` reads for that answer."""
    from pcl.readout import level_distribution

    trainer = make_trainer(model_dir, tokenizer, tmp_path, temperature=0.8)
    trainer.model.eval()
    _, pcl = rollout(trainer)
    special = set(tokenizer.all_special_ids)
    rows = [  # rows that ended at EOS, whose answer text re-tokenises to the same ids (no sampled <unk>)
        r
        for r in (pcl["self_assessment_stop_id"] == trainer.segment_tokens.eos_id).nonzero().squeeze(1).tolist()
        if not special & set(trainer._pcl_completion_ids[r][:-1])
    ]
    assert rows
    prompts = tokenizer.batch_decode(pcl["prompt_ids"][rows], skip_special_tokens=True)
    answers = [tokenizer.decode(trainer._pcl_completion_ids[r], skip_special_tokens=True) for r in rows]
    read = level_distribution(trainer.model, tokenizer, prompts, answers)
    ids = torch.cat([pcl["prompt_ids"], pcl["completion_ids"]], dim=1)
    attention = torch.cat([pcl["prompt_mask"], pcl["completion_mask"]], dim=1).bool()
    level_ids = list(trainer.segment_tokens.level_ids)
    tokens = trainer.segment_tokens
    for k, r in enumerate(rows):
        pos = pcl["prompt_ids"].size(1) + pcl["self_assessment_score_index"][r]
        # The context the score is trained in (left padding aside) is the readout's `prompt + answer + MARKER`
        context = ids[r, :pos][attention[r, :pos]]
        readout_context = tokenizer(prompts[k] + answers[k])["input_ids"] + [tokens.marker_id, *tokens.prefix_ids]
        assert context.tolist() == readout_context
        with torch.no_grad():
            logits = trainer.model(input_ids=context[None]).logits[0, -1]
        trained = (logits[level_ids] / 0.8).softmax(-1)
        torch.testing.assert_close(torch.as_tensor(read[k], dtype=trained.dtype), trained, rtol=1e-4, atol=1e-5)
