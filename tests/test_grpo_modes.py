# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The generated and both modes through PCLGRPOTrainer: the consistency reward, its advantages on the written
segment, and its grouping in evaluation (the functions themselves: test_grpo_layout.py)."""

import math

import pytest
import torch
from conftest import PROMPTS, cpu_args, make_trainer, parity_reward
from datasets import Dataset

from pcl import PCLGRPOConfig, PCLGRPOTrainer


class TestGeneratedMode:
    def test_consistency_reward_is_brier_and_hides_segment(self, model_dir, tokenizer, tmp_path):
        seen = []

        def exact(completions, answer, **kwargs):
            seen.extend(completions)
            return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]

        trainer = make_trainer(model_dir, tokenizer, tmp_path, reward=exact, self_assessment_mode="generated")
        tokens = trainer.segment_tokens

        def completion(answer, level):
            ids = tokenizer.encode(answer, add_special_tokens=False) + [tokens.marker_id]
            return ids + ([] if level is None else tokens.assessment_ids(level))

        cases = [  # (written answer, gold, written level) -> expected consistency
            (" 7", "7", 9, 1.0),  # right, claims right
            (" 8", "7", 0, 1.0),  # wrong, honestly flags itself wrong: the maximum, not 0/0
            (" 8", "7", 9, 0.0),  # wrong, over-claims
            (" 7", "7", 3, 1 - (1 - 3 / 9) ** 2),
        ]
        ids = [completion(a, lvl) for a, _, lvl, _ in cases] + [completion(" 7", None)]
        inputs = [{"prompt": "3 + 4 =", "answer": gold} for _, gold, _, _ in cases] + [{"answer": "7"}]
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        trainer._calculate_rewards(inputs, ["3 + 4 ="] * len(ids), texts, ids)
        assert seen == [" 7", " 8", " 8", " 7", " 7"]  # the task reward never sees the written score
        expected = [c for *_, c in cases] + [0.0]  # no assessment written: consistency 0
        torch.testing.assert_close(trainer._pcl_consistency, torch.tensor(expected))

    @pytest.mark.parametrize("mode", ["generated", "both"])
    def test_trains(self, model_dir, tokenizer, tmp_path, mode):
        """In training, the answer keeps GRPO's task advantage and the written segment gets the consistency reward's
        advantage, normalised within each prompt's group of `num_generations` rows like TRL's."""
        marker = tokenizer.convert_tokens_to_ids("<|post_completion|>")
        trainer = make_trainer(
            model_dir, tokenizer, tmp_path, self_assessment_mode=mode, max_steps=2, logging_steps=1,
            generation_kwargs={"sequence_bias": [[[marker], 3.0]]},  # an untrained model rarely writes the marker
        )  # fmt: skip
        batches = []
        calculate, original = trainer._calculate_rewards, trainer._written_segments

        def varied_consistency(*args):
            # An untrained model writes no valid score (consistency 0 everywhere): give the rows distinct values
            rewards = calculate(*args)
            trainer._pcl_consistency = torch.tensor([((i * 7) % 5) / 4 for i in range(len(rewards))])
            return rewards

        def record(output):
            before = output["advantages"].clone()
            original(output)
            batches.append((before, output, trainer._pcl_consistency.tolist(), list(trainer._pcl_completion_ids)))

        trainer._calculate_rewards, trainer._written_segments = varied_consistency, record
        trainer.train()
        segments = 0
        for before, output, consistency, answers in batches:
            for i, (ids, value) in enumerate(zip(answers, consistency, strict=True)):
                group = [v for v in consistency[i // 4 * 4 : i // 4 * 4 + 4] if not math.isnan(v)]
                mean = sum(group) / len(group)
                std = math.sqrt(sum((v - mean) ** 2 for v in group) / (len(group) - 1))
                expected = 0.0 if math.isnan(value) else (value - mean) / (std + 1e-4)
                mask = output["completion_mask"][i].bool()
                advantages = output["advantages"][i]
                torch.testing.assert_close(advantages[: len(ids)][mask[: len(ids)]], before[i].expand(len(ids))[
                    mask[: len(ids)]
                ])  # fmt: skip
                segment = advantages[len(ids) :][mask[len(ids) :]]
                segments += len(segment) > 0
                torch.testing.assert_close(segment, torch.full_like(segment, expected), rtol=1e-4, atol=1e-5)
        assert segments > 0
        logs = trainer.state.log_history[0]
        assert "self_assessment/consistency" in logs and "self_assessment/frac_with_segment" in logs


@pytest.mark.parametrize("mode", ["generated", "both"])
def test_evaluation_groups_by_num_generations_eval(model_dir, tokenizer, tmp_path, mode, monkeypatch):
    """Generated / both mode: evaluation normalises the consistency reward within groups of `num_generations_eval`
    rows (one prompt each), not `num_generations`, which would mix prompts."""
    import pcl.grpo_trainer as grpo_trainer

    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=8, num_generations=4, num_generations_eval=2, per_device_eval_batch_size=8,
        max_completion_length=8, self_assessment_mode=mode, log_completions=False,
    ))  # fmt: skip
    trainer = PCLGRPOTrainer(
        model_dir, parity_reward, args=args, train_dataset=Dataset.from_list(PROMPTS),
        eval_dataset=Dataset.from_list(PROMPTS[:4]), processing_class=tokenizer,
    )  # fmt: skip
    prompts, normalised = [], []
    calculate = trainer._calculate_rewards

    def known_consistency(inputs, *args):
        # Per prompt k, its two rows score 0.1 k and 0.1 k + 0.01: values known before the rollouts
        rewards = calculate(inputs, *args)
        prompts.extend(x["prompt"] for x in inputs)
        values = [0.1 * int(x["prompt"][0]) + 0.01 * (i % 2) for i, x in enumerate(inputs)]
        trainer._pcl_consistency = torch.tensor(values)
        return rewards

    def spy(values, num_generations, scale_rewards):
        normalised.append(group_advantages(values, num_generations, scale_rewards))
        return normalised[-1]

    group_advantages = grpo_trainer.group_advantages
    trainer._calculate_rewards = known_consistency
    monkeypatch.setattr(grpo_trainer, "group_advantages", spy)
    metrics = trainer.evaluate()
    assert "eval_self_assessment/consistency" in metrics
    assert len(prompts) == 8 and all(prompts[2 * k] == prompts[2 * k + 1] for k in range(4))
    assert len(set(prompts)) == 4
    # Two rows per group, 0.01 apart: minus the group mean (+-0.005), over the group's sample std 0.01 / sqrt(2)
    expected = torch.tensor([-0.005, 0.005] * 4) / (0.01 / math.sqrt(2) + 1e-4)
    torch.testing.assert_close(normalised[0], expected, rtol=1e-4, atol=1e-4)
