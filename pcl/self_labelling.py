# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Self-labelled SFT rows: the current model's own greedy answers on a task, scored by the stage's reward.

A recipe's SFT stage with `self_labelled: {task: ..., max_new_tokens: ...}` trains the score on these rows (the
evaluation track's data), and the benchmark fits its baselines on the same rows. Generating them is a pass of
generation over the whole task, so it is done once per run:

- sharded across the ranks of an `accelerate` launch (each rank answers its share of the prompts and scores its share
  of the answers; answers and rewards are gathered to every rank), not repeated on each rank;
- in batches of prompts of similar length (sorted by length, longest first, then put back in the task's order), so
  batches pad little and an out-of-memory error shows in the first batch;
- with a progress bar on the main process;
- saved in the stage's output directory by the main process; a resumed run reads them back instead of generating
  again (after checking that they were built from this stage's task).
"""

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import inference
from .fitted_baselines import FIT_ROWS_FILE, load_fit_rows, write_fit_rows
from .marker import CONFIG_KEY, prepare_model
from .segment import SegmentFormat
from .tasks import (
    TaskSpec,
    load_task_cached,
    make_reward_func,
    prompt_text,
    resolve_reward_func,
    score_completions,
)


logger = logging.getLogger(__name__)


def self_labelled_path(stage) -> str:
    """Where a stage keeps its self-labelled rows (the labels PCL's score is trained on; the benchmark's fit rows)."""
    return os.path.join(stage.args.output_dir, FIT_ROWS_FILE)


def prompt_as_text(prompt, tokenizer: PreTrainedTokenizerBase) -> str:
    """A conversational prompt rendered with the chat template, ready for the assistant's answer.

    Self-labelled rows put the model's answer inside the prompt, which only plain text can express; the chat template
    already holds any BOS, so a BOS the tokenizer would add again is stripped from the text.
    """
    if isinstance(prompt, str):
        return prompt
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]:
        text = text[len(bos) :]
    return text


def generate_sharded(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence, **kwargs
) -> list[inference.Generation]:
    """`pcl.inference.generate` over `prompts`, split across the ranks of the current launch; every rank gets every
    answer, in the order of `prompts`.

    Prompts are sorted by token length (longest first) and dealt to the ranks in turn, so each rank gets batches of
    similar length and about the same amount of work. Greedy decoding makes the answers those of one process.
    """
    state = PartialState()
    lengths = [len(inference.encode_prompt(tokenizer, p)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    mine = order[state.process_index :: state.num_processes]
    kwargs.setdefault("show_progress", True)
    kwargs["show_progress"] = kwargs["show_progress"] and state.is_main_process
    gens = inference.generate(model, tokenizer, [prompts[i] for i in mine], **kwargs) if mine else []
    return _gathered(list(zip(mine, gens, strict=True)), len(prompts))


def score_sharded(reward_func: Callable, data, completions: Sequence) -> list[float | None]:
    """`pcl.tasks.score_completions` of `completions` (one per row of the dataset `data`), split across the ranks of
    the current launch; every rank gets every reward, in order.

    Each answer is scored once: a reward that runs a verifier or calls a judge costs each rank 1/N of the task, and
    every rank gets the same rewards even from a reward function that is not deterministic (rows that differ between
    ranks would give them datasets of different lengths).
    """
    state = PartialState()
    mine = list(range(state.process_index, len(completions), state.num_processes))
    rewards = score_completions(reward_func, data.select(mine), [completions[i] for i in mine]) if mine else []
    return _gathered(list(zip(mine, rewards, strict=True)), len(completions))


def _gathered(pairs: list[tuple[int, Any]], n: int) -> list:
    """This rank's `(index, value)` pairs, gathered from every rank into one list of `n` values in index order."""
    if PartialState().num_processes > 1:
        pairs = gather_object(pairs)
    result = [None] * n
    for i, value in pairs:
        result[i] = value
    return result


def self_labelled_rows(
    spec: dict,
    data,
    model,
    tokenizer: PreTrainedTokenizerBase,
    reward: list[str],
    fmt: SegmentFormat,
    sharded: bool = True,
) -> list[dict]:
    """The model's own greedy answers on a task (`data`, the loaded `spec["task"]`), scored by the stage's reward.

    Each row: `prompt` (as text), `completion`, `reward` and the item's `difficulty` features (for the benchmark's
    difficulty-only baseline). `model` is a model or a path; a path is loaded for inference on this rank's device.
    `sharded=False` does all the work on this process, for callers that run on the main process only (the
    benchmark): the sharded path's gathers are collectives every rank must join.
    """
    from transformers import AutoModelForCausalLM

    from .items import difficulty_features
    from .recipe import _plain_loading  # recipe builds on this module

    spec = dict(spec)
    task = TaskSpec.from_dict(spec.pop("task"))
    if isinstance(model, str):
        with _plain_loading():
            model = AutoModelForCausalLM.from_pretrained(model, dtype="auto").to(PartialState().device)
    if not hasattr(model.config, CONFIG_KEY):
        prepare_model(model, tokenizer, fmt)  # a base model: its answers must end at the marker like in training
    kwargs = {"max_new_tokens": 32, "batch_size": 256, **spec}
    if sharded:
        gens = generate_sharded(model, tokenizer, data["prompt"], **kwargs)
    else:
        gens = inference.generate(model, tokenizer, list(data["prompt"]), show_progress=True, **kwargs)
    answers = [" " + g.text.strip() for g in gens]
    func = make_reward_func(task) if reward == ["task"] else resolve_reward_func(reward[0])
    score = score_sharded if sharded else score_completions
    rewards = score(func, data, [a.strip() for a in answers])
    # Truncated answers stay: deployment truncates too, and their score is read the same way
    keep = [i for i, r in enumerate(rewards) if r is not None]
    if not keep:
        raise ValueError(f"Self-labelling produced no rewarded answers on {task.task_name!r}: every reward was None.")
    logger.warning(
        f"Self-labelled {len(keep)} answers on {task.task_name}: accuracy {sum(rewards[i] for i in keep) / len(keep):.3f}"
    )
    return [
        {
            "prompt": prompt_as_text(data["prompt"][i], tokenizer),
            "completion": answers[i],
            "reward": float(rewards[i]),
            "difficulty": difficulty_features(data["task"][i], data["entry"][i]),
        }
        for i in keep
    ]


def _saved_rows(stage, path: str, data, tokenizer: PreTrainedTokenizerBase) -> list[dict]:
    rows = load_fit_rows(path)
    expected = {prompt_text(prompt_as_text(p, tokenizer)) for p in data["prompt"]}
    stray = next((r["prompt"] for r in rows if prompt_text(r["prompt"]) not in expected), None)
    if stray is not None:
        raise ValueError(
            f"{path} holds self-labelled rows of another task (e.g. the prompt {stray!r} is not in "
            f"`stages.{stage.name}.self_labelled.task`): the recipe changed since it was written. Delete the file "
            "to label the new task, or restore the recipe."
        )
    return rows


def cached_self_labelled_rows(stage, model, tokenizer: PreTrainedTokenizerBase, resume: bool) -> list[dict]:
    """A stage's self-labelled rows: generated (sharded over the ranks) and saved in its output directory by the main
    process, or, on resume, read back from there by the main process and sent to the others."""
    state = PartialState()
    path = self_labelled_path(stage)
    data = load_task_cached(TaskSpec.from_dict(stage.self_labelled["task"]))
    # The main process decides for every rank (the others may not see its disk); an error travels with the decision,
    # so that no rank waits for one that raised
    saved = [None]
    if state.is_main_process and resume and os.path.isfile(path):
        try:
            saved = [_saved_rows(stage, path, data, tokenizer)]
        except ValueError as error:
            saved = [error]
    if state.num_processes > 1:
        broadcast_object_list(saved, from_process=0)
    if isinstance(saved[0], ValueError):
        raise saved[0]
    if saved[0] is not None:
        logger.warning(f"Stage {stage.name!r}: reusing {len(saved[0])} self-labelled rows from {path}.")
        return saved[0]
    rows = self_labelled_rows(stage.self_labelled, data, model, tokenizer, stage.reward, stage.args.segment_format)
    if state.is_main_process:
        os.makedirs(stage.args.output_dir, exist_ok=True)
        write_fit_rows(rows, path)
    state.wait_for_everyone()
    return rows
