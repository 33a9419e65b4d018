# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Post-Completion Learning for TRL: train a model to predict its own reward after its answer, for free at inference."""

from .grpo_config import PCLGRPOConfig
from .grpo_trainer import PCLGRPOTrainer
from .marker import load_pcl_model, prepare_model
from .segment import SegmentFormat, SegmentTokens
from .self_assessment_config import SelfAssessmentArguments
from .sft_config import PCLSFTConfig
from .sft_trainer import PCLSFTTrainer


__version__ = "0.1.0"

__all__ = [
    "PCLGRPOConfig",
    "PCLGRPOTrainer",
    "PCLSFTConfig",
    "PCLSFTTrainer",
    "SegmentFormat",
    "SegmentTokens",
    "SelfAssessmentArguments",
    "load_pcl_model",
    "prepare_model",
]
