# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Training one stage of a recipe (`pcl train`, see `pcl.recipe`): its training set, its trainer, its saved model.

An SFT stage trains on the task's gold answers (the reasoning track: each row ends `answer MARKER`) and, with
`self_labelled`, on the current model's own scored answers, which train the score only (`pcl.self_labelling`). A GRPO
stage trains on the task's prompts with the stage's rewards. A completed stage writes `DONE_FILE` in its output
directory, and a resumed run skips it.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

from datasets import Dataset, concatenate_datasets

from .self_labelling import cached_self_labelled_rows, prompt_as_text
from .tasks import load_task_cached, make_reward_func, resolve_reward_func


if TYPE_CHECKING:
    from .recipe import Stage


logger = logging.getLogger(__name__)

DONE_FILE = "pcl_stage_complete.json"


def reward_funcs(stage: Stage) -> list:
    """The stage's reward functions: `"task"` is the task's own verifier, anything else names a reward function."""
    return [make_reward_func(stage.task) if r == "task" else resolve_reward_func(r) for r in stage.reward]


def stage_dataset(stage: Stage, model, tokenizer, resume: bool = False) -> Dataset:
    """The stage's training set: a GRPO stage's task as loaded; an SFT stage's gold answers, with its self-labelled
    rows (`model`'s answers, or those saved by an earlier run when `resume`) when it has `self_labelled`."""
    data = load_task_cached(stage.task)
    if stage.trainer == "grpo":
        return data
    # The reasoning track: gold answers; no reward column, so each row ends `answer MARKER`
    chat = not isinstance(data[0]["prompt"], str)

    def gold(row):  # a conversational prompt takes a conversational completion: SFTTrainer refuses a mix
        return {"completion": [{"role": "assistant", "content": row["answer"]}] if chat else " " + row["answer"]}

    data = data.map(gold, remove_columns=["answer", "task", "entry"])
    if stage.self_labelled is None:
        return data
    if chat:  # one dataset cannot mix chat and text rows: render both as text
        data = data.map(lambda row: {"prompt": prompt_as_text(row["prompt"], tokenizer),
                                     "completion": " " + row["completion"][0]["content"]})  # fmt: skip
    rows = cached_self_labelled_rows(stage, model, tokenizer, resume)
    own = Dataset.from_dict(
        {
            "prompt": [r["prompt"] for r in rows],
            "completion": [r["completion"] for r in rows],
            "reward": [float(r["reward"]) for r in rows],
            "self_assessment_only": [True] * len(rows),
        }
    )
    data = data.add_column("reward", [None] * len(data)).add_column("self_assessment_only", [False] * len(data))
    data = data.cast(own.features)
    return concatenate_datasets([data, own]).shuffle(seed=stage.args.seed)


def run_stage(stage: Stage, model, tokenizer, resume: bool = False) -> str:
    """Train one stage and save it (safetensors, tokenizer with the marker); returns its output directory."""
    from .grpo_trainer import PCLGRPOTrainer
    from .sft_trainer import PCLSFTTrainer

    args, out = stage.args, stage.args.output_dir
    if os.path.exists(os.path.join(out, DONE_FILE)) and resume:
        logger.warning(f"Stage {stage.name!r} already complete in {out}; skipping.")
        return out
    # Each stage builds its own Accelerator; a DeepSpeed launch allows only one per process state, so reset it
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    dataset = stage_dataset(stage, model, tokenizer, resume)
    if stage.trainer == "sft" and stage.self_labelled is not None:
        logger.warning(f"Stage {stage.name!r}: {len(dataset)} rows (gold answers and self-labelled answers).")
    if stage.trainer == "sft":
        trainer = PCLSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    else:
        tokenizer.padding_side = "left"
        trainer = PCLGRPOTrainer(
            model=model,
            reward_funcs=reward_funcs(stage),
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    checkpoint = args.resume_from_checkpoint
    if resume and checkpoint in (None, "true", "True"):
        from transformers.trainer_utils import get_last_checkpoint

        checkpoint = get_last_checkpoint(out) if os.path.isdir(out) else None
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(out)
    if trainer.accelerator.is_main_process:
        with open(os.path.join(out, DONE_FILE), "w") as f:
            json.dump({"stage": stage.name, "global_step": trainer.state.global_step}, f)
    trainer.accelerator.wait_for_everyone()
    return out
