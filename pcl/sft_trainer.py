# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.

import math
import textwrap

import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel
from trl import SFTTrainer

from .marker import attach_hook, prepare_model, resolve_args_and_tokenizer, segment_tokens
from .segment import SegmentFormat, empty_segment_mask, score_mask, segment_mask
from .sft_config import PCLSFTConfig
from .validation import check_no_marker, row_texts


PAPER = {
    "title": "Post-Completion Learning for Language Models",
    "id": "2507.20252",
    # docstyle-ignore
    "citation": textwrap.dedent(
        """\
        @article{fei2025post,
            title        = {{Post-Completion Learning for Language Models}},
            author       = {Xiang Fei and Siqi Wang and Shu Wei and Yuxiang Nie and Wei Shi and Hao Feng and Can Huang},
            year         = 2025,
            eprint       = {arXiv:2507.20252}
        }"""
    ),
}


def _completion_text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def render_rows(
    dataset: Dataset | IterableDataset,
    fmt: SegmentFormat,
    reward_column: str,
    name: str = "train",
    only_column: str = "self_assessment_only",
):
    """Append the segment to every row's completion: `MARKER [prefix] SCORE` with a reward, `MARKER` without.

    Rows flagged in `only_column` (the model's own samples) move their completion into the prompt, so only the marker
    and the assessment are trained, never the (possibly wrong) answer.

    Refuses rows that would train silently wrong: missing prompt/completion, a marker already in the data, rewards
    that are NaN, infinite or out of the declared range.
    """
    columns = dataset.column_names
    if columns is not None and not {"prompt", "completion"} <= set(columns):
        raise ValueError(
            f"PCLSFTTrainer needs prompt/completion rows (the segment goes after the completion), but the {name} "
            f"dataset has columns {columns}. Convert it to TRL's prompt-completion format."
        )

    def render(row, idx):
        prompt, completion = row["prompt"], row["completion"]
        texts = row_texts(prompt, "prompt", idx, name) + row_texts(completion, "completion", idx, name)
        if isinstance(prompt, str) != isinstance(completion, str):
            raise ValueError(
                f"Row {idx} of the {name} dataset mixes formats: the prompt is a "
                f"{'string' if isinstance(prompt, str) else 'list of messages'} and the completion is not. Use two "
                "strings, or two lists of chat messages."
            )
        check_no_marker(texts, fmt.marker, idx, name)
        only = bool(row.get(only_column))
        reward = row.get(reward_column)
        if isinstance(reward, float) and math.isnan(reward):
            raise ValueError(
                f"Row {idx} of the {name} dataset has a NaN reward in column {reward_column!r}; use None for rows "
                "without a reward."
            )
        try:
            segment = fmt.render(reward)
        except ValueError as e:
            raise ValueError(f"Row {idx} of the {name} dataset: {e}") from None
        if only:
            if not isinstance(completion, str) or reward is None:
                raise ValueError(
                    f"Row {idx} of the {name} dataset is flagged `{only_column}`: such rows need a string completion "
                    "and a reward (only their assessment is trained)."
                )
            return {"prompt": prompt + completion, "completion": segment}
        if isinstance(completion, str):
            completion = completion + segment
        else:
            completion = [*completion[:-1], {**completion[-1], "content": completion[-1]["content"] + segment}]
        return {"completion": completion}

    remove = [c for c in (reward_column, only_column) if columns is not None and c in columns] or None
    return dataset.map(render, with_indices=True, remove_columns=remove)


