# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""`pcl.head.project` must give the logits the model's own forward gives, logit transforms included."""

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from pcl.head import logit_transform, project


SMALL = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=2)  # fmt: skip
CASES = [
    (Gemma2ForCausalLM, Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=0.5), (1.0, 0.5)),
    (CohereForCausalLM, CohereConfig(**SMALL, logit_scale=0.25), (0.25, None)),
    (GraniteForCausalLM, GraniteConfig(**SMALL, logits_scaling=4.0), (0.25, None)),
    (LlamaForCausalLM, LlamaConfig(**SMALL), (1.0, None)),
]


@pytest.mark.parametrize("model_cls, config, transform", CASES, ids=lambda x: getattr(x, "__name__", None))
def test_projection_matches_the_models_forward(model_cls, config, transform):
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)  # logits large enough for the soft-cap to bite
    assert logit_transform(model.config) == transform
    ids = torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        hidden = out.hidden_states[-1].reshape(-1, 16)  # after the final norm: what the LM head sees
        rows = torch.tensor([3, 7, 11])
        logits = project(hidden, model.get_output_embeddings(), rows, model.config)
        torch.testing.assert_close(logits, out.logits.reshape(-1, 40)[:, rows], rtol=1e-5, atol=1e-5)
        per_row = torch.randint(0, 40, (hidden.size(0), 2))
        logits = project(hidden, model.get_output_embeddings(), per_row, model.config)
        torch.testing.assert_close(logits, out.logits.reshape(-1, 40).gather(1, per_row), rtol=1e-5, atol=1e-5)
    if transform != (1.0, None):  # the raw projection differs: the transform matters
        raw = hidden @ model.get_output_embeddings().weight[rows].T
        assert not torch.allclose(raw, out.logits.reshape(-1, 40)[:, rows], atol=1e-3)
