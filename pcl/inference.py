# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Deploy mode: generate answers with a PCL checkpoint, which stops at the marker and never writes its assessment.

The marker is an EOS id of the saved generation config, so `generate()` stops there by itself. This module adds the
bookkeeping around it (why each answer stopped, how many tokens it cost) and a switch to let the model write its
segment anyway, to measure what the self-assessment would cost if it were generated.

The helpers `segment_tokens_of`, `encode_prompt` and `pad_left` are shared with `pcl.features` and `pcl.readout`.
"""

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from .marker import format_of, id_list, readout_temperature, segment_tokens
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
        self_score (`float`, *optional*): With `generate(..., self_score=True)`, the expected normalised score read
            from the generation's own KV cache right after the marker; answers that stopped at EOS are scored by one
            readout pass over `answer MARKER` (`None` for answers cut at `max_new_tokens`).
    """

    text: str
    num_tokens: int
    stop: str
    token_ids: list[int]
    tokens_after_marker: int
    self_score: float | None = None


class _ScoreAfterMarker(LogitsProcessor):
    """Reads the self-score during generation: after a row writes the marker, feed the prefix, then keep the score
    levels' distribution at the next step and stop the row. Costs `len(prefix) + 1` decoding steps per batch.

    The levels are read from the model's raw logits of the step (captured by a forward hook, see `capture`), not from
    the `scores` this processor receives: those have been through the generation config's processors
    (repetition_penalty, no_repeat_ngram_size, suppress_tokens...), which the separate readout never applies.
    """

    def __init__(self, tokens: SegmentTokens, prompt_len: int, temperature: float, batch: int, device):
        self.tokens, self.prompt_len, self.temperature = tokens, prompt_len, temperature
        self.level_ids = torch.as_tensor(tokens.level_ids, device=device)
        self.prefix = torch.as_tensor(tokens.prefix_ids, dtype=torch.long, device=device)
        self.values = torch.linspace(0, 1, len(tokens.level_ids), device=device)
        self.scores = [None] * batch
        self.raw = None

    @contextlib.contextmanager
    def capture(self, model: PreTrainedModel):
        """Keep the last position's logits of each forward of `model` (only the current step's, so no memory grows).

        The hook goes on the transformers model itself: a PEFT model's `generate` calls its base model's forward, never
        the wrapper's.
        """

        def hook(module, args, output):
            logits = output.logits if hasattr(output, "logits") else output[0]
            self.raw = logits[:, -1]

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        handle = base.register_forward_hook(hook)
        try:
            yield self
        finally:
            handle.remove()

    def _offsets(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Steps since each row's first marker (-1 where there is none yet)
        generated = input_ids[:, self.prompt_len :]
        if generated.size(1) == 0:
            return torch.full((input_ids.size(0),), -1, device=input_ids.device)
        is_marker = generated == self.tokens.marker_id
        first = torch.where(is_marker.any(-1), is_marker.int().argmax(-1), generated.size(1))
        return generated.size(1) - 1 - first

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        offsets = self._offsets(input_ids)
        n_prefix = len(self.prefix)
        for row in ((offsets >= 0) & (offsets < n_prefix)).nonzero().flatten().tolist():
            forced = torch.full_like(scores[row], float("-inf"))
            forced[self.prefix[offsets[row]]] = 0.0
            scores[row] = forced
        for row in (offsets == n_prefix).nonzero().flatten().tolist():
            if self.scores[row] is None:
                level_logits = self.raw[row].to(self.level_ids.device).index_select(-1, self.level_ids).float()
                probs = (level_logits / self.temperature).softmax(-1)
                self.scores[row] = (probs * self.values).sum().item()
        return scores

    def stopping(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        # A row is done once its score was read (the token chosen at that step is discarded)
        return self._offsets(input_ids) > len(self.prefix)


# ---- shared helpers (also used by pcl.features) ---------------------------------------------------------------------


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
    self_score: bool = False,
) -> list[Generation]:
    """Generate an answer for each prompt (a string or a list of chat messages), in left-padded batches.

    With `stop_at_marker=True` (deploy mode) the model's saved generation config decides where to stop; for a PCL
    checkpoint it lists the marker, so answers end there and cost no assessment tokens. With `stop_at_marker=False`
    the marker is removed from the stop ids, so the model goes on to write `[prefix] SCORE EOS` (to measure what the
    written self-assessment costs). With `self_score=True` (deploy mode only) each answer that stops at the marker also
    gets its self-score, read from the generation's KV cache: the same value as `pcl.readout.self_scores`, for
    `len(prefix) + 1` extra decoding steps per batch instead of a second pass over prompt and answer. Answers that stop
    at an EOS id get the same readout in a separate pass (their cache ends with EOS, not the marker). The score is read
    from the model's raw logits, so the generation config's logits processors and warpers (repetition penalty,
    suppressed tokens, temperature, top-k...) shape the answer but not its score, with or without sampling.
    """
    if self_score and not stop_at_marker:
        raise ValueError(
            "`self_score=True` reads the score in deploy mode (`stop_at_marker=True`): with `stop_at_marker=False` the "
            "model writes its score instead; parse it with `pcl.segment.SegmentTokens.parse_ids`."
        )
    for key in ("num_beams", "num_return_sequences"):
        value = getattr(model.generation_config, key, None) or 1
        if self_score and value > 1:
            raise ValueError(
                f"`self_score=True` reads one score per prompt while decoding, but the model's generation config sets "
                f"`{key}={value}`. Score those answers with `pcl.readout.self_scores`, or set "
                f"`model.generation_config.{key} = 1`."
            )
    tokens = segment_tokens_of(model, tokenizer, tokens)
    pad_id = pad_id_of(tokenizer, tokens)
    saved_eos = id_list(model.generation_config.eos_token_id)
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
            extra = {}
            if self_score:
                reader = _ScoreAfterMarker(
                    tokens, input_ids.size(1), readout_temperature(model), len(idx), model.device
                )
                # The marker stays a stop for the returned answers but not for `generate`: the reader stops each row
                extra = {
                    "eos_token_id": [i for i in stop_ids if i != tokens.marker_id],
                    "logits_processor": LogitsProcessorList([reader]),
                    "stopping_criteria": StoppingCriteriaList([_Stop(reader.stopping)]),
                    "max_new_tokens": max_new_tokens + len(tokens.prefix_ids) + 1,
                }
            with reader.capture(model) if self_score else contextlib.nullcontext():
                out = model.generate(input_ids=input_ids, attention_mask=attention_mask, **{**kwargs, **extra})
            batch = []
            for i, row in enumerate(out[:, input_ids.size(1) :].tolist()):
                gen = _to_generation(row[:max_new_tokens] if self_score else row, stop_ids, tokens, tokenizer)
                if self_score and gen.stop == "marker":
                    gen.self_score = reader.scores[i]
                batch.append(gen)
            if self_score:
                _score_eos_stops(model, tokenizer, [prompts[i] for i in idx], batch, tokens)
            results.extend(batch)
    return results


def _score_eos_stops(model, tokenizer, prompts: Sequence[Prompt], gens: list[Generation], tokens: SegmentTokens):
    """Answers that stopped at an EOS id instead of the marker (a model that has not learnt the marker stop yet, e.g.
    early in drop-in PCL-GRPO) are scored in the context PCL trains them in, `answer MARKER`, by one readout pass:
    their KV cache ends with EOS, which the score was never trained after."""
    from .readout import self_scores  # readout builds on this module

    rows = [i for i, g in enumerate(gens) if g.stop == "eos"]
    if rows:
        scores = self_scores(model, tokenizer, [prompts[i] for i in rows], [gens[i].text for i in rows], tokens=tokens)
        for i, score in zip(rows, scores, strict=True):
            gens[i].self_score = score


class _Stop(StoppingCriteria):
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, input_ids, scores, **kwargs):
        return self.fn(input_ids, scores)


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
