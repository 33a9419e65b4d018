# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The self-assessment segment: `MARKER [prefix] SCORE EOS`, appended after a completion.

This module knows how a segment is written (from a reward), found (in `input_ids`, vectorised, packed rows included)
and read back (from text or token ids). It holds no model state; `pcl.marker` sets up the tokenizer and the model.
"""

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


DEFAULT_MARKER = "<|post_completion|>"


@dataclass(frozen=True)
class SegmentFormat:
    """How a self-assessment is written.

    The predicted reward is a score on a fixed grid of `levels` values, written as the integers `0 .. levels-1`; level
    `k` means a normalised reward of `k / (levels - 1)`. The true reward `r` is normalised with the declared range
    `(lo, hi)` as `(r - lo) / (hi - lo)` and rounded to the nearest level.

    Args:
        marker (`str`): The marker string, one special token.
        levels (`int`): Number of score levels (at least 2).
        prefix (`str`): Fixed text written between the marker and the score (may be empty).
        reward_range (`tuple[float, float]`): Declared range of the (weighted) reward.
        out_of_range (`str`): `"error"` to refuse rewards outside the range, `"clip"` to clip them into it.
    """

    marker: str = DEFAULT_MARKER
    levels: int = 10
    prefix: str = ""
    reward_range: tuple[float, float] = (0.0, 1.0)
    out_of_range: str = "error"

    def __post_init__(self):
        if not isinstance(self.marker, str) or not self.marker:
            raise ValueError("`self_assessment_marker` must be a non-empty string, e.g. '<|post_completion|>'.")
        if not isinstance(self.levels, int) or self.levels < 2:
            raise ValueError(
                f"`self_assessment_levels` must be an integer >= 2 (got {self.levels!r}): a score needs at least two "
                "levels (wrong/right)."
            )
        lo, hi = (float(x) for x in self.reward_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(
                f"`self_assessment_reward_range` must be two finite numbers (lo, hi) with hi > lo, got "
                f"{tuple(self.reward_range)}."
            )
        object.__setattr__(self, "reward_range", (lo, hi))
        if self.out_of_range not in ("error", "clip"):
            raise ValueError(f"`self_assessment_out_of_range` must be 'error' or 'clip', got {self.out_of_range!r}.")

    # ---- rewards -> levels -------------------------------------------------------------------------------------

    def level_texts(self) -> list[str]:
        return [str(k) for k in range(self.levels)]

    def level_value(self, level: int) -> float:
        return level / (self.levels - 1)

    def normalize(self, reward: float | None) -> float | None:
        """Normalise a reward into [0, 1]; `None` (or NaN, TRL's "not applicable") means "no reward"."""
        if reward is None or (isinstance(reward, float) and math.isnan(reward)):
            return None
        reward = float(reward)
        if math.isinf(reward):
            raise ValueError(f"Reward {reward} is infinite: reward functions and columns must be finite or None.")
        lo, hi = self.reward_range
        if reward < lo - 1e-6 or reward > hi + 1e-6:
            if self.out_of_range == "error":
                raise ValueError(
                    f"Reward {reward} is outside the declared `self_assessment_reward_range` {self.reward_range}. Fix "
                    "the range (for several reward functions it bounds their weighted sum), or pass "
                    "`self_assessment_out_of_range='clip'` to clip."
                )
            reward = min(max(reward, lo), hi)
        return min(max((reward - lo) / (hi - lo), 0.0), 1.0)

    def level_of(self, normalized: float) -> int:
        return int(round(normalized * (self.levels - 1)))

    def render(self, reward: float | None) -> str:
        """The segment text after the completion: marker, then (when a reward is known) prefix and score."""
        normalized = self.normalize(reward)
        if normalized is None:
            return self.marker
        return f"{self.marker}{self.prefix}{self.level_of(normalized)}"

    # ---- text -> score ----------------------------------------------------------------------------------------

    def parse(self, text: str) -> float | None:
        """Read a written score back as a normalised value; `None` when the text holds no valid level.

        Accepts the segment with or without the marker and prefix, e.g. `"7"`, `" 7"` or `"<marker>score: 7"`.
        """
        if text is None:
            return None
        if self.marker in text:
            text = text.split(self.marker, 1)[1]
        text = text.strip()
        prefix = self.prefix.strip()
        if prefix and text.startswith(prefix):
            text = text[len(prefix) :].strip()
        match = re.match(r"(\d+)(?!\d)", text)
        if match is None:
            return None
        level = int(match.group(1))
        return self.level_value(level) if level < self.levels else None


@dataclass(frozen=True)
class SegmentTokens:
    """Token ids of a [`SegmentFormat`] under one tokenizer (built by `pcl.marker.segment_tokens`)."""

    marker_id: int
    prefix_ids: tuple[int, ...]
    level_ids: tuple[int, ...]
    eos_id: int
    # Every id that ends a segment (the tokenizer's EOS and any other EOS of the model, never the marker)
    eos_ids: tuple[int, ...]

    def assessment_ids(self, level: int) -> list[int]:
        """Ids after the marker: prefix, score, EOS."""
        return [*self.prefix_ids, self.level_ids[level], self.eos_id]

    def parse_ids(self, ids: Sequence[int]) -> int | None:
        """Level written in the ids that follow a marker (`prefix SCORE EOS`), or `None` if malformed."""
        ids = list(ids)
        n = len(self.prefix_ids)
        if ids[:n] != list(self.prefix_ids) or len(ids) < n + 1:
            return None
        if ids[n] not in self.level_ids:
            return None
        # Anything but EOS (or the end of a truncated row) after the score is not a well-formed segment
        if len(ids) > n + 1 and ids[n + 1] not in self.eos_ids:
            return None
        return self.level_ids.index(ids[n])


def document_starts(input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the first token of every document: the first column, and every `position_ids == 0` (packed
    and padding-free rows restart their positions at each document)."""
    starts = torch.zeros_like(input_ids, dtype=torch.bool)
    starts[..., 0] = True
    if position_ids is not None:
        starts |= position_ids == 0
    return starts


def segment_mask(
    input_ids: torch.Tensor, marker_id: int, eos_ids: Iterable[int], position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Boolean mask of self-assessment tokens: strictly after a marker, up to and including the next EOS.

    Works on padded and packed rows alike (each document's EOS closes its segment); vectorised with `cummax`. With
    `position_ids` (padding-free and packed batches), a document start also closes a segment, so a document truncated
    between its marker and its EOS does not spill segment weight into the next one.
    """
    positions = torch.arange(input_ids.size(-1), device=input_ids.device).expand_as(input_ids)
    is_marker = input_ids == marker_id
    is_eos = torch.isin(input_ids, torch.as_tensor(list(eos_ids), device=input_ids.device))
    last_marker = torch.where(is_marker, positions, -1).cummax(dim=-1).values
    last_eos = torch.where(is_eos, positions, -1).cummax(dim=-1).values
    # A token is in a segment when, among the tokens strictly before it, a marker came after the last EOS
    before = torch.full_like(last_marker[..., :1], -1)
    last_marker = torch.cat([before, last_marker[..., :-1]], dim=-1)
    last_eos = torch.cat([before, last_eos[..., :-1]], dim=-1)
    in_segment = last_marker > last_eos
    if position_ids is not None:
        # ... and that marker belongs to the token's own document (at or after the document's first token)
        starts = document_starts(input_ids, position_ids)
        last_start = torch.where(starts, positions, -1).cummax(dim=-1).values
        in_segment &= last_marker >= last_start
    return in_segment


def orphan_tail_mask(
    input_ids: torch.Tensor, tokens: "SegmentTokens", position_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Tokens at the start of a row or document that are the tail of a segment cut off from its marker.

    Packing that splits documents (`packing_strategy="bfd_split"` or `"wrapped"`) can start a chunk with the end of a
    segment (`SCORE EOS`, `prefix SCORE EOS` or a lone `EOS`) whose marker and answer went to the previous chunk. Such
    tokens carry no self-assessment signal (the answer they assess is not in their context), so PCL-SFT gives them
    weight 0 instead of training them as ordinary text. A document that genuinely starts with `level EOS` or `EOS`
    cannot be told apart from such a tail and loses those (at most `len(prefix) + 2`) tokens. Likewise a chunk that
    starts with the marker (its answer went to the previous chunk) gives its whole segment, up to and including the
    closing EOS, weight 0; a row made of nothing but a segment (empty prompt and answer) is one such row.
    """
    tail = [*tokens.prefix_ids, None, None]  # prefix, a level, an EOS
    n = len(tail)
    padded = torch.nn.functional.pad(input_ids, (0, n), value=-1)
    windows = padded.unfold(-1, n, 1)[..., : input_ids.size(-1), :]  # windows[..., t, j] = input_ids[..., t + j]
    levels = torch.as_tensor(tokens.level_ids, device=input_ids.device)
    eos = torch.as_tensor(tokens.eos_ids, device=input_ids.device)
    starts = document_starts(input_ids, position_ids)
    orphan = torch.zeros_like(starts)
    for length in range(1, n + 1):  # the tail's last `length` tokens sit at the start of a chunk
        pattern = tail[n - length :]
        match = starts.clone()
        for j, expected in enumerate(pattern):
            if j == length - 1:
                match &= torch.isin(windows[..., j], eos)
            elif j == length - 2:
                match &= torch.isin(windows[..., j], levels)
            else:
                match &= windows[..., j] == expected
        # Spread each match over its `length` tokens
        for j in range(length):
            orphan[..., j:] |= match[..., : input_ids.size(-1) - j]
    # A segment whose marker is the first token of its row or document: from the marker up to its closing EOS
    positions = torch.arange(input_ids.size(-1), device=input_ids.device).expand_as(input_ids)
    last_lead = torch.where(starts & (input_ids == tokens.marker_id), positions, -1).cummax(dim=-1).values
    last_start = torch.where(starts, positions, -1).cummax(dim=-1).values
    eos_before = torch.where(torch.isin(input_ids, eos), positions, -1).cummax(dim=-1).values
    eos_before = torch.cat([torch.full_like(eos_before[..., :1], -1), eos_before[..., :-1]], dim=-1)
    orphan |= (last_lead >= 0) & (last_lead == last_start) & (last_lead > eos_before)
    return orphan


def empty_segment_mask(input_ids: torch.Tensor, marker_id: int, eos_ids: Iterable[int]) -> torch.Tensor:
    """EOS tokens that directly follow a marker: the closing EOS of a row rendered without a reward."""
    is_eos = torch.isin(input_ids, torch.as_tensor(list(eos_ids), device=input_ids.device))
    after_marker = torch.zeros_like(is_eos)
    after_marker[..., 1:] = input_ids[..., :-1] == marker_id
    return is_eos & after_marker


def score_mask(input_ids: torch.Tensor, tokens: SegmentTokens, in_segment: torch.Tensor | None = None) -> torch.Tensor:
    """Positions of the score token (the level right before the segment's EOS) inside segments.

    Pass `in_segment` (from `segment_mask`) when the caller already has it, to avoid computing it twice.
    """
    if in_segment is None:
        in_segment = segment_mask(input_ids, tokens.marker_id, tokens.eos_ids)
    is_level = torch.isin(input_ids, torch.as_tensor(tokens.level_ids, device=input_ids.device))
    next_is_eos = torch.zeros_like(is_level)
    next_is_eos[..., :-1] = torch.isin(input_ids[..., 1:], torch.as_tensor(tokens.eos_ids, device=input_ids.device))
    return in_segment & is_level & next_is_eos
