# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""How PCL-GRPO lays the self-assessment segment into a generation batch.

Teacher-forced mode (`append_segments`): a rollout that stops at the marker becomes `answer MARKER [prefix] SCORE EOS`.
A rollout that stops at an EOS id (a model that has not learnt the marker yet) becomes the same: its final EOS is
replaced by the marker, so the score is always trained in the context it is read in (`prompt + answer + MARKER`). The
replaced position stays a policy token: the trainer hands the policy loss log p(EOS) there. On every row that gets a
segment, the stop joins the segment NLL (the trainer trains the marker's share of the stop mass there), whether the
marker or an EOS was sampled.

Generated mode: the model writes the segment itself. The task rewards see the answer only (`split_at_marker`), a Brier
consistency reward scores the written level (`consistency_rewards`), and that reward's advantage applies to the
segment's tokens (`written_segments`).
"""

import math

import torch
from trl.trainer.utils import nanstd

from .segment import SegmentFormat, SegmentTokens


def append_segments(
    output: dict,
    completion_ids_list: list[list[int]],
    targets: list[float | None],
    fmt: SegmentFormat,
    tokens: SegmentTokens,
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> int:
    """Re-lay each row of `output` (TRL's generation batch, modified in place) as `[answer][MARKER prefix SCORE EOS]`.

    Adds `self_assessment_mask` (positions whose log-probs feed the segment NLL: the marker that ends the answer,
    sampled or in place of an EOS, and the segment after it), `self_assessment_stop_index` / `self_assessment_stop_id`
    (that stop's position, a policy token, and the id sampled there, -1 for none), `self_assessment_score_index` and `self_assessment_target` (the score
    token's position and level, -1 for none). Returns the number of rows that got a segment.
    """
    device = output["completion_ids"].device
    completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
    stops = (tokens.marker_id, *tokens.eos_ids)
    rows, levels = [], []
    for i, (ids, target) in enumerate(zip(completion_ids_list, targets, strict=True)):
        # Truncated, masked (mask_truncated_completions) or unrewarded rows get no segment
        if target is None or not ids or ids[-1] not in stops or not completion_mask[i].any():
            continue
        rows.append(i)
        levels.append(fmt.level_of(target))

    n_seg = len(tokens.assessment_ids(0))
    lengths = [len(ids) for ids in completion_ids_list]
    width = max([completion_ids.size(1)] + [lengths[r] + n_seg for r in rows])
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    extra = width - completion_ids.size(1)

    def widen(x, value):
        # Per-token tensors only; sequence-level ones (B, 1) stay as they are
        if extra and x.dim() == 2 and x.size(1) == completion_ids.size(1):
            return torch.nn.functional.pad(x, (0, extra), value=value)
        return x

    output["completion_ids"] = widen(completion_ids, pad_token_id)
    output["completion_mask"] = widen(completion_mask, 0)
    output["tool_mask"] = widen(output.get("tool_mask", torch.ones_like(completion_mask)), 1)
    for key in ("old_per_token_logps", "ref_per_token_logps", "sampling_per_token_logps"):
        if output.get(key) is not None:
            output[key] = widen(output[key], 0.0)
    if output.get("importance_sampling_ratio") is not None:
        output["importance_sampling_ratio"] = widen(output["importance_sampling_ratio"], 1.0)
    for key in ("token_type_ids", "mm_token_type_ids"):
        # Vision-language models: these span prompt + completion, and text tokens (the segment's too) are type 0
        if extra and output.get(key) is not None:
            output[key] = torch.nn.functional.pad(output[key], (0, extra), value=0)

    batch = len(lengths)
    nll_mask = torch.zeros_like(output["completion_mask"], dtype=torch.bool)
    score_index = torch.full((batch,), -1, dtype=torch.long, device=device)
    target_level = torch.full_like(score_index, -1)
    stop_index, stop_id = torch.full_like(score_index, -1), torch.full_like(score_index, -1)
    for r, level in zip(rows, levels, strict=True):
        end, last = lengths[r], completion_ids_list[r][-1]
        # The sampled EOS becomes the marker; the policy still scores the EOS there (see the trainer)
        output["completion_ids"][r, end - 1] = tokens.marker_id
        stop_index[r], stop_id[r] = end - 1, last
        nll_mask[r, end - 1] = True  # teach the stop token (marker, not EOS) on every segmented row
        span = slice(end, end + n_seg)
        output["completion_ids"][r, span] = torch.tensor(tokens.assessment_ids(level), device=device)
        output["completion_mask"][r, span] = 1
        output["tool_mask"][r, span] = 0
        nll_mask[r, span] = True
        score_index[r], target_level[r] = end + len(tokens.prefix_ids), level
    output["self_assessment_mask"] = nll_mask
    output["self_assessment_stop_index"] = stop_index
    output["self_assessment_stop_id"] = stop_id
    output["self_assessment_score_index"] = score_index
    output["self_assessment_target"] = target_level
    return len(rows)


def group_advantages(values: torch.Tensor, num_generations: int, scale_rewards: str) -> torch.Tensor:
    """GRPO's advantages of one reward, as TRL computes them: minus the group mean, divided by `nanstd` of the group
    (`"group"`) or of the whole batch (`"batch"`), or not scaled (`"none"`); NaN rewards get 0."""
    grouped = values.view(-1, num_generations)
    centered = (grouped - grouped.nanmean(dim=1, keepdim=True)).view(-1)
    if scale_rewards == "group":
        std = nanstd(grouped, dim=1) if num_generations > 1 else torch.zeros(grouped.size(0), device=values.device)
        centered = centered / (std.repeat_interleave(num_generations) + 1e-4)
    elif scale_rewards == "batch":
        std = nanstd(values) if values.numel() > 1 else torch.zeros((), device=values.device)
        centered = centered / (std + 1e-4)
    return torch.nan_to_num(centered, nan=0.0)


def split_at_marker(
    completions: list, completion_ids_list: list[list[int]], marker_id: int, tokenizer
) -> tuple[list, list[list[int]], list[list[int] | None]]:
    """Generated mode: the completions cut after the marker, for the task rewards, which must see the answer only, not
    the written assessment. Returns `(texts, answer_ids, segments)`: each answer's text (as an assistant message when
    the completions are messages) and ids (the marker included), and the ids written after the marker (`None` where
    the completion has no marker)."""
    answers, segments = [], []
    for ids in completion_ids_list:
        ids = list(ids)
        cut = ids.index(marker_id) if marker_id in ids else None
        answers.append(ids if cut is None else ids[: cut + 1])
        segments.append(None if cut is None else ids[cut + 1 :])
    texts = tokenizer.batch_decode(answers, skip_special_tokens=True)
    if completions and not isinstance(completions[0], str):
        texts = [[{"role": "assistant", "content": t}] for t in texts]
    return texts, answers, segments


def consistency_rewards(targets: list[float | None], written: list[int | None], fmt: SegmentFormat) -> list[float]:
    """Generated mode's Brier consistency of each written level with its rollout's score target: `1 - (value - target)
    ** 2`; 0 where no level could be read, NaN where the rollout has no target. An honest "I am wrong" on a wrong
    answer scores 1 (never 0/0 like a ratio would)."""
    return [
        math.nan if g is None else 0.0 if w is None else 1.0 - (fmt.level_value(w) - g) ** 2
        for g, w in zip(targets, written, strict=True)
    ]


def written_segments(
    output: dict,
    answer_ids: list[list[int]],
    segments: list[list[int] | None],
    written: list[int | None],
    targets: list[float | None],
    segment_advantages: torch.Tensor,
    fmt: SegmentFormat,
    tokens: SegmentTokens,
) -> int:
    """Generated mode: per-token advantages in `output` (TRL's generation batch, modified in place), the task's on the
    answer and `segment_advantages` (one per row) on the segment written after it.

    Adds `self_assessment_score_index` and `self_assessment_target` (the written score's position and the target's
    level, -1 where no level was read or the rollout has no target). Returns the number of rows with a segment.
    """
    device = output["completion_ids"].device
    T = output["completion_ids"].size(1)
    advantages = output["advantages"].unsqueeze(1).expand(-1, T).clone()
    score_index = torch.full((advantages.size(0),), -1, dtype=torch.long, device=device)
    target_level = torch.full_like(score_index, -1)
    n_prefix = len(tokens.prefix_ids)
    with_segment = 0
    for i, (ids, seg) in enumerate(zip(answer_ids, segments, strict=True)):
        if seg is None:
            continue
        start_seg = len(ids)  # `ids` are the answer ids, marker included
        advantages[i, start_seg:] = segment_advantages[i]
        with_segment += 1
        if written[i] is not None and targets[i] is not None:
            score_index[i] = start_seg + n_prefix
            target_level[i] = fmt.level_of(targets[i])
    output["advantages"] = advantages * output["completion_mask"]
    output["self_assessment_score_index"] = score_index
    output["self_assessment_target"] = target_level
    return with_segment
