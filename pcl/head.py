# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Projecting hidden states onto a few LM-head rows, with the logit transforms of the model's own forward.

Some models transform the LM head's output before it becomes logits: Gemma 2/3 soft-cap them
(`cap * tanh(logits / cap)`), Cohere multiplies them by `logit_scale`, Granite divides them by `logits_scaling`. A
readout that projects hidden states itself must apply the same, or it reads (and trains) another distribution.
"""

import torch
from transformers import PretrainedConfig


def logit_transform(config: PretrainedConfig) -> tuple[float, float | None]:
    """`(scale, softcap)` such that the model's logits are `softcap * tanh(scale * z / softcap)` (or `scale * z`
    without soft-capping), `z` the LM head's output; read like TRL's fused LM head reads them."""
    text = config.get_text_config()
    scale = getattr(text, "logit_scale", None)
    if scale is None:
        scale = getattr(text, "output_multiplier", None)
    if scale is None:
        scale = getattr(text, "lm_head_multiplier", None)
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        scale = text.logits_scaling if text.model_type == "hyperclovax" else 1 / text.logits_scaling
    return (1.0 if scale is None else float(scale)), getattr(text, "final_logit_softcapping", None)


def apply_logit_transform(logits: torch.Tensor, config: PretrainedConfig) -> torch.Tensor:
    """Apply the model's own transform of LM-head outputs (scale, then soft-cap) to `logits`."""
    scale, softcap = logit_transform(config)
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def head_weight_and_bias(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight and bias as its forward uses them, also under a PEFT wrapper: `modules_to_save` serves its
    trainable copy's, trainable tokens serve the weight with the trained rows (and have no `bias` of their own)."""
    bias = head.bias if hasattr(head, "bias") else getattr(head.original_module, "bias", None)
    return head.weight, bias


def project(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    ids: torch.Tensor,
    config: PretrainedConfig,
    detach_weight: bool = False,
) -> torch.Tensor:
    """The model's logits of the tokens `ids` from `hidden` (`(N, H)`): `ids` is `(K,)` (the same tokens for every row)
    or `(N, K)` (per row). The LM head's weight must be gathered by the caller under ZeRO-3 (and detached there)."""
    weight, bias = head_weight_and_bias(head)
    weight = weight[ids]
    bias = None if bias is None else bias[ids]
    if detach_weight:
        weight, bias = weight.detach(), None if bias is None else bias.detach()
    hidden = hidden.to(weight.dtype)
    if ids.dim() == 1:
        logits = torch.nn.functional.linear(hidden, weight, bias)
    else:
        logits = torch.einsum("nh,nkh->nk", hidden, weight) + (0 if bias is None else bias)
    return apply_logit_transform(logits.float(), config)
