# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""GRPO step time: `PCLGRPOTrainer` (teacher-forced segment) against `trl.GRPOTrainer` on the same prompts.

Every rollout is forced to exactly `completion_len` tokens ending in its stop token (the marker for PCL, EOS for GRPO),
so every PCL row gets its `SCORE EOS` segment and the token floor is exact. Timed: the train step (loss + backward +
optimizer on a prepared generation batch) and the full step (generation + scoring + train step)."""

import copy
import statistics

import torch
from datasets import Dataset
from overhead_harness import Sizes, base_model, compare, now, paired, ready, run_args, sync, train_step
from trl import GRPOConfig, GRPOTrainer

from pcl import PCLGRPOConfig, PCLGRPOTrainer
from pcl.segment import DEFAULT_MARKER


VARIANTS = ("pcl", "plain")


def parity_reward(completions, **kwargs):
    # Deterministic mixed rewards, so advantages are non-zero and segments carry different scores
    return [float(sum(map(ord, c)) % 2) for c in completions]


def grpo_trainer(variant: str, sizes: Sizes, tokenizer, model, out_dir: str, cuda: bool):
    L = sizes.completion_len
    prompts = Dataset.from_list([{"prompt": f"{a} + {b} ="} for a in range(10) for b in range(10)])
    common = dict(
        per_device_train_batch_size=sizes.grpo_batch, num_generations=sizes.num_generations,
        max_completion_length=L, max_steps=1, log_completions=False, **run_args(sizes, cuda),
    )  # fmt: skip
    # Realistic, equal-length rollouts: no stop before token L, and token L is forced to be the stop token
    stop = tokenizer.convert_tokens_to_ids(DEFAULT_MARKER) if variant == "pcl" else tokenizer.eos_token_id
    generation_kwargs = {"min_new_tokens": L - 1, "forced_eos_token_id": stop}
    config, cls = (PCLGRPOConfig, PCLGRPOTrainer) if variant == "pcl" else (GRPOConfig, GRPOTrainer)
    args = config(output_dir=out_dir, generation_kwargs=generation_kwargs, **common)
    trainer = cls(
        model=model, reward_funcs=parity_reward, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    return ready(trainer)


def grpo_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def grpo_token_counts(trainer, inputs: dict) -> dict:
    mask = inputs["completion_mask"]
    if hasattr(trainer, "_pcl_completion_ids"):
        completion = sum(len(ids) for ids in trainer._pcl_completion_ids)
        with_segment = int((inputs["self_assessment_target"] >= 0).sum())
    else:
        completion, with_segment = int(mask.sum()), 0
    return {
        "rows": int(mask.size(0)),
        "prompt_tokens": int(inputs["prompt_mask"].sum()),
        "completion_tokens": completion,
        "segment_tokens": int(mask.sum()) - completion,
        "rows_with_segment": with_segment,
        "completion_width": int(mask.size(1)),
    }


def grpo_setup(sizes: Sizes, tokenizer, cuda: bool, tmp: str) -> tuple[dict, dict, dict, dict]:
    """Both trainers on copies of one model, the shared prompt batch, and one generation batch each (same seed).
    Raises if a rollout is not exactly `completion_len` tokens or a PCL rollout got no segment."""
    model = base_model(tokenizer, sizes, cuda)
    trainers = {v: grpo_trainer(v, sizes, tokenizer, copy.deepcopy(model), f"{tmp}/grpo_{v}", cuda) for v in VARIANTS}
    batch = grpo_batch(trainers["pcl"])
    inputs = {}
    for v, t in trainers.items():
        torch.manual_seed(0)
        inputs[v] = t._generate_and_score_completions(batch)
    counts = {v: grpo_token_counts(trainers[v], inputs[v]) for v in trainers}
    p, q = counts["pcl"], counts["plain"]
    L = sizes.completion_len
    if p["completion_tokens"] != q["completion_tokens"] or q["completion_tokens"] != L * q["rows"]:
        raise RuntimeError(f"Rollouts are not all {L} tokens long: {counts}")
    if p["rows_with_segment"] != p["rows"]:
        raise RuntimeError(f"Some PCL rollouts got no segment: {counts}")
    return trainers, batch, inputs, counts


def bench_grpo(sizes: Sizes, tokenizer, cuda: bool, tmp: str) -> dict:
    trainers, batch, inputs, counts = grpo_setup(sizes, tokenizer, cuda, tmp)
    p, q = counts["pcl"], counts["plain"]
    token_floor = (p["completion_tokens"] + p["segment_tokens"]) / q["completion_tokens"]
    sequence_floor = (p["prompt_tokens"] + p["completion_tokens"] + p["segment_tokens"]) / (
        q["prompt_tokens"] + q["completion_tokens"]
    )

    train = paired(
        {v: (lambda t=trainers[v], x=inputs[v]: train_step(t, x)) for v in VARIANTS}, sizes.reps, sizes.warmup
    )

    gen_times = {v: [] for v in VARIANTS}
    seeds = dict.fromkeys(VARIANTS, 0)

    def full(v):
        # One real GRPO step (steps_per_generation = num_iterations = 1): generate + score, then train on it
        seeds[v] += 1
        torch.manual_seed(seeds[v])  # both variants sample from the same RNG stream in each repetition
        t0 = now()
        new = trainers[v]._generate_and_score_completions(batch)
        sync()
        gen_times[v].append(now() - t0)
        train_step(trainers[v], new)

    full_times = paired({v: (lambda v=v: full(v)) for v in VARIANTS}, sizes.reps, sizes.warmup)
    gen = {v: statistics.median(ts[sizes.warmup :]) for v, ts in gen_times.items()}
    full_cmp = compare(full_times, "pcl", "plain")
    full_cmp["generation_pcl_s"], full_cmp["generation_plain_s"] = gen["pcl"], gen["plain"]
    return {
        "tokens": counts,
        "token_floor": token_floor,
        "sequence_floor": sequence_floor,
        "train_step": compare(train, "pcl", "plain"),
        "full_step": full_cmp,
    }
