# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""One forward pass per batch over `prompt + answer + MARKER [prefix]`, keeping every number a confidence source needs.

[`answer_features`] returns, per answer: the log-probs of its tokens and of the stop token (the marker, where a PCL
model stops), the hidden state at the answer end, and the score levels' distribution after the marker (and prefix).
Every single-pass confidence source (`pcl.baselines`) is a pure function of these, so the model runs once for all of
them; `pcl.readout`'s public functions are thin wrappers over this module.
"""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .inference import Prompt, batches, encode_prompt, eval_mode, pad_id_of, pad_left, segment_tokens_of
from .marker import readout_temperature
from .segment import SegmentTokens


Completion = str | list[dict]


@dataclass
class AnswerFeatures:
    """Per-answer features from one forward pass over `prompt + answer + MARKER [prefix]`.

    Args:
        token_logprobs (`list[np.ndarray]`, *optional*): Per answer, the log-probs (float64) of the answer's tokens
            followed by the stop token (the marker), so `[-1]` is the stop token's and `[:-1]` the answer's own. Tokens
            with no context (the first kept token of an input cut at the model's length) are not scored.
        hidden (`np.ndarray`, *optional*): `(N, hidden_size)` float32: the last layer's hidden state, as the LM head
            reads it (after the final norm), at the answer's last token (the position that predicts the marker).
        level_probs (`np.ndarray`, *optional*): `(N, levels)`: the score levels' softmax right after `MARKER [prefix]`,
            at the readout temperature.
    """

    token_logprobs: list[np.ndarray] | None = None
    hidden: np.ndarray | None = None
    level_probs: np.ndarray | None = None

    def __len__(self) -> int:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                return len(value)
        return 0

    def select(self, indices: Sequence[int] | np.ndarray) -> "AnswerFeatures":
        """The features of the answers at `indices` (e.g. a train or test split), in that order."""
        indices = np.asarray(indices, dtype=int) if not isinstance(indices, np.ndarray) else indices
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        return AnswerFeatures(
            token_logprobs=None if self.token_logprobs is None else [self.token_logprobs[i] for i in indices],
            hidden=None if self.hidden is None else self.hidden[indices],
            level_probs=None if self.level_probs is None else self.level_probs[indices],
        )


def completion_text(completion: Completion) -> str:
    # Conversational completions are a list of messages; the answer is the last (assistant) message
    return completion if isinstance(completion, str) else completion[-1]["content"]


def max_length_of(model: PreTrainedModel) -> int | None:
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def answer_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, completion: Completion, tokens: SegmentTokens
) -> tuple[list[int], int]:
    """Ids of `prompt + completion + MARKER`, and how many of them are completion tokens (the marker included)."""
    text = completion_text(completion)
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


def truncate_left(rows: list[list[int]], max_length: int | None) -> list[list[int]]:
    if max_length is None or all(len(r) <= max_length for r in rows):
        return rows
    warnings.warn(
        f"Some inputs are longer than the model's {max_length} positions; their beginning (of the prompt) is cut off."
    )
    return [r[-max_length:] for r in rows]


def check_pairs(prompts: Sequence, completions: Sequence) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions; pass one per prompt.")


def answer_features(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    *,
    batch_size: int = 32,
    tokens: SegmentTokens | None = None,
    temperature: float | None = None,
    logprobs: bool = True,
    hidden_states: bool = True,
    levels: bool = True,
    show_progress: bool = False,
) -> AnswerFeatures:
    """[`AnswerFeatures`] of each `(prompt, completion)` pair, from one forward pass per left-padded batch.

    The logits are the model's own output (`model(...).logits`), so whatever its forward applies (Gemma 2's
    `final_logit_softcapping`, Cohere's `logit_scale`...) is applied here too. Only the positions needed are kept
    (`logits_to_keep`). `logprobs`, `hidden_states` and `levels` switch the three kinds of features off when not needed
    (a level readout alone keeps the logits of one position). `temperature` divides the level logits (default: the
    `readout_temperature` saved in the model's config, else 1.0); it does not touch the token log-probs.
    """
    check_pairs(prompts, completions)
    tokens = segment_tokens_of(model, tokenizer, tokens)
    temperature = readout_temperature(model) if temperature is None else float(temperature)
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}.")
    n_prefix = len(tokens.prefix_ids)
    pairs = [answer_ids(tokenizer, p, c, tokens) for p, c in zip(prompts, completions, strict=True)]
    rows = truncate_left([[*ids, *tokens.prefix_ids] for ids, _ in pairs], max_length_of(model))
    # Scored tokens: the completion's and the marker; the first kept token has no context to be scored from
    counts = [max(0, min(n, len(row) - n_prefix - 1)) for (_, n), row in zip(pairs, rows, strict=True)]
    if hidden_states and any(len(row) < n_prefix + 2 for row in rows):
        raise ValueError("An input has no token before the marker (empty prompt and answer): it has no answer end.")
    head = model.get_output_embeddings() if hidden_states else None
    if hidden_states and head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head) to read the hidden state from.")
    pad_id = pad_id_of(tokenizer, tokens)
    level_ids = torch.as_tensor(tokens.level_ids, device=model.device)
    out = AnswerFeatures(
        token_logprobs=[None] * len(rows) if logprobs else None,
        hidden=None,
        level_probs=np.zeros((len(rows), len(tokens.level_ids))) if levels else None,
    )
    hidden_rows = [None] * len(rows)
    captured = {}

    def keep_head_input(module, args):
        # The LM head's input is the last layer's (final-normed) hidden state of the kept positions
        captured["hidden"] = args[0]

    handle = head.register_forward_pre_hook(keep_head_input) if hidden_states else None
    try:
        with eval_mode(model):
            for idx in batches(len(rows), batch_size, show_progress, "answer features"):
                input_ids, attention_mask = pad_left([rows[i] for i in idx], pad_id, model.device)
                # Positions count real tokens only, so a row's numbers do not depend on the padding of its batch
                position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
                # Left padding puts every answer at the end: keep from the first scored token's context on
                keep = 1
                if hidden_states:
                    keep = n_prefix + 2
                if logprobs:
                    keep = max(keep, max(counts[i] for i in idx) + n_prefix + 1)
                logits = model(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=keep
                ).logits
                if levels:
                    level_logits = logits[:, -1].index_select(-1, level_ids).float() / temperature
                    out.level_probs[idx.start : idx.stop] = level_logits.softmax(-1).cpu().double().numpy()
                if hidden_states:
                    answer_end = captured.pop("hidden")[:, -(n_prefix + 2)].float().cpu().numpy()
                    for j, i in enumerate(idx):
                        hidden_rows[i] = answer_end[j]
                if logprobs:
                    width = input_ids.size(1)
                    for j, i in enumerate(idx):
                        n = counts[i]
                        # Targets at [width - P - n, width - P), each predicted by the position before it
                        targets = input_ids[j, width - n_prefix - n : width - n_prefix]
                        # One row at a time in float32, so the (batch, length, vocab) log-softmax never materialises
                        row_logits = logits[j, logits.size(1) - n_prefix - n - 1 : logits.size(1) - n_prefix - 1]
                        row_logits = row_logits.float()
                        logp = row_logits.gather(-1, targets[:, None]).squeeze(-1) - row_logits.logsumexp(-1)
                        out.token_logprobs[i] = logp.cpu().double().numpy()
    finally:
        if handle is not None:
            handle.remove()
    if hidden_states:
        out.hidden = np.stack(hidden_rows).astype(np.float32) if rows else np.zeros((0, 0), dtype=np.float32)
    return out
