# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Deploy mode: generate answers with a PCL checkpoint, which stops at the marker and never writes its assessment.

The marker is an EOS id of the saved generation config, so `generate()` stops there by itself. This module adds the
bookkeeping around it (why each answer stopped, how many tokens it cost) and a switch to let the model write its
segment anyway, to measure what the self-assessment would cost if it were generated.

The helpers `segment_tokens_of`, `encode_prompt` and `pad_left` are shared with `pcl.readout`.
"""

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .marker import format_of, segment_tokens
from .segment import SegmentTokens


Prompt = str | list[dict]


@dataclass
class Generation:
    """One generated answer.

    Args:
        text (`str`): The answer, decoded up to (not including) the first marker or EOS.
        num_tokens (`int`): Generated tokens, the stop token included.
        stop (`str`): Why generation ended: `"marker"`, `"eos"` or `"length"` (`max_new_tokens` reached).
        token_ids (`list[int]`): The generated ids (padding removed).
        tokens_after_marker (`int`): Tokens generated after the first marker (0 in deploy mode).
    """

    text: str
    num_tokens: int
    stop: str
    token_ids: list[int]
    tokens_after_marker: int


# ---- shared helpers (also used by pcl.readout) ---------------------------------------------------------------------


def segment_tokens_of(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tokens: SegmentTokens | None = None
) -> SegmentTokens:
    """`tokens` when given, else the segment ids of the format saved in the model's config."""
    if tokens is not None:
        return tokens
    return segment_tokens(tokenizer, format_of(model), model)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, completion: str = "") -> list[int]:
    """Token ids of `prompt + completion`, tokenised as the PCL/TRL trainers do.

    A string is tokenised whole with the tokenizer's default special tokens (TRL calls `tokenizer(text=...)`, so BOS
    is added where the tokenizer adds one). A conversation is rendered with the generation prompt, and the completion
    is appended as raw text: rendering it as an assistant message would close the turn with EOS.
    """
    if isinstance(prompt, str):
        return tokenizer(prompt + completion)["input_ids"]
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    # The rendered template already holds its special tokens (BOS etc.)
    return tokenizer(text + completion, add_special_tokens=False)["input_ids"]


def pad_left(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into `(input_ids, attention_mask)`: the last column is every row's last real token."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row) :] = torch.as_tensor(list(row), dtype=torch.long)
            attention_mask[i, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def pad_id_of(tokenizer: PreTrainedTokenizerBase, tokens: SegmentTokens) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokens.eos_id


def batches(n: int, batch_size: int, show_progress: bool, desc: str) -> Iterator[range]:
    """Index ranges of consecutive batches, with a tqdm bar over batches."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc=desc, disable=not show_progress, total=len(starts)):
        yield range(start, min(start + batch_size, n))


@contextlib.contextmanager
def eval_mode(model: PreTrainedModel):
    """`model.eval()` and `torch.no_grad()`, restoring training mode afterwards (e.g. when called mid-training)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _as_list(ids) -> list[int]:
    return [ids] if isinstance(ids, int) else list(ids or [])


# ---- deploy mode ---------------------------------------------------------------------------------------------------


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    stop_at_marker: bool = True,
    show_progress: bool = True,
    tokens: SegmentTokens | None = None,
) -> list[Generation]:
    """Generate an answer for each prompt (a string or a list of chat messages), in left-padded batches.

    With `stop_at_marker=True` (deploy mode) the model's saved generation config decides where to stop; for a PCL
    checkpoint it lists the marker, so answers end there and cost no assessment tokens. With `stop_at_marker=False`
    the marker is removed from the stop ids, so the model goes on to write `[prefix] SCORE EOS` (to measure what the
    written self-assessment costs).
    """
    tokens = segment_tokens_of(model, tokenizer, tokens)
    pad_id = pad_id_of(tokenizer, tokens)
    saved_eos = _as_list(model.generation_config.eos_token_id)
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": pad_id}
    if do_sample:
        kwargs["temperature"] = temperature
    if stop_at_marker:
        if tokens.marker_id not in saved_eos:
            warnings.warn(
                f"The model's generation config does not list the marker id {tokens.marker_id} as an EOS id, so "
                "generation will not stop at the marker. Save the model with `pcl.marker.prepare_model`."
            )
        stop_ids = set(saved_eos)
    else:
        eos = [i for i in dict.fromkeys([*saved_eos, *tokens.eos_ids]) if i != tokens.marker_id]
        kwargs["eos_token_id"] = eos
        stop_ids = set(eos)

    results: list[Generation] = []
    with eval_mode(model):
        for idx in batches(len(prompts), batch_size, show_progress, "generate"):
            input_ids, attention_mask = pad_left(
                [encode_prompt(tokenizer, prompts[i]) for i in idx], pad_id, model.device
            )
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            for row in out[:, input_ids.size(1) :].tolist():
                results.append(_to_generation(row, stop_ids, tokens, tokenizer))
    return results


def _to_generation(
    row: list[int], stop_ids: set[int], tokens: SegmentTokens, tokenizer: PreTrainedTokenizerBase
) -> Generation:
    # `generate` pads rows that finished early; a row ends at its first stop id (pad may equal EOS)
    end = next((j + 1 for j, t in enumerate(row) if t in stop_ids), len(row))
    ids = row[:end]
    last = ids[-1] if ids else None
    if last == tokens.marker_id and last in stop_ids:
        stop = "marker"
    elif last in stop_ids:
        stop = "eos"
    else:
        stop = "length"
    answer_end = next((j for j, t in enumerate(ids) if t == tokens.marker_id or t in stop_ids), len(ids))
    marker_at = ids.index(tokens.marker_id) if tokens.marker_id in ids else None
    return Generation(
        text=tokenizer.decode(ids[:answer_end], skip_special_tokens=True),
        num_tokens=len(ids),
        stop=stop,
        token_ids=ids,
        tokens_after_marker=0 if marker_at is None else len(ids) - marker_at - 1,
    )


def marker_leak_check(generations: Sequence[Generation]) -> dict:
    """How many generations wrote tokens after the marker (should be 0 in deploy mode)."""
    n = len(generations)
    k = sum(g.tokens_after_marker > 0 for g in generations)
    return {"n": n, "with_tokens_after_marker": k, "share": k / n if n else 0.0}
