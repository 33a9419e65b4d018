# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.

import json
import math
import os

import torch
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer
from trl.trainer import grpo_trainer as grpo_module
from trl.trainer.utils import maybe_gather_lm_head_ctx

from .adapters import expose_head_bias, fix_vllm_sync_names, is_peft_model, marker_rows, save_adapter_format
from .grpo_config import PCLGRPOConfig
from .grpo_layout import append_segments, group_advantages
from .head import head_weight_and_bias, project
from .marker import (
    CONFIG_KEY,
    attach_hook,
    prepare_model,
    resolve_args_and_tokenizer,
    segment_tokens,
    text_tokenizer,
)
from .model_card import PCLModelCard
from .reward_targets import RewardTargets
from .sft_trainer import PAPER
from .validation import check_prompts, checked_reward_func
from .vllm_requests import rollout_sampling_kwargs


# Running reward ranges (auto mode), saved in each checkpoint folder
REWARD_STATE = "pcl_reward_ranges.json"


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
    keeps them: see `pcl.adapters`; stop id, reward targets; a plain `GRPOConfig` is converted),
    `_calculate_rewards` (keep the score targets; in generated mode hide the segment from the task rewards),
    `_generate_and_score_completions` (lay out the segment), `_get_per_token_logps_and_entropies` and `_compute_loss`
    (add the segment loss, substitute log p(EOS) at replaced stops), `_save_checkpoint` /
    `_load_optimizer_and_scheduler` (running reward ranges), `_save` (the format beside a PEFT adapter),
    `create_model_card` / `save_model` (PCL's section of the model card, saved beside every saved model;
    [`~pcl.model_card.PCLModelCard`]). Everything else is inherited from [`~trl.GRPOTrainer`], so existing GRPO
    recipes work by swapping the two class names.

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
        self._pcl_nll_mask = None  # (B, T) positions whose log-probs feed the segment NLL, set during the loss
        self._pcl_reads = {}  # name -> (rows, positions, ids): LM-head rows to read at those positions
        self._pcl_read_logits = {}
        self._pcl_level_grad = False
        self._pcl_segment_rows = None  # (rows, positions, factor): hidden states whose gradient is scaled
        attach_hook(self._pcl_base, self._read_head_rows, module=self._pcl_base.base_model)
        self._check_score_trains(args)

    def _check_score_trains(self, args: PCLGRPOConfig) -> None:
        """Refuse a teacher-forced run whose score could not learn: with `self_assessment_backbone_grad=0` only the LM
        head's rows of the score levels learn it, and an adapter may leave them frozen (a LoRA on a model whose marker
        is an existing token, or with tied embeddings, where only the marker's row trains)."""
        if args.self_assessment_mode != "teacher_forced" or args.self_assessment_weight <= 0:
            return
        if args.self_assessment_backbone_grad > 0:
            return
        head = self._pcl_base.get_output_embeddings()
        weight = head_weight_and_bias(head)[0]
        if isinstance(weight, torch.nn.Parameter):
            trained = weight.requires_grad
        else:  # PEFT's trainable tokens: the head serves a computed weight whose listed rows train
            indices = getattr(getattr(head, "token_adapter", None), "token_indices", None) or {}
            trained = set(self.segment_tokens.level_ids) <= {i for ids in indices.values() for i in ids}
        if not trained:
            raise ValueError(
                "The self-score would not train: with `self_assessment_backbone_grad=0` (the default) the segment "
                "trains only the LM head's rows of the score levels, and this model's are frozen (e.g. a PEFT adapter "
                "on a model with tied embeddings, or whose marker is an existing token, so that PCL adds no LM-head "
                "copy). Set `self_assessment_backbone_grad=1.0` (the segment then trains the adapter too), or train "
                "the LM head (e.g. `modules_to_save=['lm_head']` on an untied head)."
            )

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

    def _split_at_marker(self, completions, completion_ids_list):
        """Generated mode: task rewards must only see the answer, not the written assessment."""
        marker = self.segment_tokens.marker_id
        answers, segments = [], []
        for ids in completion_ids_list:
            ids = list(ids)
            cut = ids.index(marker) if marker in ids else None
            answers.append(ids if cut is None else ids[: cut + 1])
            segments.append(None if cut is None else ids[cut + 1 :])
        texts = self._tokenizer.batch_decode(answers, skip_special_tokens=True)
        if completions and not isinstance(completions[0], str):
            texts = [[{"role": "assistant", "content": t}] for t in texts]
        return texts, answers, segments

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        generated = self.args.self_assessment_mode != "teacher_forced"
        if generated:
            completions, answer_ids, self._pcl_written = self._split_at_marker(completions, completion_ids_list)
            completion_ids_list = answer_ids
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
            # Brier consistency: an honest "I am wrong" on a wrong answer scores 1 (never 0/0 like a ratio would)
            consistency = [
                math.nan if g is None else 0.0 if w is None else 1.0 - (fmt.level_value(w) - g) ** 2
                for g, w in zip(self._pcl_targets, written, strict=True)
            ]
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
        device = output["completion_ids"].device
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        # Normalised like GRPO's own advantages (same group size, std and scaling; unrewarded rows get 0)
        seg_adv = group_advantages(self._pcl_consistency, num_generations, self.scale_rewards)
        start = self.accelerator.process_index * output["completion_ids"].size(0)
        seg_adv = seg_adv[start : start + output["completion_ids"].size(0)]

        T = output["completion_ids"].size(1)
        advantages = output["advantages"].unsqueeze(1).expand(-1, T).clone()
        score_index = torch.full((advantages.size(0),), -1, dtype=torch.long, device=device)
        target_level = torch.full_like(score_index, -1)
        fmt, n_prefix = self.args.segment_format, len(self.segment_tokens.prefix_ids)
        with_segment = 0
        for i, (ids, seg) in enumerate(zip(self._pcl_completion_ids, self._pcl_written, strict=True)):
            if seg is None:
                continue
            start_seg = len(ids)  # `ids` are the answer ids, marker included
            advantages[i, start_seg:] = seg_adv[i]
            with_segment += 1
            if self._pcl_written_levels[i] is not None and self._pcl_targets[i] is not None:
                score_index[i] = start_seg + n_prefix
                target_level[i] = fmt.level_of(self._pcl_targets[i])
        output["advantages"] = advantages * output["completion_mask"]
        output["self_assessment_score_index"] = score_index
        output["self_assessment_target"] = target_level
        output["self_assessment_num_items"] = self.accelerator.gather((target_level >= 0).sum()).sum()
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
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            with open(os.path.join(folder, REWARD_STATE), "w") as f:
                json.dump(self._pcl_reward_targets.state_dict(), f)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # an adapter directory has no config.json to carry the format
            save_adapter_format(self.model, output_dir or self.args.output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        self._load_reward_state(checkpoint)

    def _load_reward_state(self, checkpoint: str | None) -> None:
        path = None if checkpoint is None else os.path.join(checkpoint, REWARD_STATE)
        if path is not None and os.path.exists(path):
            with open(path) as f:
                self._pcl_reward_targets.load_state_dict(json.load(f))

    # ---- loss ----------------------------------------------------------------------------------------------------

    def _read_head_rows(self, module, args, output):
        # Backbone forward hook: the logits of a few LM-head rows at requested positions, computed like the model's
        # own logits (its logit transforms) at the fused head's temperature, from the same forward pass
        if not hasattr(output, "last_hidden_state"):
            return
        scaled = self._pcl_segment_rows
        if scaled is not None and output.last_hidden_state.requires_grad and torch.is_grad_enabled():
            # Scale the segment's gradient into the body: the same values, so the policy loss and readout are unchanged
            rows, positions, factor = scaled
            scale = torch.ones_like(output.last_hidden_state[..., :1])
            scale[rows, positions] = factor
            output.last_hidden_state.register_hook(lambda grad: grad * scale)
        if not self._pcl_reads:
            return
        head = self._pcl_base.get_output_embeddings()
        # Under ZeRO-3 the gathered head cannot receive gradients from outside its own forward: it is read detached.
        # Then log p(EOS) at a replaced stop gets its gradient through the hidden state and the fused head only, so
        # the EOS and marker LM-head rows receive the policy gradient of log p(MARKER) there instead of log p(EOS), and
        # the stop term (the marker's share of the stop mass) trains no LM-head row, only the hidden state
        zero3 = is_deepspeed_zero3_enabled()
        for name, (rows, positions, ids, grad) in self._pcl_reads.items():
            grad = grad and torch.is_grad_enabled()  # evaluation runs under no_grad: build no graph there
            hidden = output.last_hidden_state[rows, positions - 1]  # the hidden state before a token predicts it
            with maybe_gather_lm_head_ctx(*head_weight_and_bias(head)), torch.set_grad_enabled(grad):
                h = hidden if grad else hidden.detach()
                logits = project(h, head, ids.to(h.device), self._pcl_base.config, detach_weight=zero3)
            self._pcl_read_logits[name] = logits / self.temperature

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._pcl_nll_mask is not None:
            # The segment NLL reads the graph-connected log-probs (log p(MARKER) where the marker replaced an EOS)
            self._pcl_logps = logps
            # The policy loss sees what the parent would: zeros on the segment (masked out of it anyway, and zeros
            # keep exp(ref - logp) finite against zero-padded ref log-probs), and log p(EOS) where the EOS was
            # sampled: log p(EOS) = log p(MARKER) + (z_EOS - z_MARKER) / T, from the same forward pass
            logps = logps.masked_fill(self._pcl_nll_mask & ~self._pcl_stop_mask, 0.0)
            stop = self._pcl_read_logits.get("stop")
            if stop is not None and self._pcl_eos_sel is not None:
                which, col = self._pcl_eos_sel
                rows, cols = self._pcl_eos_mask.nonzero(as_tuple=True)
                logps = logps.index_put((rows, cols), logps[rows, cols] + stop[which, col] - stop[which, 0])
        return logps, entropies, aux_loss

    def _compute_loss(self, model, inputs):
        if "self_assessment_target" not in inputs:
            return super()._compute_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        teacher_forced = "self_assessment_mask" in inputs
        score_index, target = inputs["self_assessment_score_index"], inputs["self_assessment_target"]
        has_score = target >= 0
        rows = has_score.nonzero().squeeze(1)
        prompt_len = inputs["prompt_ids"].size(1)
        self._pcl_level_grad = self.args.self_assessment_mode == "both"
        level_ids = torch.tensor(self.segment_tokens.level_ids)
        self._pcl_reads = {"level": (rows, prompt_len + score_index[rows], level_ids, self._pcl_level_grad)}
        if teacher_forced:
            self._pcl_nll_mask = inputs["self_assessment_mask"]
            stop_index, stop_id = inputs["self_assessment_stop_index"], inputs["self_assessment_stop_id"]
            stop_rows = (stop_index >= 0).nonzero().squeeze(1)
            self._pcl_stop_mask = torch.zeros_like(self._pcl_nll_mask)  # stops are policy tokens, never zeroed
            self._pcl_stop_mask[stop_rows, stop_index[stop_rows]] = True
            eos_rows = (stop_id >= 0) & (stop_id != self.segment_tokens.marker_id)
            self._pcl_eos_mask = torch.zeros_like(self._pcl_nll_mask)  # where the marker replaced a sampled EOS
            eos_rows = eos_rows.nonzero().squeeze(1)
            self._pcl_eos_mask[eos_rows, stop_index[eos_rows]] = True
            stop_ids = torch.tensor(
                [self.segment_tokens.marker_id, *self.segment_tokens.eos_ids], device=stop_id.device
            )
            self._pcl_eos_sel = None
            if len(eos_rows):
                which = torch.searchsorted(stop_rows, eos_rows)
                col = (stop_id[eos_rows].unsqueeze(1) == stop_ids).float().argmax(1)
                self._pcl_eos_sel = (which, col)
            if len(stop_rows):
                self._pcl_reads["stop"] = (stop_rows, prompt_len + stop_index[stop_rows], stop_ids, True)
            scale = self.args.self_assessment_backbone_grad
            if scale != 1.0 and self.args.self_assessment_weight > 0:
                # The hidden states that predict the segment after the stop: their gradient is scaled by `scale`
                seg_rows, seg_cols = (self._pcl_nll_mask & ~self._pcl_stop_mask).nonzero(as_tuple=True)
                self._pcl_segment_rows = (seg_rows, prompt_len + seg_cols - 1, scale)
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._pcl_reads = {}
            self._pcl_segment_rows = None
            nll_mask, self._pcl_nll_mask = self._pcl_nll_mask, None
        level_logits = self._pcl_read_logits.pop("level", None)
        stop_logits = self._pcl_read_logits.pop("stop", None)
        self._pcl_read_logits = {}

        # Like the DAPO normaliser: the global item count of the generation batch, rescaled to one micro-batch
        normalizer = inputs["self_assessment_num_items"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        level_logp = None if level_logits is None else level_logits.log_softmax(-1)
        if teacher_forced:
            nll_sum = -(self._pcl_logps * (nll_mask & ~self._pcl_stop_mask)).sum()
            if stop_logits is not None:
                # At the stop: the marker's share of the stop mass, log p(MARKER) - log sum p(stop ids). Whether to
                # stop is the policy's to learn; a full-vocabulary log p(MARKER) would raise the stop probability
                # wherever the rollouts stopped, rewarded or not (answers cut short)
                nll_sum = nll_sum - (stop_logits[:, 0] - stop_logits.logsumexp(-1)).sum()
            n_items = nll_mask.sum()
            self._pcl_logps = None
        elif self.args.self_assessment_mode == "both" and level_logp is not None:
            nll_sum = -level_logp.gather(1, target[rows].unsqueeze(1)).sum()
            n_items = has_score.sum()
        else:
            nll_sum = n_items = None
        term = torch.zeros((), device=loss.device)
        if nll_sum is not None and self.args.self_assessment_weight > 0:
            term = self.args.self_assessment_weight * nll_sum / normalizer
            loss = loss + term

        # Metrics, global over ranks. `loss` (TRL's) includes the segment term; `self_assessment/loss` is that term,
        # so the policy loss is their difference
        stats = [torch.zeros((), device=loss.device) for _ in range(6)]
        if nll_sum is not None:
            stats[0], stats[1] = nll_sum.detach(), n_items.float()
        if level_logp is not None and len(rows):
            probs = level_logp.detach().exp()
            values = torch.linspace(0, 1, probs.size(1), device=probs.device)
            truth = values[target[rows]]
            stats[2] = (((probs * values).sum(-1) - truth) ** 2).sum()
            stats[3] = (probs.argmax(-1) == target[rows]).sum().float()
            stats[4] = torch.tensor(float(len(rows)), device=loss.device)
        # TRL's `loss` sums the micro-batch losses of a step while `_metrics` average them: scale the term back up
        scale = self.current_gradient_accumulation_steps if mode == "train" else 1
        stats[5] = term.detach() * scale / self.accelerator.num_processes
        nll, n, brier, correct, n_scores, seg_loss = self.accelerator.reduce(torch.stack(stats), "sum").tolist()
        self._metrics[mode]["self_assessment/loss"].append(seg_loss)
        if n > 0:
            self._metrics[mode]["self_assessment/nll"].append(nll / n)
        if n_scores > 0:
            self._metrics[mode]["self_assessment/brier"].append(brier / n_scores)
            self._metrics[mode]["self_assessment/accuracy"].append(correct / n_scores)
        return loss
