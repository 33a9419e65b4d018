# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Bad data and bad settings fail early, with an error that names the problem.

Complements the guard-rail tests of test_sft_trainer.py, test_grpo_trainer.py, test_reward_targets.py, test_segment.py
and test_marker.py (marker in the data, NaN/+inf/out-of-range rewards in SFT rows, an empty completion, missing SFT
columns, bad levels, weights and reward ranges on SegmentFormat): what is here is not tested there.
"""

import math

import pytest
from conftest import cpu_args
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from pcl import PCLGRPOConfig, PCLGRPOTrainer, PCLSFTConfig, PCLSFTTrainer
from pcl.tiny import build_char_tokenizer


GOOD_ROW = {"prompt": "1 + 1 =", "completion": " 2", "reward": 1.0}
PROMPTS = [{"prompt": f"{a} + 1 ="} for a in range(8)]


def sft_trainer(tiny_model, tokenizer, tmp_path, rows, eval_rows=None, **config):
    args = PCLSFTConfig(output_dir=str(tmp_path), **cpu_args(**config))
    eval_dataset = None
    if isinstance(eval_rows, dict):
        eval_dataset = {k: Dataset.from_list(v) for k, v in eval_rows.items()}
    elif eval_rows is not None:
        eval_dataset = Dataset.from_list(eval_rows)
    return PCLSFTTrainer(
        model=tiny_model, args=args, train_dataset=Dataset.from_list(rows), eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )  # fmt: skip


def constant_reward(completions, **kwargs):
    return [1.0] * len(completions)


def grpo_trainer(model_dir, tmp_path, rows=PROMPTS, reward=constant_reward, tokenizer=None, eval_rows=None, **config):
    config = {
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 8,
        "max_steps": 1,
        "log_completions": False,
        **config,
    }
    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(**config))
    return PCLGRPOTrainer(
        model=model_dir, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
        eval_dataset=None if eval_rows is None else Dataset.from_list(eval_rows),
        processing_class=tokenizer or build_char_tokenizer(),
    )  # fmt: skip


def merging_tokenizer():
    """A tokenizer where the prefix ':' merges with the score '7' into one token in context."""
    tok = build_char_tokenizer()
    tok.add_tokens([":7"])
    return tok


# ---- PCL-SFT rows --------------------------------------------------------------------------------------------------


class TestSFTRows:
    @pytest.mark.parametrize(
        "row, match",
        [
            (
                {"prompt": "1 =", "completion": 5, "reward": 1.0},
                "completion must be a non-empty string or a list of chat messages",
            ),
            ({"prompt": "1 =", "completion": " 1", "reward": -math.inf}, "Reward -inf is infinite"),
            ({"prompt": "1 =", "completion": " 1", "reward": "high"}, "Row 0 of the train dataset: .*'high'"),
            (
                {"prompt": "1 =", "completion": " 1", "reward": None, "self_assessment_only": True},
                "flagged `self_assessment_only`: such rows need a string completion and a reward",
            ),
        ],
    )
    def test_bad_row(self, tiny_model, tokenizer, tmp_path, row, match):
        with pytest.raises(ValueError, match=match):
            sft_trainer(tiny_model, tokenizer, tmp_path, [row])

    def test_bad_row_is_located(self, tiny_model, tokenizer, tmp_path):
        rows = [GOOD_ROW] * 3 + [{**GOOD_ROW, "reward": math.inf}]
        with pytest.raises(ValueError, match="Row 3 of the train dataset: Reward inf is infinite"):
            sft_trainer(tiny_model, tokenizer, tmp_path, rows)

    def test_eval_dataset_is_checked_and_named(self, tiny_model, tokenizer, tmp_path):
        # A format SFTTrainer cannot read either is left to it: the same error as the stock trainer's
        with pytest.raises(KeyError, match="completion"):
            SFTTrainer(
                model=tiny_model, args=SFTConfig(output_dir=str(tmp_path), **cpu_args()),
                train_dataset=Dataset.from_list([GOOD_ROW]), eval_dataset=Dataset.from_list([{"prompt": "1 ="}]),
                processing_class=tokenizer,
            )  # fmt: skip
        with pytest.raises(KeyError, match="completion"):
            sft_trainer(tiny_model, tokenizer, tmp_path, [GOOD_ROW], eval_rows=[{"prompt": "1 ="}])
        bad = {"hard": [{**GOOD_ROW, "reward": math.nan}]}
        with pytest.raises(ValueError, match=r"Row 0 of the eval \(hard\) dataset has a NaN reward"):
            sft_trainer(tiny_model, tokenizer, tmp_path, [GOOD_ROW], eval_rows=bad)

    def test_prompt_wrong_type(self, tiny_model, tokenizer, tmp_path):
        with pytest.raises(ValueError, match="prompt"):
            sft_trainer(tiny_model, tokenizer, tmp_path, [{"prompt": 5, "completion": " 1", "reward": 1.0}])

    def test_prompt_and_completion_formats_differ(self, tiny_model, tokenizer, tmp_path):
        row = {"prompt": "1 =", "completion": [{"role": "assistant", "content": " 1"}], "reward": 1.0}
        with pytest.raises(ValueError, match="prompt"):
            sft_trainer(tiny_model, tokenizer, tmp_path, [row])


# ---- Settings the tokenizer cannot honour (refused by both trainers, before any training) --------------------------


class TestSettings:
    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(self_assessment_reward_range=[1.0, 0.0]), "hi > lo"),
            (dict(self_assessment_weight=math.nan), "`self_assessment_weight` must be >= 0, got nan"),
            (dict(self_assessment_levels="10"), "must be an integer >= 2"),
        ],
    )
    @pytest.mark.parametrize("config", [PCLSFTConfig, PCLGRPOConfig])
    def test_config_refuses(self, config, kwargs, match):
        with pytest.raises(ValueError, match=match):
            config(output_dir="x", bf16=False, **kwargs)

    def test_levels_must_be_single_tokens(self, tiny_model, tokenizer, model_dir, tmp_path):
        # The config cannot know the tokenizer: 11 levels pass the config, and each trainer refuses them
        match = r"Score level '10' is 2 tokens .* `self_assessment_levels` <= 10"
        with pytest.raises(ValueError, match=match):
            sft_trainer(tiny_model, tokenizer, tmp_path, [GOOD_ROW], self_assessment_levels=11)
        with pytest.raises(ValueError, match=match):
            grpo_trainer(model_dir, tmp_path, self_assessment_levels=11)

    def test_prefix_that_tokenises_differently_in_context(self, tiny_model, model_dir, tmp_path):
        match = r"The assessment ':7' tokenises differently after the marker .* Change `self_assessment_prefix`"
        with pytest.raises(ValueError, match=match):
            sft_trainer(tiny_model, merging_tokenizer(), tmp_path, [GOOD_ROW], self_assessment_prefix=":")
        with pytest.raises(ValueError, match=match):
            grpo_trainer(model_dir, tmp_path, tokenizer=merging_tokenizer(), self_assessment_prefix=":")

    def test_marker_equal_to_eos(self, tiny_model, tokenizer, tmp_path):
        with pytest.raises(ValueError, match="marker"):
            sft_trainer(tiny_model, tokenizer, tmp_path, [GOOD_ROW], self_assessment_marker="<eos>")

    def test_marker_equal_to_pad(self, tiny_model, tokenizer, tmp_path):
        with pytest.raises(ValueError, match="marker"):
            sft_trainer(tiny_model, tokenizer, tmp_path, [GOOD_ROW], self_assessment_marker="<pad>")


# ---- PCL-GRPO data and reward functions ----------------------------------------------------------------------------


class TestGRPOInputs:
    def test_missing_prompt_column(self, model_dir, tmp_path):
        with pytest.raises(ValueError, match=r"The train dataset has no 'prompt' column \(columns: \['question'\]\)"):
            grpo_trainer(model_dir, tmp_path, rows=[{"question": "1 + 1 ="}] * 8)
        with pytest.raises(ValueError, match=r"The eval dataset has no 'prompt' column"):
            grpo_trainer(model_dir, tmp_path, eval_rows=[{"question": "1 + 1 ="}] * 8)

    def test_reward_function_error_propagates(self, model_dir, tmp_path):
        def verifier(completions, **kwargs):
            raise RuntimeError("verifier crashed: no answer tag")

        trainer = grpo_trainer(model_dir, tmp_path, reward=verifier)
        with pytest.raises(RuntimeError, match="verifier crashed: no answer tag"):
            trainer.train()

    def test_reward_function_wrong_length(self, model_dir, tmp_path):
        # Refused by TRL itself (GRPOTrainer._calculate_rewards), before PCL reads the rewards
        def short(completions, **kwargs):
            return [1.0] * (len(completions) - 1)

        trainer = grpo_trainer(model_dir, tmp_path, reward=short)
        with pytest.raises(ValueError, match="The reward function 'short' returned 3 rewards, but 4 were expected"):
            trainer.train()

    @pytest.mark.parametrize("value", [math.inf, -math.inf])
    def test_infinite_reward(self, model_dir, tmp_path, value):
        trainer = grpo_trainer(model_dir, tmp_path, reward=lambda completions, **kw: [value] * len(completions))
        with pytest.raises(ValueError, match=f"returned {value} for sample 0: rewards must be finite numbers"):
            trainer.train()

    def test_non_numeric_reward(self, model_dir, tmp_path):
        trainer = grpo_trainer(model_dir, tmp_path, reward=lambda completions, **kw: ["good"] * len(completions))
        with pytest.raises(ValueError, match="returned 'good' for sample 0"):
            trainer.train()

    # Prompt shapes are TRL's to check: PCL only looks for the marker in them (tests/test_validation.py)
