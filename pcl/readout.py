# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Introspection: read a PCL model's prediction of its own reward for given answers.

`self_scores` is the continuous readout: one forward pass over `prompt + completion + MARKER [prefix]`, softmax over
the score-level tokens at the last position, expected level. `written_scores` is the discrete alternative (let the
model write its score and parse it), and `token_logprob_confidence` gives the free baselines every LM has (how likely
the model found its own answer), to compare the self-assessment against. The single-pass readouts are thin wrappers
over `pcl.features.answer_features` (one forward pass for every source) and the pure functions of `pcl.baselines`.
"""

from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from . import baselines
from .features import Completion, answer_features, answer_ids, check_pairs, max_length_of, truncate_left
from .inference import Prompt, batches, eval_mode, pad_id_of, pad_left, segment_tokens_of
from .segment import SegmentTokens


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
    return answer_features(
        model,
        tokenizer,
        prompts,
        completions,
        batch_size=batch_size,
        tokens=tokens,
        temperature=temperature,
        logprobs=False,
        hidden_states=False,
        show_progress=show_progress,
    ).level_probs


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
    return baselines.self_score(probs).tolist()


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

    This is the discrete readout (one level, as a deployed model that is not stopped would write it). With the default
    `do_sample=False` the written level is the greedy one (the most likely token after `MARKER [prefix]`), not a
    sample; `do_sample=True` samples it at `temperature`. Prefer
    [`self_scores`], which needs no generation and keeps the full distribution.
    """
    check_pairs(prompts, completions)
    tokens = segment_tokens_of(model, tokenizer, tokens)
    levels = len(tokens.level_ids)
    max_new_tokens = len(tokens.prefix_ids) + 3
    rows = [answer_ids(tokenizer, p, c, tokens)[0] for p, c in zip(prompts, completions, strict=True)]
    max_length = max_length_of(model)
    rows = truncate_left(rows, None if max_length is None else max_length - max_new_tokens)
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
        `sequence_prob` (exp of the summed log-probs) and `min_token_prob` (the least likely token); 1.0 (the empty
        product) for a row with no token to score (an input of one token). See `pcl.baselines` for the same sources
        with the stop token excluded.
    """
    features = answer_features(
        model, tokenizer, prompts, completions, batch_size=batch_size, tokens=tokens, hidden_states=False, levels=False
    )
    return {name: baselines.SOURCES[name](features).tolist() for name in TOKEN_SOURCES}


TOKEN_SOURCES = ("mean_token_prob", "sequence_prob", "min_token_prob")
