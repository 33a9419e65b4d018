# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""SFT step time: `PCLSFTTrainer` against `trl.SFTTrainer` on equal-length rows (no padding).

(a) rows without a reward: PCL trains `completion MARKER EOS` against `completion EOS`; (b) rows with a reward: PCL
against plain SFT on the rows `render_rows` produces (identical token ids: the cost of the reweighting alone), and
(b) against the original rows (what PCL costs over not doing PCL)."""

import copy
import random

import torch
from datasets import Dataset
from overhead_harness import Sizes, base_model, compare, paired, ready, run_args, train_step
from trl import SFTConfig, SFTTrainer

from pcl import PCLSFTConfig, PCLSFTTrainer
from pcl.segment import SegmentFormat
from pcl.sft_trainer import render_rows


# Timed variants. `plain_marker` (plain SFT on `completion MARKER`, PCL (a)'s token ids) is only FLOP-counted.
VARIANTS = ("plain", "pcl_no_reward", "plain_rendered", "pcl_reward")


def sft_rows(n: int, completion_chars: int, seed: int = 0) -> list[dict]:
    """Equal-length prompt/completion rows (no padding noise): a question and a worked chain of sums."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        text, total = "", a + b
        while len(text) < completion_chars:
            c = rng.randrange(10)
            text += f" {total}+{c}={total + c};"
            total += c
        rows.append(
            {"prompt": f"{a} + {b} =", "completion": text[:completion_chars], "reward": float(rng.random() < 0.5)}
        )
    return rows


def sft_trainer(variant: str, sizes: Sizes, tokenizer, model, out_dir: str, cuda: bool):
    rows = Dataset.from_list(sft_rows(max(sizes.sft_batch, 8), sizes.sft_completion_chars))
    no_reward = rows.remove_columns("reward")
    common = dict(
        output_dir=out_dir, per_device_train_batch_size=sizes.sft_batch, max_steps=1, **run_args(sizes, cuda)
    )
    if variant.startswith("plain"):
        data = {
            "plain": no_reward,
            "plain_rendered": render_rows(rows, SegmentFormat(), "reward"),  # completion MARKER SCORE
            "plain_marker": render_rows(no_reward, SegmentFormat(), "reward"),  # completion MARKER
        }[variant]
        t = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=data, processing_class=tokenizer)
    else:
        data = rows if variant == "pcl_reward" else no_reward
        t = PCLSFTTrainer(model=model, args=PCLSFTConfig(**common), train_dataset=data, processing_class=tokenizer)
    return ready(t)


def sft_batch(trainer, n: int) -> tuple[dict, torch.Tensor]:
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))
    return batch, (batch["labels"] != -100).sum()


def sft_tokens(batch: dict) -> dict:
    real = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
    return {
        "tokens": int(real),
        "loss_tokens": int((batch["labels"] != -100).sum()),
        "shape": list(batch["input_ids"].shape),
    }


def sft_setup(sizes: Sizes, tokenizer, cuda: bool, tmp: str, variants=VARIANTS) -> tuple[dict, dict]:
    """The trainers on copies of one model and one collated batch each; checks that each plain baseline of a PCL
    variant sees the PCL variant's token ids."""
    model = base_model(tokenizer, sizes, cuda)
    trainers = {v: sft_trainer(v, sizes, tokenizer, copy.deepcopy(model), f"{tmp}/sft_{v}", cuda) for v in variants}
    for pcl, plain in (("pcl_reward", "plain_rendered"), ("pcl_no_reward", "plain_marker")):
        if pcl in trainers and plain in trainers:
            if trainers[pcl].train_dataset["input_ids"] != trainers[plain].train_dataset["input_ids"]:
                raise RuntimeError(f"PCL-SFT ({pcl}) and plain SFT ({plain}) do not see the same token ids.")
    return trainers, {v: sft_batch(t, sizes.sft_batch) for v, t in trainers.items()}


def bench_sft(sizes: Sizes, tokenizer, cuda: bool, tmp: str) -> dict:
    trainers, batches = sft_setup(sizes, tokenizer, cuda, tmp)
    tokens = {v: sft_tokens(b) for v, (b, _) in batches.items()}
    times = paired(
        {v: (lambda t=trainers[v], b=batches[v]: train_step(t, *b)) for v in VARIANTS}, sizes.reps, sizes.warmup
    )

    def item(a, b):
        # Floor: tokens through the model (B x T; rows are equal-length, so no padding is involved)
        return {"token_floor": tokens[a]["tokens"] / tokens[b]["tokens"], **compare(times, a, b)}

    return {
        "tokens": tokens,
        "no_reward": item("pcl_no_reward", "plain"),  # (a) completion MARKER EOS vs completion EOS
        "reward": item("pcl_reward", "plain_rendered"),  # (b) identical tokens: the reweighting alone
        "reward_vs_unrendered": item("pcl_reward", "plain"),  # (b) vs not doing PCL at all
    }
