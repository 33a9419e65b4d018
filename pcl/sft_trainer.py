# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.

import dataclasses
import textwrap
import weakref

import torch
from datasets import Dataset, IterableDataset
from transformers import AutoConfig, GenerationConfig, PreTrainedModel
from trl import SFTTrainer
from trl.trainer import sft_trainer as sft_module

from .adapters import expose_head_bias, marker_rows, save_adapter_format
from .marker import attach_hook, prepare_model, resolve_args_and_tokenizer, segment_tokens, text_tokenizer
from .model_card import PCLModelCard
from .segment import empty_segment_mask, orphan_tail_mask, score_mask, segment_mask
from .sft_config import PCLSFTConfig
from .sft_data import (
    SegmentRenderer,
    drop_flagged_rows,
    end_of_turn_token,
    has_flagged_rows,
    render_rows,
    reward_range_of,
)


__all__ = ["PAPER", "PCLSFTTrainer", "render_rows"]  # render_rows: rendered rows for a plain SFTTrainer (benchmarks)


PAPER = {
    "title": "Post-Completion Learning for Language Models",
    "id": "2507.20252",
    # docstyle-ignore
    "citation": textwrap.dedent(
        """\
        @article{fei2025post,
            title        = {{Post-Completion Learning for Language Models}},
            author       = {Xiang Fei and Siqi Wang and Shu Wei and Yuxiang Nie and Wei Shi and Hao Feng and Chao Feng and Can Huang},
            year         = 2025,
            eprint       = {arXiv:2507.20252}
        }"""
    ),
}


def _generation_config_source(model):
    """The model (or, for a model given by path, its `GenerationConfig`) whose EOS ids close segments, before
    SFTTrainer loads it.

    Read offline from a local directory or the cache; `None` when it cannot be read (the tokenizer's EOS is used).
    """
    if not isinstance(model, str):
        return model if isinstance(model, PreTrainedModel) else None
    try:
        config = GenerationConfig.from_pretrained(model, local_files_only=True)
    except Exception:
        try:  # no generation_config.json: transformers derives it from the model config when loading, so do we
            config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model, local_files_only=True))
        except Exception:
            return None
    return config


class _SegmentWeightHook:
    """PCL-SFT's forward hook. It acts only while its trainer's `compute_loss` runs, and holds the trainer through a
    weak reference: a model object reused by another trainer (a stock SFTTrainer) or deep-copied is not reweighted,
    and a deep copy of the model does not copy the trainer."""

    def __init__(self, trainer: "PCLSFTTrainer"):
        self.trainer = weakref.ref(trainer)

    def __call__(self, module, args, kwargs, output):
        trainer = self.trainer()
        if trainer is None or not trainer._pcl_in_loss:
            return None
        return trainer._reweight_log_probs(module, args, kwargs, output)


