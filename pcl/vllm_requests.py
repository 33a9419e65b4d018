# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""What PCL asks of vLLM: the sampling arguments of GRPO rollouts, and deploy-mode answer and self-score requests.

Pure functions of token ids and dictionaries (vLLM itself is not imported), so they are tested on any machine;
`recipes/deploy_vllm.py` runs them against a real engine.

Unless `ignore_eos=True`, vLLM stops at its tokenizer's EOS and at every EOS id of the checkpoint's
`generation_config.json`, which for a PCL checkpoint lists the marker; with `ignore_eos=True` it stops at
`stop_token_ids` only. Stop ids are kept in the returned token ids (only the text drops them).
"""

import json
import math
import os
from collections.abc import Mapping, Sequence

from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from .marker import CONFIG_KEY
from .segment import SegmentFormat, SegmentTokens


def rollout_sampling_kwargs(kwargs: dict | None, marker_id: int, eos_ids: list[int], stop_at_marker: bool) -> dict:
    """TRL's `generation_kwargs` for vLLM rollouts, with PCL's stop ids (a new dict; `kwargs` is not changed).

    Teacher-forced rollouts stop at the marker: it is listed in `stop_token_ids`, since a base checkpoint's generation
    config does not know it yet. Generated rollouts (`answer MARKER SCORE EOS`) must write past it: `ignore_eos=True`
    keeps vLLM from reading the checkpoint's EOS ids (the marker among them), and the real EOS ids (`eos_ids`, the
    marker excluded) become `stop_token_ids` instead. A user's own `ignore_eos=True` is kept as it is (no EOS stop at
    all). Every other key (sampling parameters, the user's own stop ids) passes through unchanged.
    """
    kwargs = dict(kwargs or {})
    stop_ids = [i for i in kwargs.get("stop_token_ids") or [] if i != marker_id]
    if stop_at_marker:
        stop_ids.append(marker_id)
    elif not kwargs.get("ignore_eos", False):
        kwargs["ignore_eos"] = True
        stop_ids += [i for i in dict.fromkeys(eos_ids) if i not in stop_ids and i != marker_id]
    kwargs["stop_token_ids"] = stop_ids
    return kwargs


# ---- deploy mode --------------------------------------------------------------------------------------------------


def checkpoint_segment(path: str) -> tuple[PreTrainedTokenizerBase, SegmentTokens, float]:
    """The tokenizer, segment token ids and readout temperature of a saved PCL checkpoint, without loading weights."""
    from .marker import segment_tokens

    with open(os.path.join(path, "config.json")) as f:
        saved = json.load(f).get(CONFIG_KEY)
    if saved is None:
        raise ValueError(f"{path!r} was not trained with PCL: its config.json has no `{CONFIG_KEY}` entry.")
    known = set(SegmentFormat.__dataclass_fields__)
    fmt = SegmentFormat(**{k: tuple(v) if k == "reward_range" else v for k, v in saved.items() if k in known})
    tokenizer = AutoTokenizer.from_pretrained(path)
    if fmt.marker not in tokenizer.get_vocab():
        raise ValueError(f"The tokenizer saved in {path!r} lacks the marker {fmt.marker!r}.")
    tokens = segment_tokens(tokenizer, fmt, GenerationConfig.from_pretrained(path))
    return tokenizer, tokens, float(saved.get("readout_temperature", 1.0))


def answer_sampling_kwargs(tokens: SegmentTokens, **sampling) -> dict:
    """`SamplingParams` keyword arguments for deploy-mode answers: stop at the marker (explicitly, on top of the saved
    generation config), plus any sampling parameters given."""
    stop_ids = [i for i in sampling.pop("stop_token_ids", None) or [] if i != tokens.marker_id]
    return {**sampling, "stop_token_ids": [*stop_ids, tokens.marker_id]}


def score_prompt_ids(prompt_ids: Sequence[int], answer_ids: Sequence[int], tokens: SegmentTokens) -> list[int]:
    """The prompt of a self-score request: `prompt + answer + MARKER [prefix]`, as `pcl.readout` reads it.

    `answer_ids` are the generated ids as vLLM returns them: a trailing marker or EOS id (where the answer stopped) is
    replaced by the marker, so an answer that stopped at EOS is scored after `answer MARKER` like in training.
    """
    answer = list(answer_ids)
    if answer and (answer[-1] == tokens.marker_id or answer[-1] in tokens.eos_ids):
        answer = answer[:-1]
    return [*prompt_ids, *answer, tokens.marker_id, *tokens.prefix_ids]


def score_sampling_kwargs(tokens: SegmentTokens) -> dict:
    """`SamplingParams` keyword arguments for a self-score request: one greedy step over the level tokens only.

    Run on an engine built with `logprobs_mode="processed_logprobs"`: vLLM then reports the log-softmax of the logits
    masked to `allowed_token_ids`, so every level gets a (finite) logprob in the top `len(levels)`. With the default
    raw logprobs, levels outside the vocabulary-wide top-k would be missing ([`self_score_from_logprobs`] refuses that).
    Processed logprobs also include the penalties, so they are pinned to neutral: `vllm serve` fills a field the
    request leaves unset from the checkpoint's generation config (Qwen2.5 instruct models set `repetition_penalty`
    1.05-1.1), and a repetition penalty would shift the level digits that occur in the prompt or answer.
    """
    levels = list(tokens.level_ids)
    neutral = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
    return {"max_tokens": 1, "temperature": 0.0, "logprobs": len(levels), "allowed_token_ids": levels, **neutral}


def self_score_from_logprobs(logprobs: Mapping, tokens: SegmentTokens, temperature: float = 1.0) -> float:
    """The expected normalised level `sum_k p_k * k / (levels - 1)` from one position's logprobs.

    `logprobs` maps token ids to logprobs (floats, or vLLM `Logprob` objects with a `.logprob`), e.g.
    `output.outputs[0].logprobs[0]`. Log-probs normalised over any token set that holds the levels (the levels alone,
    or the whole vocabulary) differ from the logits by a constant, so `softmax(logprob / temperature)` over the levels is
    `pcl.readout`'s `softmax(logit / temperature)`.
    """
    values = []
    for i in tokens.level_ids:
        if i not in logprobs:
            raise ValueError(
                f"The logprobs lack the score level token {i}: request the score with `score_sampling_kwargs` "
                "(`allowed_token_ids` = the levels) on an engine built with `logprobs_mode='processed_logprobs'`."
            )
        value = logprobs[i]
        values.append(float(getattr(value, "logprob", value)) / temperature)
    top = max(values)
    weights = [math.exp(v - top) for v in values]
    total = sum(weights)
    n = len(values)
    return min(1.0, max(0.0, sum(w * k / (n - 1) for k, w in enumerate(weights)) / total))
