# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Options shared by every PCL config: how the self-assessment segment is written and weighted."""

from dataclasses import dataclass, field

from .segment import DEFAULT_MARKER, SegmentFormat


@dataclass
class SelfAssessmentArguments:
    r"""
    Options of the self-assessment segment `MARKER [prefix] SCORE EOS`, mixed into [`PCLSFTConfig`] and
    [`PCLGRPOConfig`].

    Parameters:
        self_assessment_marker (`str`, *optional*, defaults to `"<|post_completion|>"`):
            Marker written after the answer. Must be one token: if the tokenizer lacks it, it is added as a special
            token and the embeddings are resized; naming an existing special (e.g. reserved) token of the base model
            avoids the resize. It becomes an EOS id of the saved model, so inference stops there.
        self_assessment_levels (`int`, *optional*, defaults to `10`):
            Number of score levels; level `k` (written as the integer `k`) means a normalised reward of
            `k / (levels - 1)`. Each level must be a single token (digits `0`-`9` are on every common tokenizer).
        self_assessment_prefix (`str`, *optional*, defaults to `""`):
            Fixed text between the marker and the score, e.g. `"confidence: "`.
        self_assessment_reward_range (`list[float]` or `None`, *optional*, defaults to `None`):
            How a reward becomes a score target in `[0, 1]`. `None` ("auto") never fails on a reward's scale: in
            PCL-GRPO each reward function's value is first mapped to `[0, 1]` (a reward model's raw score `s`, which
            TRL reads from `logits[:, 0]`, through `sigmoid(s)`, the Bradley-Terry probability of beating a score-0
            reference; a callable's value is taken as it is, and a callable that returns values outside `[0, 1]`
            widens its own running range, starting from `[0, 1]`, to the minimum and maximum it has returned so far
            over all processes, with a warning), then the weighted sum is normalised by the weights' bounds
            (`sum(min(w, 0))` to `sum(max(w, 0))` over the functions that returned a value), so two 0/1 rewards with
            weights `[1, 1]` map `[0, 2]` to `[0, 1]` and a single 0/1 reward maps to itself. A declared range
            `[lo, hi]` instead normalises the weighted sum of the raw rewards as `(r - lo) / (hi - lo)`, with
            `self_assessment_out_of_range` deciding what happens outside it.
        self_assessment_out_of_range (`str`, *optional*, defaults to `"error"`):
            What to do with a reward outside a declared `self_assessment_reward_range`: `"error"` (refuse) or
            `"clip"`. Unused in auto mode.
        self_assessment_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the teacher-forced loss on the assessment tokens (score and closing EOS). What `0.0` guarantees
            depends on the trainer; for PCL-SFT see [`PCLSFTTrainer`]. In PCL-GRPO, weight `0.0` gives the same loss
            and gradients as `GRPOTrainer._compute_loss` on the same batch and the same (marker-resized) model (in
            teacher-forced mode a `peft_config` is used as given, so the same parameters train),
            except for the EOS and marker LM-head rows under DeepSpeed ZeRO-3. The rollouts are not the parent's,
            though: a newly added marker is a stop whose output row starts as a copy of EOS's, so before training the
            stop probability `p(EOS)` becomes `p(EOS) + p(marker)`, about `2 * p(EOS)` when it is small. Naming an
            existing (reserved) special token of the base model as the marker avoids the resize and the copied row.
    """

    self_assessment_marker: str = field(
        default=DEFAULT_MARKER,
        metadata={"help": "Marker written after the answer; one (special) token, added to the tokenizer if missing."},
    )
    self_assessment_levels: int = field(
        default=10,
        metadata={"help": "Number of score levels; level k means a normalised reward of k / (levels - 1)."},
    )
    self_assessment_prefix: str = field(
        default="", metadata={"help": "Fixed text between the marker and the score, e.g. 'confidence: '."}
    )
    self_assessment_reward_range: list[float] | None = field(
        default=None,
        metadata={
            "help": "Declared range [lo, hi] of the (weighted) reward, used to normalise it into [0, 1]. None (auto): "
            "reward models through a sigmoid, callables in [0, 1] or their own running range, the weighted sum "
            "normalised by the weights' bounds."
        },
    )
    self_assessment_out_of_range: str = field(
        default="error",
        metadata={
            "help": "Reward outside a declared range: 'error' or 'clip' (unused in auto mode).",
            "choices": ["error", "clip"],
        },
    )
    self_assessment_weight: float = field(
        default=1.0, metadata={"help": "Weight of the teacher-forced loss on the assessment tokens."}
    )

    def _validate_self_assessment(self) -> None:
        self.segment_format  # noqa: B018 -- builds and validates the format
        if not self.self_assessment_weight >= 0.0:
            raise ValueError(f"`self_assessment_weight` must be >= 0, got {self.self_assessment_weight}.")

    @property
    def self_assessment_auto_range(self) -> bool:
        """Whether rewards are normalised automatically (`self_assessment_reward_range=None`)."""
        return self.self_assessment_reward_range is None

    @property
    def segment_format(self) -> SegmentFormat:
        """The segment format; in auto mode its `reward_range` is `(0.0, 1.0)`, the range of the mapped rewards."""
        reward_range = self.self_assessment_reward_range
        if reward_range is None:
            reward_range = (0.0, 1.0)
        elif len(reward_range) != 2:
            raise ValueError(f"`self_assessment_reward_range` must be [lo, hi] or None, got {reward_range}.")
        return SegmentFormat(
            marker=self.self_assessment_marker,
            levels=self.self_assessment_levels,
            prefix=self.self_assessment_prefix,
            reward_range=tuple(reward_range),
            out_of_range=self.self_assessment_out_of_range,
        )
