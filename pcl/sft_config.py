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
    `self_assessment_reward_range`, `self_assessment_out_of_range`, `self_assessment_weight`). Only the parameter
    below is specific to SFT.

    Parameters:
        self_assessment_reward_column (`str`, *optional*, defaults to `"reward"`):
            Dataset column holding the reward of each row's completion. Rows with a reward train
            `completion MARKER SCORE EOS`; rows whose reward is `None` (or datasets without the column) train
            `completion MARKER` and put no loss after the marker.
        self_assessment_only_column (`str`, *optional*, defaults to `"self_assessment_only"`):
            Boolean dataset column flagging rows whose completion is the model's own sample (e.g. a greedy answer
            scored by a verifier): their answer is not trained, only the marker and the assessment.
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
