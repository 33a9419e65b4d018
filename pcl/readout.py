# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Introspection: read a PCL model's prediction of its own reward for given answers.

`self_scores` is the continuous readout: one forward pass over `prompt + completion + MARKER [prefix]`, softmax over
the score-level tokens at the last position, expected level. `written_scores` is the discrete alternative (let the
model write its score and parse it), and `token_logprob_confidence` gives the free baselines every LM has (how likely
the model found its own answer), to compare the self-assessment against.
"""

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .inference import (
    Prompt,
    batches,
    encode_prompt,
    eval_mode,
    pad_id_of,
    pad_left,
    segment_tokens_of,
)
from .marker import readout_temperature
from .segment import SegmentTokens


Completion = str | list[dict]


def _completion_text(completion: Completion) -> str:
    # Conversational completions are a list of messages; the answer is the last (assistant) message
    return completion if isinstance(completion, str) else completion[-1]["content"]


def _max_length(model: PreTrainedModel) -> int | None:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def _answer_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, completion: Completion, tokens: SegmentTokens
) -> tuple[list[int], int]:
    """Ids of `prompt + completion + MARKER`, and how many of them are completion tokens (the marker included)."""
    text = _completion_text(completion)
    marker = tokenizer.convert_ids_to_tokens(tokens.marker_id)
    # A completion that already ends with its marker (e.g. taken from training data) must not get a second one
    if text.endswith(marker):
        text = text[: -len(marker)]
    prompt_ids = encode_prompt(tokenizer, prompt)
    ids = encode_prompt(tokenizer, prompt, text)
    # Like TRL, the completion starts where prompt and prompt+completion tokenisations diverge
    start = 0
    while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
        start += 1
    return [*ids, tokens.marker_id], len(ids) - start + 1


def _truncate_left(rows: list[list[int]], max_length: int | None) -> list[list[int]]:
    if max_length is None or all(len(r) <= max_length for r in rows):
        return rows
    warnings.warn(
        f"Some inputs are longer than the model's {max_length} positions; their beginning (of the prompt) is cut off."
    )
    return [r[-max_length:] for r in rows]


def _check_pairs(prompts: Sequence, completions: Sequence) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions; pass one per prompt.")


def level_distribution(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    *,
    batch_size: int = 32,
    tokens: SegmentTokens | None = None,
    temperature: float | None = None,
    show_progress: bool = False,
) -> np.ndarray:
    """Probabilities `(N, levels)` the model gives each score level right after `completion MARKER [prefix]`.

    One forward pass per left-padded batch, keeping the logits of the last position only. The softmax runs over the
    level tokens alone (the rest of the vocabulary is not a valid score), after dividing by `temperature` (default:
    the `readout_temperature` saved in the model's config, else 1.0).
    """
    _check_pairs(prompts, completions)
    tokens = segment_tokens_of(model, tokenizer, tokens)
    temperature = readout_temperature(model) if temperature is None else float(temperature)
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    rows = [
        [*_answer_ids(tokenizer, p, c, tokens)[0], *tokens.prefix_ids]
        for p, c in zip(prompts, completions, strict=True)
    ]
    rows = _truncate_left(rows, _max_length(model))
    pad_id = pad_id_of(tokenizer, tokens)
    level_ids = torch.as_tensor(tokens.level_ids, device=model.device)
    probs = np.zeros((len(rows), len(tokens.level_ids)), dtype=np.float64)
    with eval_mode(model):
        for idx in batches(len(rows), batch_size, show_progress, "self-scores"):
            input_ids, attention_mask = pad_left([rows[i] for i in idx], pad_id, model.device)
            # Positions count real tokens only, so a row's scores do not depend on the padding of its batch
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=1
            ).logits[:, -1]
            level_logits = logits.index_select(-1, level_ids).float() / temperature
            probs[idx.start : idx.stop] = level_logits.softmax(-1).cpu().double().numpy()
    return probs


def self_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    *,
    batch_size: int = 32,
    tokens: SegmentTokens | None = None,
    temperature: float | None = None,
    show_progress: bool = False,
) -> list[float]:
    """The model's expected normalised reward for each answer, `sum_k p_k * k / (levels - 1)`, in [0, 1].

    See [`level_distribution`] for how the level probabilities are read.
    """
    probs = level_distribution(
        model,
        tokenizer,
        prompts,
        completions,
        batch_size=batch_size,
        tokens=tokens,
        temperature=temperature,
        show_progress=show_progress,
    )
    values = np.linspace(0.0, 1.0, probs.shape[1])
    return np.clip(probs @ values, 0.0, 1.0).tolist()


def written_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    batch_size: int = 32,
    tokens: SegmentTokens | None = None,
) -> list[float | None]:
    """Let the model write its score after `completion MARKER` and parse it; `None` where it wrote no valid segment.

    This is the discrete readout (one level, as a deployed model that is not stopped would write it); prefer
    [`self_scores`], which needs no generation and keeps the full distribution.
    """
    _check_pairs(prompts, completions)
    tokens = segment_tokens_of(model, tokenizer, tokens)
    levels = len(tokens.level_ids)
    max_new_tokens = len(tokens.prefix_ids) + 3
    rows = [_answer_ids(tokenizer, p, c, tokens)[0] for p, c in zip(prompts, completions, strict=True)]
    max_length = _max_length(model)
    rows = _truncate_left(rows, None if max_length is None else max_length - max_new_tokens)
    pad_id = pad_id_of(tokenizer, tokens)
    # The marker is a stop id of a PCL model: stop on the real EOS ids only, so the segment gets written
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "eos_token_id": list(tokens.eos_ids),
        "pad_token_id": pad_id,
    }
    if do_sample:
        kwargs["temperature"] = temperature
    scores: list[float | None] = []
    with eval_mode(model):
        for idx in batches(len(rows), batch_size, False, "written scores"):
            input_ids, attention_mask = pad_left([rows[i] for i in idx], pad_id, model.device)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            for row in out[:, input_ids.size(1) :].tolist():
                level = tokens.parse_ids(row)
                scores.append(None if level is None else level / (levels - 1))
    return scores


def token_logprob_confidence(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    *,
    batch_size: int = 32,
    tokens: SegmentTokens | None = None,
) -> dict[str, list[float]]:
    """Free confidence baselines from the model's own token probabilities of each answer, all in [0, 1].

    The scored tokens are the completion's tokens plus the terminating marker: a PCL model ends its answers with the
    marker (where a plain LM writes EOS), so the probability of stopping there is part of the answer's likelihood, and
    an empty completion still gets one scored token.

    Returns:
        `dict` with `mean_token_prob` (exp of the mean token log-prob, the length-normalised sequence probability),
        `sequence_prob` (exp of the summed log-probs) and `min_token_prob` (the least likely token); NaN for a row
        with no token to score (an input of one token).
    """
    _check_pairs(prompts, completions)
    tokens = segment_tokens_of(model, tokenizer, tokens)
    pairs = [_answer_ids(tokenizer, p, c, tokens) for p, c in zip(prompts, completions, strict=True)]
    rows = _truncate_left([ids for ids, _ in pairs], _max_length(model))
    # The first kept token has no context to be scored from
    counts = [min(n, len(ids) - 1) for (_, n), ids in zip(pairs, rows, strict=True)]
    pad_id = pad_id_of(tokenizer, tokens)
    result = {"mean_token_prob": [], "sequence_prob": [], "min_token_prob": []}
    with eval_mode(model):
        for idx in batches(len(rows), batch_size, False, "token log-probs"):
            input_ids, attention_mask = pad_left([rows[i] for i in idx], pad_id, model.device)
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            # Left padding puts every completion at the end, so the last (longest completion + 1) logits suffice
            keep = max(counts[i] for i in idx) + 1
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=keep
            ).logits[:, -keep:-1]
            targets = input_ids[:, -keep + 1 :]
            for j, i in enumerate(idx):
                n = counts[i]
                if n <= 0:
                    result["mean_token_prob"].append(float("nan"))
                    result["sequence_prob"].append(float("nan"))
                    result["min_token_prob"].append(float("nan"))
                    continue
                # One row at a time in float32, so the (batch, length, vocab) log-softmax never materialises
                row_logits = logits[j, -n:].float()
                logp = row_logits.gather(-1, targets[j, -n:, None]).squeeze(-1) - row_logits.logsumexp(-1)
                result["mean_token_prob"].append(logp.mean().exp().item())
                result["sequence_prob"].append(logp.sum().exp().item())
                result["min_token_prob"].append(logp.min().exp().item())
    return result
