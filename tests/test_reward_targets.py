# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import math
import warnings

import pytest
import torch
from conftest import PROMPTS, cpu_args, grpo_args, make_trainer, parity_reward, reward_model, rollout
from datasets import Dataset
from trl import GRPOTrainer

from pcl import PCLGRPOConfig, PCLGRPOTrainer
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


# Through PCLGRPOTrainer: reward functions of any scale, declared and running ranges
def test_out_of_range_reward_is_refused_with_a_declared_range(model_dir, tokenizer, tmp_path):
    reward = lambda completions, **kw: [3.0] * len(completions)  # noqa: E731
    trainer = make_trainer(model_dir, tokenizer, tmp_path, reward=reward, self_assessment_reward_range=[0.0, 1.0])
    with pytest.raises(ValueError, match="outside the declared `self_assessment_reward_range`"):
        trainer.train()


@pytest.mark.parametrize("cls", [GRPOTrainer, PCLGRPOTrainer])
def test_rewards_of_any_scale_train(model_dir, tokenizer, tmp_path, cls):
    """Reward models with negative scores and summed rewards outside [0, 1] train like with the stock trainer; PCL's
    running range of a callable is the span of what it returned, logged, and its targets stay in [0, 1]."""
    seen = []

    def length_reward(completions, **kwargs):
        seen.extend(len(c) - 4.0 for c in completions)
        return [len(c) - 4.0 for c in completions]

    config_cls = PCLGRPOConfig if cls is PCLGRPOTrainer else __import__("trl").GRPOConfig
    args = config_cls(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=8, num_generations=4, max_completion_length=8, max_steps=2, logging_steps=1,
        reward_weights=[1.0, 2.0, 0.5],
    ))  # fmt: skip
    trainer = cls(
        model_dir, [reward_model(tokenizer), parity_reward, length_reward], args=args,
        train_dataset=Dataset.from_list(PROMPTS), processing_class=tokenizer,
        reward_processing_classes=[tokenizer, None, None],
    )  # fmt: skip
    trainer.train()
    logs = trainer.state.log_history
    assert math.isfinite(logs[-1]["train_loss"])
    assert [log["rewards/length_reward/mean"] for log in logs[:2]] == pytest.approx(
        [sum(seen[:8]) / 8, sum(seen[8:]) / 8], abs=1e-4
    )
    if cls is PCLGRPOTrainer:
        span = [min(0.0, *seen), max(1.0, *seen)]
        assert span != [0.0, 1.0] and trainer._pcl_reward_targets.ranges[2] == span
        assert [
            logs[1]["self_assessment/range_lo/length_reward"],
            logs[1]["self_assessment/range_hi/length_reward"],
        ] == (span)
        assert all(0.0 <= t <= 1.0 for t in trainer._pcl_targets)


def test_auto_targets_computed_from_the_reward_functions(model_dir, tokenizer, tmp_path):
    """The target of each row, from the reward functions' own values: sigmoid of a reward model's score, a callable
    in [0, 1] as it is, one outside by its running range, the weighted sum normalised by the weights' bounds."""
    rm = reward_model(tokenizer)
    scores, lengths = [], []
    rm.register_forward_hook(lambda m, a, out: scores.append(out.logits[:, 0].detach().clone()))

    def length(completions, **kwargs):
        lengths.extend(len(c) - 4.0 for c in completions)
        return [len(c) - 4.0 for c in completions]

    weights = [1.0, 2.0, 0.5]
    args = grpo_args(tmp_path, max_completion_length=8, reward_weights=weights)
    trainer = PCLGRPOTrainer(
        model_dir, [rm, parity_reward, length], args=args, train_dataset=Dataset.from_list(PROMPTS),
        processing_class=tokenizer, reward_processing_classes=[tokenizer, None, None],
    )  # fmt: skip
    trainer.model.train()
    _, pcl = rollout(trainer, end_at_eos=False)
    assert (pcl["self_assessment_target"] >= 0).any()  # the level check below runs on at least one row
    texts = tokenizer.batch_decode(trainer._pcl_completion_ids, skip_special_tokens=True)
    score = torch.cat(scores)
    assert (score < 0).any() and (score > 1).any()  # the reward model's scores leave [0, 1] on both sides
    lo, hi = min(0.0, *lengths), max(1.0, *lengths)
    for i, text in enumerate(texts):
        mapped = [torch.sigmoid(score[i]).item(), float(len(text) % 2), (lengths[i] - lo) / (hi - lo)]
        expected = sum(w * m for w, m in zip(weights, mapped, strict=True)) / sum(weights)
        assert trainer._pcl_targets[i] == pytest.approx(expected, abs=1e-6)
        if pcl["self_assessment_target"][i] >= 0:
            assert pcl["self_assessment_target"][i] == round(expected * 9)


