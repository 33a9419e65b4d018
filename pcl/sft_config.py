# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.

from dataclasses import dataclass, field

from trl import SFTConfig

from .self_assessment_config import SelfAssessmentArguments


@dataclass
class PCLSFTConfig(SFTConfig, SelfAssessmentArguments):
    r"""
    Configuration class for [`PCLSFTTrainer`] (dual-track SFT).

    Every parameter of [`~trl.SFTConfig`] is accepted unchanged; the self-assessment options are documented in
    [`SelfAssessmentArguments`] (`self_assessment_marker`, `self_assessment_levels`, `self_assessment_prefix`,
    `self_assessment_reward_range`, `self_assessment_out_of_range`, `self_assessment_weight`). Only the parameters
    below are specific to SFT.

    In PCL-SFT, `self_assessment_reward_range=None` (auto) takes the range from the train dataset when the trainer is
    built: `(min(0, lowest reward), max(1, highest reward))`, so rewards in `[0, 1]` keep their value and a wider
    column is normalised by its own extremes (never failing mid-run); the range used is saved in the model config.
    An eval row outside it is clipped to the end of the scale. An `IterableDataset` with a reward column needs a
    declared range (it cannot be scanned without being consumed).

    Parameters:
        self_assessment_reward_column (`str`, *optional*, defaults to `"reward"`):
            Dataset column holding the reward of each row's answer, beside any dataset format (prompt/completion,
            `text`, `messages`, pre-tokenized, ...). Rows with a reward train `answer MARKER SCORE EOS`; rows whose
            reward is `None` (or datasets without the column) train `answer MARKER` and put no loss after the marker.
            NaN, infinite or non-numeric rewards are refused.
        self_assessment_only_column (`str`, *optional*, defaults to `"self_assessment_only"`):
            Boolean dataset column flagging rows whose completion is the model's own sample (e.g. a greedy answer
            scored by a verifier): their answer is not trained, only the marker and the assessment. Flagged rows must
            be prompt/completion strings with a reward, and need `completion_only_loss` unset or True (the answer
            moves into the prompt); at `self_assessment_weight=0` they are dropped.
    """

    self_assessment_reward_column: str = field(
        default="reward", metadata={"help": "Dataset column with the reward of each row's completion (may be None)."}
    )

    self_assessment_only_column: str = field(
        default="self_assessment_only",
        metadata={"help": "Boolean column flagging rows whose answer is the model's own: train only the assessment."},
    )

    def __post_init__(self):
        super().__post_init__()
        # Loss paths that bypass PCL's weighting (`loss_type="dft"`, label smoothing, ...) are refused by the trainer,
        # after SFTTrainer's own checks, so that TRL's messages come first for inputs TRL itself rejects
        self._validate_self_assessment()
