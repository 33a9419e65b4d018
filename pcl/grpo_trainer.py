# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.

import os

import torch
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer
from trl.trainer import grpo_trainer as grpo_module

from .adapters import expose_head_bias, fix_vllm_sync_names, is_peft_model, marker_rows, save_adapter_format
from .grpo_config import PCLGRPOConfig
from .grpo_layout import append_segments, consistency_rewards, group_advantages, split_at_marker, written_segments
from .marker import CONFIG_KEY, attach_hook, prepare_model, resolve_args_and_tokenizer, segment_tokens, text_tokenizer
from .model_card import PCLModelCard
from .reward_targets import REWARD_STATE as REWARD_STATE  # the checkpoint file's name, importable from here as before
from .reward_targets import RewardTargets
from .segment_loss import SegmentLoss, check_score_trains, metric_sums
from .sft_trainer import PAPER
from .validation import check_prompts, checked_reward_func
from .vllm_requests import rollout_sampling_kwargs


class PCLGRPOTrainer(PCLModelCard, GRPOTrainer):
    """
    GRPO with [Post-Completion Learning](https://huggingface.co/papers/2507.20252): after each rollout is scored, the
    model is also trained to predict that score in a segment `MARKER [prefix] SCORE EOS` after its answer.

    With `self_assessment_mode="teacher_forced"` (default) the marker stops the rollouts, the segment is appended with
    the completion's true reward, and an NLL term of weight `self_assessment_weight` trains it from the same forward
    pass as the policy loss. The policy loss (every `loss_type`, KL, entropy, importance sampling) sees only the
    completion: the segment is attended but carries `tool_mask = 0`. A rollout that stops at EOS instead (any model
    before PCL training) is laid out as `answer MARKER [prefix] SCORE EOS` too, its EOS replaced by the marker, so the
    score is trained where the readout reads it (`prompt + answer + MARKER`). That position stays a policy token: the
    policy loss gets log p(EOS) there, computed from the same forward as log p(MARKER) + (z_EOS - z_MARKER) / T. At
    every stop the segment NLL gets the marker's share of the stop mass, log p(MARKER) / (p(MARKER) + p(EOS ids)): it
    teaches which stop token to write, never whether to stop (that is the policy's); it trains the LM head's rows and
    the model below it (no gradient there while the marker's row is EOS's copy, as after a drop-in resize; under
    ZeRO-3, whose gathered head is read detached, only the model below it). The segment after the stop trains the LM
    head's rows and, scaled by `self_assessment_backbone_grad` (default 0), the model below it, so by default only the
    stop term can move the hidden states the policy computes. With `"generated"` the model
    writes its own assessment, a Brier consistency reward scores it, and that reward's advantage applies to the
    segment tokens only.

    Rewards of any scale are accepted (see `self_assessment_reward_range` in [`SelfAssessmentArguments`]); with
    `self_assessment_weight=0` the loss and gradients on a given batch are the parent's and PCL adds no reward checks,
    but a newly added marker changes the rollouts (see `self_assessment_weight` there). The logged `loss` includes
    the segment term; `self_assessment/loss` is that term alone, so the policy loss is their difference.

    Overridden: `__init__` (marker token, on a processor's tokenizer for vision-language models; the model resized
    for it before the parent wraps it, with trainable marker rows under `peft_config` and a vLLM weight sync that
    keeps them: see `pcl.adapters`; stop id, reward targets, the segment loss's hook on the backbone; a plain
    `GRPOConfig` is converted),
    `_calculate_rewards` (keep the score targets; in generated mode hide the segment from the task rewards),
    `_generate_and_score_completions` (lay out the segment: `pcl.grpo_layout`), `_get_per_token_logps_and_entropies`
    and `_compute_loss` (add the segment loss, substitute log p(EOS) at replaced stops: `pcl.segment_loss`),
    `_save_checkpoint` / `_load_optimizer_and_scheduler` (running reward ranges: `pcl.reward_targets`), `_save` (the
    format beside a PEFT adapter), `create_model_card` / `save_model` (PCL's section of the model card, saved beside
    every saved model; [`~pcl.model_card.PCLModelCard`]). Everything else is inherited from [`~trl.GRPOTrainer`], so
    existing GRPO recipes work by swapping the two class names.

    Example:

    ```python
    from datasets import load_dataset
    from pcl import PCLGRPOConfig, PCLGRPOTrainer
    from trl.rewards import accuracy_reward

    dataset = load_dataset("trl-lib/DeepMath-103K", split="train")
    trainer = PCLGRPOTrainer(
        model="Qwen/Qwen2.5-0.5B-Instruct",
        reward_funcs=accuracy_reward,
        args=PCLGRPOConfig(output_dir="out", self_assessment_weight=1.0),
        train_dataset=dataset,
    )
    trainer.train()
    ```

    Args:
        model, reward_funcs, args, train_dataset, eval_dataset, processing_class, reward_processing_classes,
        callbacks, optimizers, quantization_config, peft_config, tools, rollout_func, environment_factory:
            As for [`~trl.GRPOTrainer`], in the same order (`reward_funcs` may be `None` when an environment owns the
            reward); `args` is a [`PCLGRPOConfig`], or a `GRPOConfig` / `TrainingArguments` converted to one with
            PCL's defaults.
    """

    _tag_names = ["trl", "grpo", "pcl"]
    _name = "PCL-GRPO"
    _paper = PAPER

    def __init__(
        self,
        model,
        reward_funcs=None,
        args=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        rollout_func=None,
        environment_factory=None,
    ):
        if isinstance(args, GRPOConfig) and not isinstance(args, PCLGRPOConfig):
            args = PCLGRPOConfig.from_grpo_config(args)
        args, processing_class = resolve_args_and_tokenizer(
            model, args, PCLGRPOConfig, "PCL-GRPO", processing_class, processor=True
        )
        tokenizer = text_tokenizer(processing_class)  # a vision-language model's processor holds the tokenizer
        fmt = args.segment_format
        if args.self_assessment_mode == "both" and args.deepspeed_plugin is not None:
            if is_deepspeed_zero3_enabled():
                # Its NLL projects hidden states through the gathered LM head outside the head's own forward, which
                # ZeRO-3 cannot backpropagate into; the teacher-forced and generated modes read TRL's fused head only
                raise ValueError(
                    "`self_assessment_mode='both'` is not supported under DeepSpeed ZeRO-3. Use 'teacher_forced' or "
                    "'generated', or ZeRO-2."
                )
        marker_added = fmt.marker not in tokenizer.get_vocab()
        tokens = segment_tokens(tokenizer, fmt)  # adds the marker before the parent sets up generation
        strict = args.self_assessment_weight > 0  # with weight 0 the parent's input checks are the only ones
        if reward_funcs is not None and strict:
            reward_funcs = [
                checked_reward_func(f) for f in (reward_funcs if isinstance(reward_funcs, list) else [reward_funcs])
            ]
        # The policy and reference models are wrapped (PEFT, DeepSpeed, FSDP) inside the parent's __init__: give them
        # the marker row before, and a new marker trainable rows under `peft_config` (which GRPOTrainer does not do),
        # unless nothing trains the segment (teacher-forced at weight 0): then the parent's trained parameters
        train_rows = strict or args.self_assessment_mode != "teacher_forced"
        with marker_rows(grpo_module, model, tokenizer, tokens, peft_config, marker_added, train_rows) as peft_config:
            super().__init__(
                model, reward_funcs, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                processing_class=processing_class, reward_processing_classes=reward_processing_classes,
                callbacks=callbacks, optimizers=optimizers, quantization_config=quantization_config,
                peft_config=peft_config, tools=tools, rollout_func=rollout_func,
                environment_factory=environment_factory,
            )  # fmt: skip
        # After the parent's own input checks, so that TRL's error messages come first for what TRL refuses
        environment = environment_factory is not None
        check_prompts(train_dataset, fmt.marker, "train", environment)
        for name, ds in eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval", eval_dataset)]:
            check_prompts(ds, fmt.marker, name, environment)

        self._pcl_base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        expose_head_bias(self.model)  # a tied head under PEFT's trainable tokens, read by TRL's fused head
        self.segment_tokens = prepare_model(self._pcl_base, tokenizer, fmt)
        # The segment NLL comes from TRL's fused head, which divides the logits by `temperature`: the checkpoint
        # records it so the self-score readout uses the distribution that was trained
        getattr(self._pcl_base.config, CONFIG_KEY)["readout_temperature"] = self.temperature
        if self.ref_model is not None:
            prepare_model(getattr(self.ref_model, "module", self.ref_model), tokenizer, fmt)
        self._pcl_reward_targets = RewardTargets(
            fmt,
            self.reward_weights,
            [isinstance(f, torch.nn.Module) for f in self.reward_funcs],
            self.reward_func_names,
            auto=args.self_assessment_auto_range,
            strict=strict,
        )

        self._configure_stop_ids()
        if self.use_vllm and is_peft_model(self.model):
            fix_vllm_sync_names(self.vllm_generation)  # a trainable marker row would reach vLLM under PEFT's names
        # The segment loss reads LM-head rows from the policy loss's own forward, through a hook on the backbone
        self._pcl_loss = SegmentLoss(self._pcl_base, self.segment_tokens, self.temperature)
        attach_hook(self._pcl_base, self._pcl_loss.read_head_rows, module=self._pcl_base.base_model)
        check_score_trains(self._pcl_base, self.segment_tokens, args)

    def _configure_stop_ids(self) -> None:
        """Teacher-forced rollouts stop at the marker; generated ones must be free to write past it."""
        marker = self.segment_tokens.marker_id
        stop = self.args.self_assessment_mode == "teacher_forced"
        self.eos_token_ids = [i for i in self.eos_token_ids if i != marker] + ([marker] if stop else [])
        if self.use_vllm:
            # A copy, so that `args.generation_kwargs` (saved with the run) keeps what the user passed
            self.vllm_generation.generation_kwargs = rollout_sampling_kwargs(
                self.vllm_generation.generation_kwargs, marker, self.eos_token_ids, stop
            )
        else:
            self.generation_kwargs["eos_token_id"] = self.eos_token_ids
            self.generation_config.eos_token_id = self.eos_token_ids

    # ---- rollouts ------------------------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        generated = self.args.self_assessment_mode != "teacher_forced"
        if generated:  # the task rewards see the answer only, not the written assessment
            marker = self.segment_tokens.marker_id
            completions, completion_ids_list, self._pcl_written = split_at_marker(
                completions, completion_ids_list, marker, self._tokenizer
            )
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

        # Every process maps the same gathered rewards, so running ranges agree across ranks
        # Evaluation maps by the training ranges without widening them: the targets training uses must not depend on
        # how often (or on what) the run was evaluated
        mode = "train" if self.model.training else "eval"
        start = self.accelerator.process_index * len(prompts)
        targets = self._pcl_reward_targets(rewards_per_func, update=mode == "train")
        self._pcl_targets = targets[start : start + len(prompts)]
        self._pcl_completion_ids = [list(ids) for ids in completion_ids_list]
        fmt = self.args.segment_format
        for key, value in self._pcl_reward_targets.log_ranges.items():
            self._metrics[mode][key].append(value)
        levels = [None if t is None else fmt.level_of(t) for t in self._pcl_targets]
        self._log_completion_extra("self_assessment_target", levels)
        if generated:
            written = [None if s is None else self.segment_tokens.parse_ids(s) for s in self._pcl_written]
            self._log_completion_extra("self_assessment_written", written)
            self._pcl_written_levels = written
            consistency = consistency_rewards(self._pcl_targets, written, fmt)
            self._pcl_consistency = self.accelerator.gather(torch.tensor(consistency, device=self.accelerator.device))
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.args.self_assessment_mode == "teacher_forced":
            self._append_segments(output)
        else:
            self._written_segments(output)
        return output

    def _append_segments(self, output: dict) -> None:
        """Teacher-forced mode: lay the segments into the batch (see `pcl.grpo_layout`)."""
        with_segment = append_segments(
            output, self._pcl_completion_ids, self._pcl_targets, self.args.segment_format, self.segment_tokens,
            self._tokenizer.pad_token_id, self.pad_to_multiple_of,
        )  # fmt: skip
        nll_mask = output["self_assessment_mask"]
        output["self_assessment_num_items"] = self.accelerator.gather(nll_mask.sum()).sum()
        self._log_segment_fraction(with_segment, nll_mask.size(0))

    def _written_segments(self, output: dict) -> None:
        """Generated mode: per-token advantages, task advantage on the answer, consistency advantage on the segment."""
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        # Normalised like GRPO's own advantages (same group size, std and scaling; unrewarded rows get 0)
        seg_adv = group_advantages(self._pcl_consistency, num_generations, self.scale_rewards)
        start, n = self.accelerator.process_index * output["completion_ids"].size(0), output["completion_ids"].size(0)
        with_segment = written_segments(
            output, self._pcl_completion_ids, self._pcl_written, self._pcl_written_levels, self._pcl_targets,
            seg_adv[start : start + n], self.args.segment_format, self.segment_tokens,
        )  # fmt: skip
        scored = (output["self_assessment_target"] >= 0).sum()
        output["self_assessment_num_items"] = self.accelerator.gather(scored).sum()
        self._metrics[mode]["self_assessment/consistency"].append(torch.nanmean(self._pcl_consistency).item())
        self._log_segment_fraction(with_segment, len(self._pcl_written))

    def _log_segment_fraction(self, with_segment: int, total: int) -> None:
        mode = "train" if self.model.training else "eval"
        counts = self.accelerator.reduce(
            torch.tensor([with_segment, total], dtype=torch.float, device=self.accelerator.device), reduction="sum"
        )
        self._metrics[mode]["self_assessment/frac_with_segment"].append((counts[0] / counts[1].clamp(min=1)).item())

    # ---- checkpoints: the running reward ranges resume with the run -----------------------------------------------

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            self._pcl_reward_targets.save(os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"))

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # an adapter directory has no config.json to carry the format
            save_adapter_format(self.model, output_dir or self.args.output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        self._pcl_reward_targets.load(checkpoint)

    # ---- loss ----------------------------------------------------------------------------------------------------

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        return self._pcl_loss.policy_logps(logps), entropies, aux_loss

    def _compute_loss(self, model, inputs):
        if "self_assessment_target" not in inputs:
            return super()._compute_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        with self._pcl_loss.armed(inputs, self.args):
            loss = super()._compute_loss(model, inputs)
        nll_sum, n_items, level_logp = self._pcl_loss.nll(inputs, self.args)

        # Like the DAPO normaliser: the global item count of the generation batch, rescaled to one micro-batch
        normalizer = inputs["self_assessment_num_items"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        term = torch.zeros((), device=loss.device)
        if nll_sum is not None and self.args.self_assessment_weight > 0:
            term = self.args.self_assessment_weight * nll_sum / normalizer
            loss = loss + term

        # Metrics, global over ranks. `loss` (TRL's) includes the segment term; `self_assessment/loss` is that term,
        # so the policy loss is their difference
        stats = metric_sums(nll_sum, n_items, level_logp, inputs["self_assessment_target"], loss.device)
        # TRL's `loss` sums the micro-batch losses of a step while `_metrics` average them: scale the term back up
        scale = self.current_gradient_accumulation_steps if mode == "train" else 1
        stats.append(term.detach() * scale / self.accelerator.num_processes)
        nll, n, brier, correct, n_scores, seg_loss = self.accelerator.reduce(torch.stack(stats), "sum").tolist()
        self._metrics[mode]["self_assessment/loss"].append(seg_loss)
        if n > 0:
            self._metrics[mode]["self_assessment/nll"].append(nll / n)
        if n_scores > 0:
            self._metrics[mode]["self_assessment/brier"].append(brier / n_scores)
            self._metrics[mode]["self_assessment/accuracy"].append(correct / n_scores)
        return loss
