# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.

from dataclasses import MISSING, dataclass, field, fields

from trl import GRPOConfig

from .self_assessment_config import SelfAssessmentArguments


@dataclass
class PCLGRPOConfig(GRPOConfig, SelfAssessmentArguments):
    r"""
    Configuration class for [`PCLGRPOTrainer`] (online RL with post-completion learning).

    Every parameter of [`~trl.GRPOConfig`] is accepted unchanged; the self-assessment options are documented in
    [`SelfAssessmentArguments`]. The score target of each completion comes from the reward functions and
    `reward_weights`: by default (`self_assessment_reward_range=None`) each function is mapped to [0, 1] (reward models
    through a sigmoid, callables as they are or by their running range) and the weighted sum is normalised by the
    weights' bounds; with a declared range, the weighted sum of the raw rewards is normalised by it.

    Parameters:
        self_assessment_mode (`str`, *optional*, defaults to `"teacher_forced"`):
            - `"teacher_forced"`: the marker stops rollouts; after scoring, each completion gets
              `MARKER SCORE EOS` with its true reward, trained by an NLL term of weight `self_assessment_weight`
              from the same forward pass.
            - `"generated"` (the paper's white-box RL): the marker is not a stop, the model writes its own
              assessment, a Brier consistency reward `1 - (p - g)^2` scores it, and that reward's group-normalised
              advantage is applied to the assessment tokens only. With `use_vllm=True` PCL sets `ignore_eos=True`
              and lists the EOS ids (not the marker) as `stop_token_ids` in `generation_kwargs`, since vLLM would
              otherwise stop at every EOS id of the checkpoint's generation config, the marker included.
            - `"both"`: `"generated"` plus the teacher-forced NLL of the true score at the written score's position.
        self_assessment_backbone_grad (`float`, *optional*, defaults to `0.0`):
            Teacher-forced mode: scale of the segment loss's gradient into the model below the LM head (the body),
            from the positions after the stop (prefix, score, EOS). The LM-head rows always get the full gradient of
            `self_assessment_weight`, and the forward pass is unchanged. At `0.0` the score is trained as a readout of
            the hidden states the policy computes, which the segment term then cannot change: on a model that has
            never seen the segment (drop-in use), its large, noisy early gradient otherwise drowns GRPO's policy
            gradient in the shared body and lowers held-out accuracy (measured in `benchmarks/drop_in_control.py`).
            `1.0` trains the body on the segment too, as PCL-SFT does; consider it once the segment is warm (e.g.
            after a PCL-SFT stage). `0.0` is refused when the LM head's rows of the score levels are frozen (a PEFT
            adapter on tied embeddings, or with a marker that is an existing token): the score could not learn.
    """

    self_assessment_mode: str = field(
        default="teacher_forced",
        metadata={
            "help": "'teacher_forced' (append the true score), 'generated' (model writes it, Brier consistency "
            "reward), or 'both'.",
            "choices": ["teacher_forced", "generated", "both"],
        },
    )

    self_assessment_backbone_grad: float = field(
        default=0.0,
        metadata={
            "help": "Teacher-forced mode: scale of the segment loss's gradient into the model body (below the LM "
            "head). 0 keeps the segment from changing the policy's hidden states (safe drop-in); 1 trains the body too."
        },
    )

    @classmethod
    def from_grpo_config(cls, args: GRPOConfig) -> "PCLGRPOConfig":
        """A recipe's plain `GRPOConfig` as a `PCLGRPOConfig` with PCL's defaults, every value (derived ones too)
        kept exactly as the parent trainer would read it."""
        new = cls.__new__(cls)
        new.__dict__.update(args.__dict__)
        for f in fields(cls):
            if f.name not in new.__dict__:
                setattr(new, f.name, f.default_factory() if f.default is MISSING else f.default)
        new._validate_pcl()
        return new

    def __post_init__(self):
        super().__post_init__()
        self._validate_pcl()

    def _validate_pcl(self) -> None:
        self._validate_self_assessment()
        # SFTTrainer keeps its fused LM head under Liger (it turns Liger's fused cross-entropy off itself);
        # GRPOTrainer's Liger loss skips `_compute_loss`, where PCL adds the segment term
        if self.use_liger_kernel:
            raise ValueError(
                "`use_liger_kernel=True` is not supported by PCL-GRPO: Liger's fused GRPO loss bypasses the loss that "
                "PCL adds its self-assessment term to. Set `use_liger_kernel=False` (or use Hub kernels with "
                '`model_init_kwargs={"use_kernels": True}`).'
            )
        if self.self_assessment_mode not in ("teacher_forced", "generated", "both"):
            raise ValueError(
                "`self_assessment_mode` must be 'teacher_forced', 'generated' or 'both', got "
                f"{self.self_assessment_mode!r}."
            )
        scale = self.self_assessment_backbone_grad
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 <= scale < float("inf"):
            raise ValueError(
                f"`self_assessment_backbone_grad` must be a finite number >= 0 (0: the segment trains only the LM "
                f"head's rows, 1: the whole model), got {scale!r}."
            )
