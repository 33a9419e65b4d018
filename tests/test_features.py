# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Tests for pcl.features: one forward pass per batch gives the token log-probs, the hidden state at the answer end and
the level distribution, each equal to a hand computation from a plain forward pass over one unpadded input."""

import numpy as np
import pytest
import torch

from pcl import baselines
from pcl.features import AnswerFeatures, answer_features
from pcl.marker import prepare_model
from pcl.readout import self_scores, token_logprob_confidence
from pcl.segment import SegmentFormat
from pcl.tiny import build_char_tokenizer, build_tiny_model


FMT = SegmentFormat(levels=5, prefix="c: ")
PROMPTS = ["1 + 1 =", "12 + 30 =", "Q: what is 9 + 9? A:", "7", "3 + 4 =", "a longer prompt, 100 + 200 =", "0 - 0 ="]
COMPLETIONS = [" 2", " 42", " 18", " 7 is a number", "", " 300", " 0"]


@pytest.fixture(scope="module")
def setup():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, seed=0)
    tokens = prepare_model(model, tokenizer, FMT)
    with torch.no_grad():
        # Distinct level logits, so the level distribution is not uniform-ish
        model.lm_head.weight[list(tokens.level_ids)] = torch.randn(
            FMT.levels, 32, generator=torch.Generator().manual_seed(3)
        )
    model.eval()
    return model, tokenizer, tokens


def _by_hand(model, tokenizer, tokens, prompt: str, completion: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token log-probs (completion + marker), hidden state before the marker, level probs: one plain forward pass."""
    answer = tokenizer(prompt + completion)["input_ids"]
    n = len(answer) - len(tokenizer(prompt)["input_ids"]) + 1  # the char tokenizer splits at the boundary
    ids = [*answer, tokens.marker_id, *tokens.prefix_ids]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
        last_hidden = model.model(torch.tensor([ids])).last_hidden_state[0]
    logp = logits[:-1].log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    marker_at = len(answer)
    scored = logp[marker_at - n : marker_at].numpy()  # logp[j] scores ids[j + 1]
    hidden = last_hidden[marker_at - 1].numpy()
    levels = logits[-1, list(tokens.level_ids)].softmax(-1).numpy()
    return scored, hidden, levels


def test_features_match_a_plain_forward_pass(setup):
    model, tokenizer, tokens = setup
    features = answer_features(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=3)
    assert len(features) == len(PROMPTS) and features.hidden.shape == (len(PROMPTS), 32)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS, strict=True)):
        scored, hidden, levels = _by_hand(model, tokenizer, tokens, p, c)
        assert features.token_logprobs[i].shape == (len(c) + 1,)  # one char per token, plus the marker
        np.testing.assert_allclose(features.token_logprobs[i], scored, atol=1e-5)
        np.testing.assert_allclose(features.hidden[i], hidden, atol=1e-5)
        np.testing.assert_allclose(features.level_probs[i], levels, atol=1e-6)
    # The empty completion scores the marker alone
    assert features.token_logprobs[4].shape == (1,)


def test_one_forward_pass_per_batch(setup):
    model, tokenizer, _ = setup
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        answer_features(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=3)
    finally:
        handle.remove()
    assert len(calls) == 3  # 7 answers in batches of 3


def test_same_numbers_as_the_readout_functions(setup):
    model, tokenizer, _ = setup
    features = answer_features(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=4)
    np.testing.assert_allclose(
        baselines.self_score(features), self_scores(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=2), atol=1e-6
    )
    conf = token_logprob_confidence(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=1)
    for name in conf:
        np.testing.assert_allclose(baselines.SOURCES[name](features), conf[name], rtol=1e-5)
    # Switching kinds of features off changes nothing in the others
    levels_only = answer_features(model, tokenizer, PROMPTS, COMPLETIONS, logprobs=False, hidden_states=False)
    assert levels_only.token_logprobs is None and levels_only.hidden is None
    np.testing.assert_allclose(levels_only.level_probs, features.level_probs, atol=1e-6)
    hidden_only = answer_features(model, tokenizer, PROMPTS, COMPLETIONS, logprobs=False, levels=False)
    np.testing.assert_allclose(hidden_only.hidden, features.hidden, atol=1e-5)


def test_hidden_state_is_the_last_layers(setup):
    model, tokenizer, tokens = setup
    features = answer_features(model, tokenizer, PROMPTS[:2], COMPLETIONS[:2], logprobs=False, levels=False)
    for i in range(2):
        ids = tokenizer(PROMPTS[i] + COMPLETIONS[i])["input_ids"]
        with torch.no_grad():
            out = model(torch.tensor([[*ids, tokens.marker_id, *tokens.prefix_ids]]), output_hidden_states=True)
        np.testing.assert_allclose(features.hidden[i], out.hidden_states[-1][0, len(ids) - 1].numpy(), atol=1e-5)


def test_long_inputs_and_select(setup):
    model, tokenizer, tokens = setup
    limit = model.config.max_position_embeddings
    prompt = "9 + " * 100 + "1 ="
    with pytest.warns(UserWarning, match="cut off"):
        features = answer_features(model, tokenizer, [prompt, PROMPTS[0]], [" 901", COMPLETIONS[0]])
    ids = [*tokenizer(prompt + " 901")["input_ids"], tokens.marker_id, *tokens.prefix_ids][-limit:]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    logp = logits[:-1].log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    np.testing.assert_allclose(features.token_logprobs[0], logp[-len(tokens.prefix_ids) - 5 : -3].numpy(), atol=1e-5)
    picked = features.select([1])
    assert len(picked) == 1
    np.testing.assert_array_equal(picked.hidden[0], features.hidden[1])
    np.testing.assert_array_equal(picked.level_probs[0], features.level_probs[1])
    np.testing.assert_array_equal(
        features.select(np.array([False, True])).token_logprobs[0], features.token_logprobs[1]
    )
    assert len(AnswerFeatures()) == 0


def test_bad_input(setup):
    model, tokenizer, _ = setup
    with pytest.raises(ValueError, match="completions"):
        answer_features(model, tokenizer, PROMPTS, COMPLETIONS[:-1])
    with pytest.raises(ValueError, match="temperature"):
        answer_features(model, tokenizer, PROMPTS, COMPLETIONS, temperature=0)
