# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import asyncio

import pytest
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
