# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""PCL-GRPO's segment loss, computed from the same forward pass as TRL's policy loss.

TRL's `_compute_loss` runs one forward through its fused LM head, which returns only the log-probs of the sampled
tokens. The segment loss needs those (teacher-forced: the NLL of the segment after the stop) and a few logits more: the
score levels' at the score position, and the stop ids' (marker and EOS ids) at the stop. A forward hook on the model
below the LM head projects those positions' hidden states through the head's rows (`SegmentLoss.read_head_rows`), so
no second forward is needed; the same hook scales the segment's gradient into the body. The trainer arms it for the
parent's forward (`SegmentLoss.armed`), hands the policy loss the log-probs it expects (`SegmentLoss.policy_logps`),
then takes the segment NLL (`SegmentLoss.nll`) and its metric sums (`metric_sums`). `check_score_trains` refuses,
at `__init__`, a run in which this loss could train no parameter of the score.
"""

import contextlib
from collections.abc import Iterator

import torch
from transformers import PreTrainedModel
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from trl.trainer.utils import maybe_gather_lm_head_ctx

from .grpo_config import PCLGRPOConfig
from .head import head_weight_and_bias, project
from .segment import SegmentTokens


class SegmentLoss:
    """One micro-batch's segment loss: what the backbone hook reads and scales, and what the policy loss is handed.

    Args:
        base_model ([`~transformers.PreTrainedModel`]): The policy model (under PEFT, its base model), whose backbone
            carries `read_head_rows` as a forward hook.
        tokens ([`SegmentTokens`]): The segment's token ids.
        temperature (`float`): The fused LM head's temperature: the read logits are divided by it, as TRL's are.
    """

    def __init__(self, base_model: PreTrainedModel, tokens: SegmentTokens, temperature: float):
        self.base_model, self.tokens, self.temperature = base_model, tokens, temperature
        self.nll_mask = None  # (B, T) positions whose log-probs feed the segment NLL, set during the forward
        self.reads = {}  # name -> (rows, positions, ids, grad): LM-head rows to read at those positions
        self.read_logits = {}
        self.segment_rows = None  # (rows, positions, factor): hidden states whose gradient is scaled
        self.stop_mask = self.eos_mask = self.eos_sel = self.logps = None

    @contextlib.contextmanager
    def armed(self, inputs: dict, args: PCLGRPOConfig) -> Iterator[None]:
        """Around the parent's forward on `inputs` (a generation batch with PCL's keys): the LM-head rows to read
        (the score levels; the stop ids at teacher-forced stops), the stop and replaced-EOS positions, and the segment
        positions whose body gradient is scaled. Disarmed after the forward, also when it raises."""
        # A forward that raised (e.g. out of memory, retried by `auto_find_batch_size`) never reached `nll`: its reads
        # and log-probs must not reach this one (a batch without stops would take the stale stop term)
        self.read_logits, self.logps = {}, None
        score_index, target = inputs["self_assessment_score_index"], inputs["self_assessment_target"]
        rows = (target >= 0).nonzero().squeeze(1)
        prompt_len = inputs["prompt_ids"].size(1)
        level_grad = args.self_assessment_mode == "both"
        level_ids = torch.tensor(self.tokens.level_ids)
        self.reads = {"level": (rows, prompt_len + score_index[rows], level_ids, level_grad)}
        if "self_assessment_mask" in inputs:  # teacher-forced
            self.nll_mask = inputs["self_assessment_mask"]
            stop_index, stop_id = inputs["self_assessment_stop_index"], inputs["self_assessment_stop_id"]
            stop_rows = (stop_index >= 0).nonzero().squeeze(1)
            self.stop_mask = torch.zeros_like(self.nll_mask)  # stops are policy tokens, never zeroed
            self.stop_mask[stop_rows, stop_index[stop_rows]] = True
            eos_rows = (stop_id >= 0) & (stop_id != self.tokens.marker_id)
            self.eos_mask = torch.zeros_like(self.nll_mask)  # where the marker replaced a sampled EOS
            eos_rows = eos_rows.nonzero().squeeze(1)
            self.eos_mask[eos_rows, stop_index[eos_rows]] = True
            stop_ids = torch.tensor([self.tokens.marker_id, *self.tokens.eos_ids], device=stop_id.device)
            self.eos_sel = None
            if len(eos_rows):
                which = torch.searchsorted(stop_rows, eos_rows)
                col = (stop_id[eos_rows].unsqueeze(1) == stop_ids).float().argmax(1)
                self.eos_sel = (which, col)
            if len(stop_rows):
                self.reads["stop"] = (stop_rows, prompt_len + stop_index[stop_rows], stop_ids, True)
            scale = args.self_assessment_backbone_grad
            if scale != 1.0 and args.self_assessment_weight > 0:
                # The hidden states that predict the segment after the stop: their gradient is scaled by `scale`
                seg_rows, seg_cols = (self.nll_mask & ~self.stop_mask).nonzero(as_tuple=True)
                self.segment_rows = (seg_rows, prompt_len + seg_cols - 1, scale)
        try:
            yield
        finally:
            self.reads = {}
            self.segment_rows = None
            self.nll_mask = None

    def read_head_rows(self, module, args, output) -> None:
        """Backbone forward hook: the logits of a few LM-head rows at requested positions, computed like the model's
        own logits (its logit transforms) at the fused head's temperature, from the same forward pass."""
        if not hasattr(output, "last_hidden_state"):
            return
        scaled = self.segment_rows
        if scaled is not None and output.last_hidden_state.requires_grad and torch.is_grad_enabled():
            # Scale the segment's gradient into the body: the same values, so the policy loss and readout are unchanged
            rows, positions, factor = scaled
            scale = torch.ones_like(output.last_hidden_state[..., :1])
            scale[rows, positions] = factor
            output.last_hidden_state.register_hook(lambda grad: grad * scale)
        if not self.reads:
            return
        head = self.base_model.get_output_embeddings()
        # Under ZeRO-3 the gathered head cannot receive gradients from outside its own forward: it is read detached.
        # Then log p(EOS) at a replaced stop gets its gradient through the hidden state and the fused head only, so
        # the EOS and marker LM-head rows receive the policy gradient of log p(MARKER) there instead of log p(EOS), and
        # the stop term (the marker's share of the stop mass) trains no LM-head row, only the hidden state
        zero3 = is_deepspeed_zero3_enabled()
        for name, (rows, positions, ids, grad) in self.reads.items():
            grad = grad and torch.is_grad_enabled()  # evaluation runs under no_grad: build no graph there
            hidden = output.last_hidden_state[rows, positions - 1]  # the hidden state before a token predicts it
            with maybe_gather_lm_head_ctx(*head_weight_and_bias(head)), torch.set_grad_enabled(grad):
                h = hidden if grad else hidden.detach()
                logits = project(h, head, ids.to(h.device), self.base_model.config, detach_weight=zero3)
            self.read_logits[name] = logits / self.temperature

    def policy_logps(self, logps: torch.Tensor) -> torch.Tensor:
        """The parent's per-token log-probs as the policy loss must see them. Outside an armed teacher-forced forward
        they are returned as they are."""
        if self.nll_mask is None:
            return logps
        # The segment NLL reads the graph-connected log-probs (log p(MARKER) where the marker replaced an EOS)
        self.logps = logps
        # The policy loss sees what the parent would: zeros on the segment (masked out of it anyway, and zeros
        # keep exp(ref - logp) finite against zero-padded ref log-probs), and log p(EOS) where the EOS was
        # sampled: log p(EOS) = log p(MARKER) + (z_EOS - z_MARKER) / T, from the same forward pass
        logps = logps.masked_fill(self.nll_mask & ~self.stop_mask, 0.0)
        stop = self.read_logits.get("stop")
        if stop is not None and self.eos_sel is not None:
            which, col = self.eos_sel
            rows, cols = self.eos_mask.nonzero(as_tuple=True)
            logps = logps.index_put((rows, cols), logps[rows, cols] + stop[which, col] - stop[which, 0])
        return logps

    def nll(
        self, inputs: dict, args: PCLGRPOConfig
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """After the armed forward: `(nll_sum, n_items, level_logp)`, the segment NLL's sum and item count (both `None`
        where the mode trains no NLL: generated), and the score levels' log-probs at the scored rows (`None` unread)."""
        level_logits = self.read_logits.pop("level", None)
        stop_logits = self.read_logits.pop("stop", None)
        self.read_logits = {}
        level_logp = None if level_logits is None else level_logits.log_softmax(-1)
        target = inputs["self_assessment_target"]
        if "self_assessment_mask" in inputs:  # teacher-forced: the armed forward's `nll_mask`
            nll_mask = inputs["self_assessment_mask"]
            nll_sum = -(self.logps * (nll_mask & ~self.stop_mask)).sum()
            if stop_logits is not None:
                # At the stop: the marker's share of the stop mass, log p(MARKER) - log sum p(stop ids). Whether to
                # stop is the policy's to learn; a full-vocabulary log p(MARKER) would raise the stop probability
                # wherever the rollouts stopped, rewarded or not (answers cut short)
                nll_sum = nll_sum - (stop_logits[:, 0] - stop_logits.logsumexp(-1)).sum()
            n_items = nll_mask.sum()
            self.logps = None
        elif args.self_assessment_mode == "both" and level_logp is not None:
            rows = (target >= 0).nonzero().squeeze(1)
            nll_sum = -level_logp.gather(1, target[rows].unsqueeze(1)).sum()
            n_items = (target >= 0).sum()
        else:
            nll_sum = n_items = None
        return nll_sum, n_items, level_logp


def metric_sums(
    nll_sum: torch.Tensor | None,
    n_items: torch.Tensor | None,
    level_logp: torch.Tensor | None,
    target: torch.Tensor,
    device: torch.device,
) -> list[torch.Tensor]:
    """This process's sums for the segment metrics: the NLL and its item count, then over the scored rows (`target`
    >= 0, `level_logp`'s rows) the Brier score of the level distribution's mean, the correct argmax levels and the
    number of scores. Zeros for what is absent."""
    stats = [torch.zeros((), device=device) for _ in range(5)]
    if nll_sum is not None:
        stats[0], stats[1] = nll_sum.detach(), n_items.float()
    scored = target[target >= 0]
    if level_logp is not None and len(scored):
        probs = level_logp.detach().exp()
        values = torch.linspace(0, 1, probs.size(1), device=probs.device)
        stats[2] = (((probs * values).sum(-1) - values[scored]) ** 2).sum()
        stats[3] = (probs.argmax(-1) == scored).sum().float()
        stats[4] = torch.tensor(float(len(scored)), device=device)
    return stats


def check_score_trains(base_model: PreTrainedModel, tokens: SegmentTokens, args: PCLGRPOConfig) -> None:
    """Refuse a teacher-forced run whose score could not learn: with `self_assessment_backbone_grad=0` only the LM
    head's rows of the score levels learn it, and an adapter may leave them frozen (a LoRA on a model whose marker
    is an existing token, or with tied embeddings, where only the marker's row trains)."""
    if args.self_assessment_mode != "teacher_forced" or args.self_assessment_weight <= 0:
        return
    if args.self_assessment_backbone_grad > 0:
        return
    head = base_model.get_output_embeddings()
    weight = head_weight_and_bias(head)[0]
    if isinstance(weight, torch.nn.Parameter):
        trained = weight.requires_grad
    else:  # PEFT's trainable tokens: the head serves a computed weight whose listed rows train
        indices = getattr(getattr(head, "token_adapter", None), "token_indices", None) or {}
        trained = set(tokens.level_ids) <= {i for ids in indices.values() for i in ids}
    if not trained:
        raise ValueError(
            "The self-score would not train: with `self_assessment_backbone_grad=0` (the default) the segment "
            "trains only the LM head's rows of the score levels, and this model's are frozen (e.g. a PEFT adapter "
            "on a model with tied embeddings, or whose marker is an existing token, so that PCL adds no LM-head "
            "copy). Set `self_assessment_backbone_grad=1.0` (the segment then trains the adapter too), or train "
            "the LM head (e.g. `modules_to_save=['lm_head']` on an untied head)."
        )