@pytest.mark.parametrize("cls", [GRPOTrainer, PCLGRPOTrainer])
def test_weight_zero_accepts_what_the_parent_accepts(model_dir, tokenizer, tmp_path, cls):
    """With weight 0 PCL adds no reward checks: booleans and rewards outside a declared range train as in TRL."""
    import trl

    def flags(completions, **kwargs):
        return [len(c) % 2 == 0 for c in completions]  # bools, as TRL accepts them

    def big(completions, **kwargs):
        return [5.0 * len(c) for c in completions]

    extra = dict(self_assessment_weight=0.0, self_assessment_reward_range=[0.0, 1.0]) if cls is PCLGRPOTrainer else {}
    config_cls = PCLGRPOConfig if cls is PCLGRPOTrainer else trl.GRPOConfig
    args = config_cls(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1, logging_steps=1,
        **extra,
    ))  # fmt: skip
    trainer = cls(
        model_dir, [flags, big], args=args, train_dataset=Dataset.from_list(PROMPTS), processing_class=tokenizer
    )
    trainer.train()
    assert "rewards/flags/mean" in trainer.state.log_history[0]


def test_running_reward_ranges_are_saved_with_checkpoints(model_dir, tokenizer, tmp_path):
    out_of_unit = [True]

    def length(completions, **kwargs):
        # Outside [0, 1] in the first run (widens the range); inside it after resuming (widens nothing)
        return [len(c) - 4.0 if out_of_unit[0] else 0.5 for c in completions]

    trainer = make_trainer(model_dir, tokenizer, tmp_path, reward=length)
    trainer.args.save_strategy, trainer.args.save_steps = "steps", 1
    trainer.train()
    ranges = trainer._pcl_reward_targets.ranges
    assert ranges != [[0.0, 1.0]]
    out_of_unit[0] = False
    resumed = make_trainer(model_dir, tokenizer, tmp_path, reward=length, max_steps=2)
    assert resumed._pcl_reward_targets.ranges == [[0.0, 1.0]]
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    assert resumed.state.global_step == 2 and resumed._pcl_reward_targets.ranges == ranges


def test_evaluation_leaves_the_training_reward_ranges_alone(model_dir, tokenizer, tmp_path):
    def scaled(completions, **kwargs):
        return [10.0 * len(c) for c in completions]  # outside [0, 1]: would widen a running range

    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=8, per_device_eval_batch_size=8, num_generations=4, max_completion_length=8,
        log_completions=False,
    ))  # fmt: skip
    trainer = PCLGRPOTrainer(
        model_dir, scaled, args=args, train_dataset=Dataset.from_list(PROMPTS),
        eval_dataset=Dataset.from_list(PROMPTS[:8]), processing_class=tokenizer,
    )  # fmt: skip
    metrics = trainer.evaluate()
    assert metrics["eval_rewards/scaled/mean"] > 1.0  # the rewards did leave [0, 1]
    assert trainer._pcl_reward_targets.ranges == [[0.0, 1.0]]
