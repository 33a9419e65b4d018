# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Contract tests: the TRL internals PCL's subclasses rely on. A failure here means TRL moved something PCL hooks
into; update the subclass (and the pinned TRL range in pyproject.toml) before trusting training results."""

import inspect

import trl
from packaging.version import Version
from trl import GRPOTrainer, SFTTrainer
from trl.trainer import grpo_trainer as grpo_module
from trl.trainer import utils as trl_utils


def params(fn):
    return list(inspect.signature(fn).parameters)


def source(fn):
    return inspect.getsource(fn)


def test_tested_trl_range():
    assert Version("1.16") <= Version(trl.__version__) < Version("1.17")


def test_grpo_override_points():
    assert params(GRPOTrainer._calculate_rewards) == [
        "self",
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]
    assert params(GRPOTrainer._generate_and_score_completions) == ["self", "inputs"]
    assert params(GRPOTrainer._compute_loss) == ["self", "model", "inputs"]
    logps = params(GRPOTrainer._get_per_token_logps_and_entropies)
    assert logps[:5] == ["self", "model", "input_ids", "attention_mask", "logits_to_keep"]


def test_grpo_loss_masks_with_tool_mask_and_accepts_token_advantages():
    src = source(GRPOTrainer._compute_loss)
    # PCL keeps the segment out of every policy term by setting tool_mask = 0 on it
    assert 'mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]' in src
    # Generated mode feeds (B, T) advantages
    assert "if advantages.dim() == 1:" in src
    # The segment NLL is normalised like the DAPO term and scaled for gradient accumulation by hand
    assert 'inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes' in src
    assert "self.current_gradient_accumulation_steps / self.args.steps_per_generation" in src
    assert GRPOTrainer.loss_is_scaled_for_ga


def test_grpo_fused_head_and_eos_handling():
    src = source(GRPOTrainer._get_per_token_logps_and_entropies)
    assert "fused_lm_head=True" in src and "labels[:, :-logits_to_keep] = -100" in src
    init = source(GRPOTrainer.__init__)
    assert "self.eos_token_ids = eos_token_ids" in init and "temperature=self.temperature" in init
    assert '"eos_token_id": self.eos_token_ids' in init
    assert "self.generation_kwargs = generation_kwargs" in init
    gen = source(GRPOTrainer._generate_single_turn)
    assert "torch.isin(completion_ids, torch.tensor(self.eos_token_ids" in gen
    score = source(GRPOTrainer._generate_and_score_completions)
    for key in (
        '"completion_mask": completion_mask',
        '"advantages": advantages',
        "rewards_per_func = self._calculate_rewards(",
    ):
        assert key in score
    assert callable(trl_utils.maybe_gather_lm_head_ctx)


def test_sft_loss_reads_fused_log_probs():
    src = source(SFTTrainer.compute_loss)
    assert "outputs = model(**inputs, fused_lm_head=True)" in src
    assert "per_token_loss = -outputs.log_probs" in src
    init = source(SFTTrainer.__init__)
    assert 'outputs=("log_probs", "entropy", "is_top1")' in init


def test_grpo_internals_of_the_drop_in_layout_and_rewards():
    init = source(GRPOTrainer.__init__)
    # The reference (and a policy given by name) come from `create_model_from_path`, looked up in TRL's module
    # namespace, before TRL wraps them: PCL resizes them for the marker as they are created
    assert "self.ref_model = create_model_from_path(" in init
    assert callable(grpo_module.create_model_from_path)
    assert "if reward_funcs is None:\n            reward_funcs = []" in init
    assert "self.reward_func_names.append(get_callable_name(reward_funcs[i]))" in init
    assert "is_async_callable(func) for func in self.reward_funcs" in init
    assert "self.num_generations_eval = args.num_generations_eval or self.num_generations" in init
    # The policy loss reads the log-probs PCL hands back (log p(EOS) substituted at a replaced stop), also as "old"
    loss = source(GRPOTrainer._compute_loss)
    assert "old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None" in loss
    # TRL's advantage scaling, which the generated mode's consistency advantages mirror
    score = source(GRPOTrainer._generate_and_score_completions)
    assert "std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)" in score
    assert "std_rewards = nanstd(rewards).expand_as(rewards)" in score
    assert 'num_generations = self.num_generations if mode == "train" else self.num_generations_eval' in score
    # Checkpoint hooks that carry the running reward ranges
    assert params(GRPOTrainer._save_checkpoint) == ["self", "model", "trial"]
    assert params(GRPOTrainer._load_optimizer_and_scheduler) == ["self", "checkpoint"]


def test_fused_head_logit_transform_matches_pcl_head():
    """`pcl.head` applies the model's logit transforms in the order TRL's fused head does: scale, soft-cap, 1/T."""
    from trl.kernels import chunked_logprob

    src = source(chunked_logprob._torch_transform)
    assert src.index("z * logit_scale") < src.index("softcap * torch.tanh(z / softcap)") < src.index("z * inv_t")
    fused = source(trl_utils.add_fused_lm_head)
    for key in ('"final_logit_softcapping"', '"logit_scale"', '"output_multiplier"', '"lm_head_multiplier"'):
        assert key in fused
    assert 'logits_scaling if text_config.model_type == "hyperclovax" else 1 / logits_scaling' in fused
