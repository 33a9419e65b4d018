# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Plain TRL SFT (answers end at EOS, no marker), then plain TRL GRPO with the quickstart's GRPO settings: does the
GRPO reward rise on this task and model? Usage: `python plain_trl_grpo.py LR STEPS` (recorded: `1e-4 80`, printed lines
in plain_trl_grpo.txt: step, mean reward, entropy, mean completion length)."""

import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from pcl.tasks import TaskSpec, load_task, make_reward_func
from pcl.tiny import build_char_tokenizer, build_tiny_model


os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIG = {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2}
COMMON = dict(use_cpu=True, bf16=False, report_to="none", save_strategy="no", seed=0, dataloader_num_workers=0)


def plain_sft(out: str) -> None:
    """The quickstart's `sft` stage with TRL's SFTTrainer: same data, steps and optimiser, no marker."""
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer(marker=None)
    model = build_tiny_model(tokenizer, hidden_size=128, num_layers=4, num_heads=4, max_position_embeddings=64)
    data = load_task(TaskSpec("chain_sum", size=32000, seed=1, config=CONFIG))
    data = data.map(lambda r: {"completion": " " + r["answer"]}, remove_columns=["answer", "task", "entry"])
    args = SFTConfig(output_dir=out, logging_steps=50, learning_rate=2e-3, lr_scheduler_type="cosine", warmup_steps=30,
                     per_device_train_batch_size=128, max_steps=250, max_length=64, **COMMON)  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(out)


def main(lr: float, steps: int, out: str = "/tmp/plain_sft") -> None:
    if not os.path.exists(os.path.join(out, "config.json")):
        plain_sft(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.padding_side = "left"
    task = TaskSpec("chain_sum", size=2000, seed=2000000, config=CONFIG)
    args = GRPOConfig(output_dir="/tmp/plain_grpo", logging_steps=10, learning_rate=lr, lr_scheduler_type="constant",
                      per_device_train_batch_size=128, num_generations=8, max_completion_length=8, beta=0.0,
                      max_steps=steps, **COMMON)  # fmt: skip
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(out), reward_funcs=[make_reward_func(task)],
                          args=args, train_dataset=load_task(task), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    for h in trainer.state.log_history:
        if "reward" in h:
            print("STEP", h["step"], round(h["reward"], 4), round(h["entropy"], 3), h["completions/mean_length"])


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]))