class PCLSFTTrainer(SFTTrainer):
    """
    Dual-track SFT for [Post-Completion Learning](https://huggingface.co/papers/2507.20252).

    Each row trains `completion MARKER [prefix] SCORE EOS`, where SCORE is the row's reward (column
    `self_assessment_reward_column`) on the grid of `self_assessment_levels` levels. The completion and the marker
    keep weight 1 (the model learns to end its answer with the marker instead of EOS); the score and its EOS get
    weight `self_assessment_weight`. Rows without a reward train `completion MARKER` and put no loss after it.

    Only `__init__` (render the segment, add the marker token) and `compute_loss` (reweight the per-token log-probs
    of TRL's fused LM head, log self-assessment metrics) are overridden. The segment is found in `input_ids` at loss
    time, so truncation, packing, padding-free, `completion_only_loss` and `assistant_only_loss` work unchanged.
    Everything else is inherited from [`~trl.SFTTrainer`].

    Example:

    ```python
    from datasets import Dataset
    from pcl import PCLSFTConfig, PCLSFTTrainer

    dataset = Dataset.from_list([{"prompt": "2 + 2 =", "completion": " 4", "reward": 1.0}])
    trainer = PCLSFTTrainer(model="Qwen/Qwen2.5-0.5B", args=PCLSFTConfig(output_dir="out"), train_dataset=dataset)
    trainer.train()
    ```

    Args:
        model, args, train_dataset, eval_dataset, processing_class, **kwargs:
            As for [`~trl.SFTTrainer`]; `args` is a [`PCLSFTConfig`]. `processing_class` is loaded from `model` when
            omitted, and the marker is added to it.
    """

    _tag_names = ["trl", "sft", "pcl"]
    _name = "PCL-SFT"
    _paper = PAPER

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, processing_class=None, **kwargs):
        args, processing_class = resolve_args_and_tokenizer(model, args, PCLSFTConfig, "PCL-SFT", processing_class)
        fmt = args.segment_format
        # The marker must be a token before SFTTrainer tokenises the datasets in its __init__
        segment_tokens(processing_class, fmt)
        columns = (args.self_assessment_reward_column, "train", args.self_assessment_only_column)
        if train_dataset is not None:
            train_dataset = render_rows(train_dataset, fmt, *columns)
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                k: render_rows(v, fmt, columns[0], f"eval ({k})", columns[2]) for k, v in eval_dataset.items()
            }
        elif eval_dataset is not None:
            eval_dataset = render_rows(eval_dataset, fmt, columns[0], "eval", columns[2])
        super().__init__(
            model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
            **kwargs,
        )  # fmt: skip
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.segment_tokens = prepare_model(base, processing_class, fmt)
        self._pcl_stats = None
        attach_hook(base, self._reweight_log_probs, with_kwargs=True)

    def _reweight_log_probs(self, module: PreTrainedModel, args, kwargs, output):
        # Runs inside the model's forward, on the outputs of TRL's fused LM head: weight the segment's log-probs
        if not kwargs.get("fused_lm_head") or kwargs.get("shift_labels") is not None:
            return None
        input_ids, tokens = kwargs["input_ids"], self.segment_tokens
        # log_probs[:, t] scores input_ids[:, t + 1]
        full_segment = segment_mask(input_ids, tokens.marker_id, tokens.eos_ids)
        in_segment = full_segment[:, 1:]
        empty = empty_segment_mask(input_ids, tokens.marker_id, tokens.eos_ids)[:, 1:]
        scored = in_segment & ~empty & output.label_mask.bool()
        weight = torch.ones_like(output.log_probs)
        weight = weight.masked_fill(scored, self.args.self_assessment_weight).masked_fill(empty, 0.0)
        is_score = score_mask(input_ids, tokens, full_segment)[:, 1:] & output.label_mask.bool()
        with torch.no_grad():
            top1 = output.is_top1 if output.is_top1 is not None else torch.zeros_like(is_score)
            self._pcl_stats = torch.stack(
                [
                    -(output.log_probs * scored).sum(),
                    scored.sum(),
                    (top1.bool() & is_score).sum(),
                    is_score.sum(),
                ]
            ).float()
        output.log_probs = output.log_probs * weight
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._pcl_stats = None
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if self._pcl_stats is not None:
            mode = "train" if self.model.training else "eval"
            nll, n_tokens, correct, n_scores = self.accelerator.reduce(self._pcl_stats, reduction="sum").tolist()
            if n_tokens > 0:
                self._metrics[mode]["self_assessment/nll"].append(nll / n_tokens)
            if n_scores > 0:
                self._metrics[mode]["self_assessment/accuracy"].append(correct / n_scores)
        return result
