# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import asyncio

import numpy as np
import pytest
import torch
import trl
from conftest import cpu_args
from datasets import Dataset
from trl import GRPOTrainer
from trl.trainer.utils import get_callable_name, is_async_callable

from pcl import PCLGRPOConfig, PCLGRPOTrainer
from pcl.validation import checked_reward_func


PROMPTS = [{"prompt": f"{a} + {b} ="} for a in range(10) for b in range(10)]


async def async_parity(completions, **kwargs):
    await asyncio.sleep(0)
    return [float(len(c) % 2) for c in completions]


class AsyncJudge:
    async def __call__(self, completions, **kwargs):
        await asyncio.sleep(0)
        return [1.0 if "1" in c else 0.0 for c in completions]


class LengthScore:
    def __call__(self, completions, **kwargs):
        return [min(len(c) / 8, 1.0) for c in completions]


def test_wrapper_keeps_what_trl_reads():
    for func in (async_parity, AsyncJudge(), LengthScore()):
        wrapped = checked_reward_func(func)
        assert is_async_callable(wrapped) == is_async_callable(func)
        assert get_callable_name(wrapped) == get_callable_name(func)


def test_wrapper_names_the_function_in_its_error():
    class Judge:
        async def __call__(self, completions, **kwargs):
            return ["x"]

    with pytest.raises(ValueError, match="'Judge' returned 'x' for sample 0"):
        asyncio.run(checked_reward_func(Judge())(completions=["a"]))


def test_wrapper_accepts_what_float_converts():
    """TRL turns rewards into a float tensor: bools, 0-dim tensors and numpy scalars are rewards there, and here."""
    values = [True, False, torch.tensor(0.5), np.float32(0.25), np.int64(1), 2, None]
    assert checked_reward_func(lambda **kw: values)(completions=["a"] * 7) is values
    tensor = torch.tensor([0.0, 1.0])  # a whole tensor, iterated as 0-dim tensors
    assert checked_reward_func(lambda **kw: tensor)(completions=["a", "b"]) is tensor


@pytest.mark.parametrize("bad", ["1.0", [1.0], float("inf"), torch.tensor(-float("inf")), {"r": 1}])
def test_wrapper_refuses_non_numbers_and_infinities(bad):
    def judge(completions, **kwargs):
        return [0.5, bad]

    with pytest.raises(ValueError, match="'judge' returned .* for sample 1: rewards must be finite numbers"):
        checked_reward_func(judge)(completions=["a", "b"])


def test_bool_and_tensor_rewards_train_with_the_segment(model_dir, tokenizer, tmp_path):
    def flags(completions, **kwargs):
        return [len(c) % 2 == 0 for c in completions]

    def scalars(completions, **kwargs):
        return [torch.tensor(float(len(c) % 3 == 0)) for c in completions]

    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1, logging_steps=1,
    ))  # fmt: skip
    trainer = PCLGRPOTrainer(
        model_dir, [flags, scalars], args=args, train_dataset=Dataset.from_list(PROMPTS), processing_class=tokenizer
    )
    assert trainer.args.self_assessment_weight > 0
    trainer.train()
    assert {"rewards/flags/mean", "rewards/scalars/mean"} <= set(trainer.state.log_history[0])


@pytest.mark.parametrize("cls", [GRPOTrainer, PCLGRPOTrainer])
def test_async_and_class_rewards_log_like_trl(model_dir, tokenizer, tmp_path, cls):
    config_cls = PCLGRPOConfig if cls is PCLGRPOTrainer else trl.GRPOConfig
    args = config_cls(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1, logging_steps=1,
    ))  # fmt: skip
    trainer = cls(
        model_dir, [async_parity, AsyncJudge(), LengthScore()], args=args, train_dataset=Dataset.from_list(PROMPTS),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    keys = {k for k in trainer.state.log_history[0] if k.startswith("rewards/")}
    assert keys == {f"rewards/{n}/{s}" for n in ("async_parity", "AsyncJudge", "LengthScore") for s in ("mean", "std")}


def test_prompt_check_only_looks_for_the_marker():
    """Every prompt TRL accepts passes: empty strings, tool-call messages with `content: None`, multimodal parts."""
    from pcl.validation import check_prompts

    marker = "<|post_completion|>"
    accepted = [
        "",
        [{"role": "user", "content": "1 + 1 ="}, {"role": "assistant", "content": None, "tool_calls": [{}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}],
    ]
    check_prompts(Dataset.from_list([{"prompt": p} for p in accepted[:1]]), marker, "train")
    for prompt in accepted[1:]:
        check_prompts(Dataset.from_dict({"prompt": [prompt]}), marker, "train")
    hidden = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"x {marker}"}]}],
        [{"role": "assistant", "content": None}, {"role": "user", "content": marker}],
    ]
    for prompt in hidden:
        with pytest.raises(ValueError, match="Row 0 of the train dataset already contains the marker"):
            check_prompts(Dataset.from_dict({"prompt": [prompt]}), marker, "train")


def test_prompt_column_is_optional_with_an_environment():
    from pcl.validation import check_prompts

    data = Dataset.from_list([{"task_id": 0}])
    check_prompts(data, "<m>", "train", environment=True)
    with pytest.raises(ValueError, match="has no 'prompt' column"):
        check_prompts(data, "<m>", "train")