class PCLSFTTrainer(PCLModelCard, SFTTrainer):
    """
    Dual-track SFT for [Post-Completion Learning](https://huggingface.co/papers/2507.20252).

    Each row trains `answer MARKER [prefix] SCORE EOS`, where SCORE is the row's reward (column
    `self_assessment_reward_column`) on the grid of `self_assessment_levels` levels. The answer and the marker keep
    weight 1 (the model learns to end its answer with the marker instead of EOS); the prefix, the score and the
    closing EOS get weight `self_assessment_weight`. Rows without a reward train `answer MARKER` and give the EOS after
    the marker weight 0. For conversations the chat template's end-of-turn token closes the segment, also when it is
    not an EOS id (found at `__init__` by rendering a probe conversation). Every dataset
    format SFTTrainer accepts works (prompt/completion, `text`, `formatting_func`, `messages`, `conversations`, tools,
    pre-tokenized `input_ids`); `pcl.sft_data` says where the segment goes in each.

    Overridden: `__init__` (add the marker token, resize the model for it before SFTTrainer wraps it, with trainable
    marker rows under `peft_config`: see `pcl.adapters`; refuse loss paths that bypass the weighting), `_prepare_dataset`
    (write the segment into the raw rows, then TRL prepares them as usual, so eval datasets and datasets passed to
    `evaluate()` get it too), `compute_loss` (log `self_assessment/loss`, `/nll`, `/accuracy`) and `_save` (the
    format beside a PEFT adapter, which has no `config.json`); a forward hook
    weights the per-token log-probs of TRL's fused LM head. The segment is found in `input_ids` at loss time, so
    truncation, packing, padding-free, `completion_only_loss` and `assistant_only_loss` work unchanged; a document
    start (`position_ids == 0`) closes a segment, and a segment cut off from its answer by packing (a chunk that starts
    with the marker, or with a tail `[prefix] SCORE EOS`) gets weight 0. The hook acts only while this trainer's
    `compute_loss` runs, so the model object can be reused by another trainer. `create_model_card` and `save_model`
    (from [`~pcl.model_card.PCLModelCard`]) add PCL's section to TRL's model card and save it beside every saved model.
    Everything else is inherited from [`~trl.SFTTrainer`].

    With `self_assessment_weight=1` the loss is bit-for-bit SFTTrainer's on the rendered rows when every row has a
    reward and packing does not split documents; otherwise the EOS after a reward-less row's marker, and segment tails
    that packing cut off from their answer, get weight 0 where SFTTrainer gives them 1.

    `self_assessment_weight=0` leaves the rows unchanged (no segment; rows flagged `self_assessment_only` are dropped)
    and the hook idle: the loss and gradients equal SFTTrainer's on the same model and tokenizer (a `peft_config` is
    used as given, a new marker's rows not made trainable), and every loss
    option SFTTrainer has (`compute_loss_func`, label smoothing, sequence/context parallelism) is available. What
    still differs from SFTTrainer at weight 0: the marker is added to the tokenizer (and the embeddings resized if it
    was new), listed as an EOS id of the generation config, and the format saved in the model config. With a weight
    > 0 those three loss options are refused at `__init__`: they compute the loss from the logits, from pre-shifted
    `shift_labels` on sequence shards, or from the model's own `loss`, which the weighting never reaches.
    `loss_type="dft"` is supported at any weight: each token's DFT loss `-p log p` (p detached) is multiplied by its
    weight, in value and gradient.

    Example:

    ```python
    from datasets import Dataset
    from pcl import PCLSFTConfig, PCLSFTTrainer

    dataset = Dataset.from_list([{"prompt": "2 + 2 =", "completion": " 4", "reward": 1.0}])
    trainer = PCLSFTTrainer(model="Qwen/Qwen2.5-0.5B", args=PCLSFTConfig(output_dir="out"), train_dataset=dataset)
    trainer.train()
    ```

    Args:
        model, args, train_dataset, eval_dataset, processing_class, **kwargs:
            As for [`~trl.SFTTrainer`]; `args` is a [`PCLSFTConfig`] (a plain `TrainingArguments` or `SFTConfig` is
            converted, with PCL's defaults, like SFTTrainer converts a `TrainingArguments`). `processing_class` is
            loaded from `model` when omitted, and the marker is added to it.
    """

    _tag_names = ["trl", "sft", "pcl"]
    _name = "PCL-SFT"
    _paper = PAPER

    def __init__(self, model, args=None, train_dataset=None, eval_dataset=None, processing_class=None, **kwargs):
        args, processing_class = resolve_args_and_tokenizer(model, args, PCLSFTConfig, "PCL-SFT", processing_class)
        self.segment_format = args.segment_format
        self._pcl_active = args.self_assessment_weight > 0
        marker_added = self.segment_format.marker not in text_tokenizer(processing_class).get_vocab()
        # The marker must be a token before SFTTrainer tokenises the datasets in its __init__
        tokens = segment_tokens(processing_class, self.segment_format, _generation_config_source(model))
        # A chat template may end the assistant turn with a token that is no EOS id (ChatML's `<|im_end|>` for a base
        # model whose EOS is `<|endoftext|>`): it closes the segment written at the end of an assistant message
        end_of_turn = end_of_turn_token(processing_class)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        eot_id = None if end_of_turn is None else tokenizer.convert_tokens_to_ids(end_of_turn)
        self._pcl_closing_ids = () if eot_id is None or eot_id == tokens.marker_id else (eot_id,)
        tokens = self._with_closing_ids(tokens)
        self._pcl_in_loss = False
        self._pcl_renderer = None
        # The auto reward range is read from the train rows when they are prepared (the first dataset TRL prepares)
        self._pcl_range_pending = getattr(
            args, "self_assessment_auto_range", args.self_assessment_reward_range is None
        )
        if self._pcl_active:
            eos_token = getattr(processing_class, "eos_token", None) or getattr(
                getattr(processing_class, "tokenizer", None), "eos_token", None
            )
            self._pcl_renderer = SegmentRenderer(
                self.segment_format, tokens, eos_token, args.self_assessment_reward_column,
                args.self_assessment_only_column, args.dataset_text_field, end_of_turn,
            )  # fmt: skip
        # The model gets the marker row before SFTTrainer wraps it (PEFT), and a new marker trainable rows under
        # `peft_config`, as SFTTrainer gives the tokens `clone_chat_template` adds
        peft_config = kwargs.pop("peft_config", None)
        row_tokens = tokens  # a new marker row starts as a copy of the EOS that ends the answers (SFTConfig.eos_token)
        if args.eos_token is not None and args.eos_token in tokenizer.get_vocab():
            row_tokens = dataclasses.replace(tokens, eos_id=tokenizer.convert_tokens_to_ids(args.eos_token))
        with marker_rows(
            sft_module, model, tokenizer, row_tokens, peft_config, marker_added, train_rows=self._pcl_active
        ) as peft_config:
            super().__init__(
                model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                processing_class=processing_class, peft_config=peft_config, **kwargs,
            )  # fmt: skip
        if self._pcl_active:
            self._check_loss_path()
        expose_head_bias(self.model)  # a tied head under PEFT's trainable tokens, read by TRL's fused head
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.segment_tokens = self._with_closing_ids(prepare_model(base, processing_class, self.segment_format))
        self._pcl_stats = self._pcl_extra = None
        attach_hook(base, _SegmentWeightHook(self), with_kwargs=True)

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.args.should_save:  # an adapter directory has no config.json to carry the format
            save_adapter_format(self.model, output_dir or self.args.output_dir)

    def _with_closing_ids(self, tokens):
        extra = tuple(i for i in self._pcl_closing_ids if i not in tokens.eos_ids)
        return dataclasses.replace(tokens, eos_ids=(*tokens.eos_ids, *extra)) if extra else tokens

    @staticmethod
    def _eval_datasets(eval_dataset) -> list:
        if eval_dataset is None or isinstance(eval_dataset, str):
            return []
        return list(eval_dataset.values()) if isinstance(eval_dataset, dict) else [eval_dataset]

    def _check_flagged_rows(self, dataset, args) -> None:
        if args.completion_only_loss is False and has_flagged_rows(dataset, args.self_assessment_only_column):
            raise ValueError(
                f"Rows flagged `{args.self_assessment_only_column}` keep their (possibly wrong) answer out of the "
                "loss by moving it into the prompt, which `completion_only_loss=False` would train. Leave "
                "`completion_only_loss` unset (or True), or drop the flagged rows."
            )

    def _check_loss_path(self) -> None:
        """Refuse the parent's loss paths that never reach the fused log-probs PCL reweights (see the class doc)."""
        args, why = self.args, None
        if self.compute_loss_func is not None:
            why = "`compute_loss_func` computes the loss from the model's logits"
        if args.label_smoothing_factor:
            why = "`label_smoothing_factor` computes the loss from the model's full logits"
        else:
            config = self.accelerator.parallelism_config
            if config is not None and (getattr(config, "sp_enabled", False) or getattr(config, "cp_enabled", False)):
                why = (
                    "sequence/context parallelism shards each row along the sequence (a segment can straddle two "
                    "shards) and computes the loss from `shift_labels` or the model's own `loss`"
                )
        if why is not None:
            raise ValueError(
                f"PCL-SFT weights the self-assessment through the per-token log-probs of TRL's fused LM head, but {why}, "
                "so the segment would be trained at full weight without notice. Use the default NLL path, or "
                "`self_assessment_weight=0` (which trains exactly like SFTTrainer)."
            )
        if self._skip_prepare_dataset and any(
            args.self_assessment_reward_column in (d.column_names or [])
            for d in (self.train_dataset, *self._eval_datasets(self.eval_dataset))
            if isinstance(d, (Dataset, IterableDataset))
        ):
            raise ValueError(
                "SFTTrainer skips dataset preparation here (`skip_prepare_dataset=True`, or a vision dataset), which is "
                "where PCL-SFT writes the segment, so the reward column "
                f"{args.self_assessment_reward_column!r} would be ignored. Drop `skip_prepare_dataset`, or write the "
                "segment into `input_ids` yourself and drop the reward column."
            )

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        # Write the segment into the raw rows, then let TRL format, tokenise, truncate and pack them as usual. Every
        # dataset goes through here: train, eval at __init__, and datasets passed to `evaluate()` later.
        if isinstance(dataset, Dataset) and dataset.format["type"] == "custom":
            pass  # TRL refuses `with_transform` datasets: let its message be the one raised
        elif self._pcl_renderer is not None:
            self._check_flagged_rows(dataset, args)
            # SFTTrainer may have replaced the EOS token (`args.eos_token`) since the renderer was built
            renderer, eos_id = self._pcl_renderer, self._tokenizer.eos_token_id
            renderer.eos_token = self._tokenizer.eos_token
            if eos_id is not None and eos_id not in renderer.tokens.eos_ids:
                eos_ids = (eos_id, *renderer.tokens.eos_ids)
                renderer.tokens = dataclasses.replace(renderer.tokens, eos_id=eos_id, eos_ids=eos_ids)
            if self._pcl_range_pending:
                # Auto range: known before training from the train rows, so none of them falls outside it; saved in
                # the model config after __init__. An eval row outside it is clipped to the end of the scale.
                reward_range = reward_range_of(dataset, args.self_assessment_reward_column)
                self.segment_format = dataclasses.replace(
                    self.segment_format, reward_range=reward_range, out_of_range="clip"
                )
                self._pcl_renderer.fmt = self.segment_format
                self._pcl_range_pending = False
            # TRL names the datasets of an eval dict by their key
            name = dataset_name if dataset_name in ("train", "eval") else f"eval ({dataset_name})"
            dataset, formatting_func = self._pcl_renderer.render(dataset, formatting_func, name)
        elif isinstance(dataset, (Dataset, IterableDataset)):
            # Weight 0 leaves rows unchanged; flagged rows would train their possibly wrong answer, so they go
            dataset = drop_flagged_rows(dataset, args.self_assessment_only_column)
        return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)

    def _reweight_log_probs(self, module: PreTrainedModel, args, kwargs, output):
        # Runs inside the model's forward, on the outputs of TRL's fused LM head: weight the segment's log-probs
        if not self._pcl_active or not kwargs.get("fused_lm_head") or kwargs.get("shift_labels") is not None:
            return None
        input_ids, tokens, position_ids = kwargs["input_ids"], self.segment_tokens, kwargs.get("position_ids")
        # log_probs[:, t] scores input_ids[:, t + 1]
        full_segment = segment_mask(input_ids, tokens.marker_id, tokens.eos_ids, position_ids)
        in_segment = full_segment[:, 1:]
        empty = empty_segment_mask(input_ids, tokens.marker_id, tokens.eos_ids)[:, 1:] & in_segment
        orphan = orphan_tail_mask(input_ids, tokens, position_ids)[:, 1:]
        label_mask = output.label_mask.bool()
        scored = in_segment & ~empty & ~orphan & label_mask
        weight = torch.ones_like(output.log_probs)
        weight = weight.masked_fill(scored, self.args.self_assessment_weight).masked_fill(empty | orphan, 0.0)
        is_score = score_mask(input_ids, tokens, full_segment)[:, 1:] & label_mask & ~orphan
        nll = -output.log_probs
        if self.args.loss_type == "dft":
            # TRL's DFT scales each token's NLL by its own detached probability, computed from the log-probs it gets:
            # they stay unweighted, and compute_loss adds the weighted difference (exact in value and gradient)
            per_token = nll * output.log_probs.exp().detach()
            self._pcl_extra = ((weight - 1) * per_token).sum()
        else:
            per_token = nll
            output.log_probs = output.log_probs * weight
        with torch.no_grad():
            top1 = output.is_top1 if output.is_top1 is not None else torch.zeros_like(is_score)
            self._pcl_stats = torch.stack(
                [
                    (per_token * weight * scored).sum(),
                    (nll * scored).sum(),
                    scored.sum(),
                    (top1.bool() & is_score).sum(),
                    is_score.sum(),
                    label_mask.sum(),
                ]
            ).float()
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._pcl_stats = self._pcl_extra = None
        self._pcl_in_loss = True  # the hook weights only the forward passes of this trainer's loss
        try:
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        finally:
            self._pcl_in_loss = False
        if self._pcl_stats is None:
            return result
        if self._pcl_extra is not None:
            extra = self._pcl_extra * self._loss_scale(self._pcl_stats[-1].item(), num_items_in_batch)
            result = (result[0] + extra, *result[1:]) if return_outputs else result + extra
        self._log_segment(self._pcl_stats, num_items_in_batch)
        return result

    def _loss_scale(self, n_local: float, num_items_in_batch) -> float:
        """What SFTTrainer.compute_loss multiplies a summed per-token loss by: 1 / token count (x processes when
        tokens are averaged across devices)."""
        scale = 1.0 / max(float(n_local if num_items_in_batch is None else num_items_in_batch), 1.0)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            scale *= self.accelerator.num_processes // self.get_tp_size()
        return scale

    def _log_segment(self, stats: torch.Tensor, num_items_in_batch) -> None:
        mode = "train" if self.model.training else "eval"
        segment, nll, n_tokens, correct, n_scores, n_local = stats.tolist()
        # The segment's share of the loss, normalised like the parent's loss, so that `loss` minus it is the answer's
        share = segment * self._loss_scale(n_local, num_items_in_batch)
        if mode == "train":
            # Trainer logs the sum over the accumulation steps of a loss already divided by the batch's token count
            scaled = self.loss_is_scaled_for_ga
            if scaled is None:
                scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            share *= getattr(self, "current_gradient_accumulation_steps", 1) if scaled else 1
        totals = self.accelerator.reduce(
            torch.tensor([share, nll, n_tokens, correct, n_scores], device=self.accelerator.device), reduction="sum"
        ).tolist()
        self._metrics[mode]["self_assessment/loss"].append(totals[0] / self.accelerator.num_processes)
        if totals[2] > 0:
            self._metrics[mode]["self_assessment/nll"].append(totals[1] / totals[2])
        if totals[4] > 0:
            self._metrics[mode]["self_assessment/accuracy"].append(totals[3] / totals[4])
