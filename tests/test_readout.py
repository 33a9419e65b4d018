# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Tests for pcl.readout: self-scores against hand computations, padding invariance, reload, and a trained model."""

import os


os.environ["HF_HUB_OFFLINE"] = "1"

import time

import numpy as np
import pytest
import torch
from conftest import cpu_args
from datasets import Dataset

from pcl import PCLSFTConfig, PCLSFTTrainer
from pcl.inference import generate, marker_leak_check
from pcl.marker import CONFIG_KEY, load_pcl_model, prepare_model
from pcl.readout import level_distribution, self_scores, token_logprob_confidence, written_scores
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
    model.eval()
    return model, tokenizer, tokens


def _hand_scores(model, tokenizer, tokens, prompt: str, completion: str, temperature: float = 1.0) -> float:
    ids = [*tokenizer(prompt + completion)["input_ids"], tokens.marker_id, *tokens.prefix_ids]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    p = torch.softmax(logits[list(tokens.level_ids)].double() / temperature, -1)
    return float((p * torch.linspace(0, 1, len(tokens.level_ids), dtype=torch.double)).sum())


def test_values_match_hand_computation(setup):
    model, tokenizer, tokens = setup
    scores = self_scores(model, tokenizer, PROMPTS, COMPLETIONS)
    assert len(scores) == len(PROMPTS)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    for s, p, c in zip(scores, PROMPTS, COMPLETIONS, strict=True):
        assert s == pytest.approx(_hand_scores(model, tokenizer, tokens, p, c), abs=1e-5)


def test_padding_invariance(setup):
    model, tokenizer, _ = setup
    one = np.array(self_scores(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=1))
    for batch_size in (3, 7):
        batched = np.array(self_scores(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=batch_size))
        np.testing.assert_allclose(batched, one, atol=1e-5, rtol=0)


def test_level_distribution(setup):
    model, tokenizer, tokens = setup
    probs = level_distribution(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=4)
    assert probs.shape == (len(PROMPTS), FMT.levels)
    for row, p, c in zip(probs, PROMPTS, COMPLETIONS, strict=True):
        ids = [*tokenizer(p + c)["input_ids"], tokens.marker_id, *tokens.prefix_ids]
        with torch.no_grad():
            level_logits = model(torch.tensor([ids])).logits[0, -1, list(tokens.level_ids)].double()
        np.testing.assert_allclose(row, level_logits.softmax(-1).numpy(), atol=1e-6)
    expected = probs @ np.array([FMT.level_value(k) for k in range(FMT.levels)])
    np.testing.assert_allclose(self_scores(model, tokenizer, PROMPTS, COMPLETIONS), expected, atol=1e-12)


def test_temperature(setup):
    model, tokenizer, tokens = setup
    hot = self_scores(model, tokenizer, PROMPTS, COMPLETIONS, temperature=2.5)
    for s, p, c in zip(hot, PROMPTS, COMPLETIONS, strict=True):
        assert s == pytest.approx(_hand_scores(model, tokenizer, tokens, p, c, temperature=2.5), abs=1e-5)
    assert hot != self_scores(model, tokenizer, PROMPTS, COMPLETIONS)
    # A very high temperature flattens the distribution: the expected level goes to the middle of the grid
    flat = level_distribution(model, tokenizer, PROMPTS, COMPLETIONS, temperature=1e6)
    np.testing.assert_allclose(flat, 1 / FMT.levels, atol=1e-5)
    # The temperature recorded in the config (as PCL-GRPO does) is the default
    config = getattr(model.config, CONFIG_KEY)
    config["readout_temperature"] = 2.5
    try:
        assert self_scores(model, tokenizer, PROMPTS, COMPLETIONS) == hot
    finally:
        del config["readout_temperature"]
    with pytest.raises(ValueError, match="temperature"):
        self_scores(model, tokenizer, PROMPTS, COMPLETIONS, temperature=0.0)


def test_conversational_prompts(setup):
    model, tokenizer, _ = setup
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    plain = self_scores(model, tokenizer, PROMPTS, COMPLETIONS)
    # The tiny template renders a user turn as its content, so the ids (and scores) equal the plain prompts'
    np.testing.assert_allclose(self_scores(model, tokenizer, chats, COMPLETIONS, batch_size=3), plain, atol=1e-5)
    messages = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    np.testing.assert_allclose(self_scores(model, tokenizer, chats, messages), plain, atol=1e-5)


def test_marker_not_doubled(setup):
    model, tokenizer, _ = setup
    with_marker = [c + FMT.marker for c in COMPLETIONS]
    np.testing.assert_allclose(
        self_scores(model, tokenizer, PROMPTS, with_marker), self_scores(model, tokenizer, PROMPTS, COMPLETIONS)
    )


def test_long_inputs_are_truncated_from_the_left(setup):
    model, tokenizer, tokens = setup
    limit = model.config.max_position_embeddings
    prompt = "9 + " * 100 + "1 ="
    ids = [*tokenizer(prompt + " 901")["input_ids"], tokens.marker_id, *tokens.prefix_ids]
    assert len(ids) > limit
    with pytest.warns(UserWarning, match="cut off"):
        (score,) = self_scores(model, tokenizer, [prompt], [" 901"])
    with torch.no_grad():
        logits = model(torch.tensor([ids[-limit:]])).logits[0, -1, list(tokens.level_ids)]
    expected = float((logits.double().softmax(-1) * torch.linspace(0, 1, FMT.levels, dtype=torch.double)).sum())
    assert score == pytest.approx(expected, abs=1e-5)


def test_mismatched_lengths(setup):
    model, tokenizer, _ = setup
    with pytest.raises(ValueError, match="completions"):
        self_scores(model, tokenizer, PROMPTS, COMPLETIONS[:-1])


def test_reload_gives_same_scores(setup, tmp_path):
    model, tokenizer, tokens = setup
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer, loaded_tokens = load_pcl_model(str(tmp_path))
    assert loaded_tokens == tokens
    np.testing.assert_allclose(
        self_scores(loaded, loaded_tokenizer, PROMPTS, COMPLETIONS),
        self_scores(model, tokenizer, PROMPTS, COMPLETIONS),
        atol=1e-6,
    )


def test_token_logprob_confidence(setup):
    model, tokenizer, tokens = setup
    conf = token_logprob_confidence(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=3)
    assert set(conf) == {"mean_token_prob", "sequence_prob", "min_token_prob"}
    one = token_logprob_confidence(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=1)
    for key in conf:
        np.testing.assert_allclose(conf[key], one[key], atol=1e-5, rtol=1e-4)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS, strict=True)):
        ids = [*tokenizer(p + c)["input_ids"], tokens.marker_id]
        n = len(tokenizer(c)["input_ids"]) + 1  # the completion's tokens and the marker
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].double()
        logp = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)[-n:]
        assert conf["mean_token_prob"][i] == pytest.approx(float(logp.mean().exp()), rel=1e-4)
        assert conf["sequence_prob"][i] == pytest.approx(float(logp.sum().exp()), rel=1e-4)
        assert conf["min_token_prob"][i] == pytest.approx(float(logp.min().exp()), rel=1e-4)
        # The geometric mean lies between the least likely token and the whole sequence's probability
        assert 0.0 <= conf["sequence_prob"][i] <= conf["min_token_prob"][i] <= conf["mean_token_prob"][i] + 1e-7 <= 1


@pytest.fixture
def scripted(setup):
    """Make the tiny model deterministic: its next token is a fixed function of the last input token."""
    model, tokenizer, _ = setup
    handles = []

    def install(table: dict[str, str]):
        ids = {k: tokenizer.encode(k, add_special_tokens=False)[0] for k in {*table, *table.values(), "x"}}

        def hook(module, args, kwargs, output):
            output.logits = output.logits.clone()
            output.logits[:, -1] = -1e4
            for row, t in enumerate(kwargs["input_ids"][:, -1].tolist()):
                nxt = next((ids[v] for k, v in table.items() if ids[k] == t), ids["x"])
                output.logits[row, -1, nxt] = 1e4
            return output

        handles.append(model.register_forward_hook(hook, with_kwargs=True))

    yield install
    for h in handles:
        h.remove()


def test_written_scores(setup, scripted):
    model, tokenizer, _ = setup
    # After the marker the scripted model writes "c: 3" then EOS: level 3 of 5
    scripted({FMT.marker: "c", "c": ":", ":": " ", " ": "3", "3": "<eos>"})
    assert written_scores(model, tokenizer, PROMPTS[:3], COMPLETIONS[:3], batch_size=2) == [0.75] * 3


def test_written_scores_unparseable(setup, scripted):
    model, tokenizer, _ = setup
    # A score not followed by EOS, and a missing prefix, are not valid segments
    scripted({FMT.marker: "c", "c": ":", ":": " ", " ": "3", "3": "3"})
    assert written_scores(model, tokenizer, PROMPTS[:2], COMPLETIONS[:2]) == [None, None]
    scripted({FMT.marker: "3", "3": "<eos>"})
    assert written_scores(model, tokenizer, PROMPTS[:2], COMPLETIONS[:2]) == [None, None]


def test_written_scores_are_the_greedy_level(setup):
    """Unscripted level logits: the written score is the argmax of the level distribution (greedy, not a sample)."""
    model, tokenizer, tokens = setup
    lm_head = model.lm_head.weight
    saved = lm_head[list(tokens.level_ids)].clone()
    # Level rows spread over the plane in which the items' last hidden states differ most, so that the greedy level
    # differs between items; large enough that a level is the most likely token of the whole vocabulary
    with torch.no_grad():
        rows = [
            [*tokenizer(p + c)["input_ids"], tokens.marker_id, *tokens.prefix_ids]
            for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
        ]
        hidden = torch.stack([model.model(torch.tensor([r])).last_hidden_state[0, -1] for r in rows])
        _, _, v = torch.linalg.svd(hidden - hidden.mean(0), full_matrices=False)
        angles = torch.linspace(0, 2 * torch.pi, FMT.levels + 1)[:-1, None]
        lm_head[list(tokens.level_ids)] = 4 * (angles.cos() * v[0] + angles.sin() * v[1]) + hidden.mean(0)
    ids = {t: tokenizer.encode(t, add_special_tokens=False)[0] for t in "c: "}
    script = {tokens.marker_id: ids["c"], ids["c"]: ids[":"], ids[":"]: ids[" "], **dict.fromkeys(tokens.level_ids, 1)}

    def hook(module, args, kwargs, output):
        # Script the prefix and the EOS after a level; the level itself is the model's own choice
        output.logits = output.logits.clone()
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        for row, t in enumerate(input_ids[:, -1].tolist()):
            if t in script:
                output.logits[row, -1] = -1e4
                output.logits[row, -1, script[t]] = 1e4
        return output

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        written = written_scores(model, tokenizer, PROMPTS, COMPLETIONS, batch_size=3)
        probs = level_distribution(model, tokenizer, PROMPTS, COMPLETIONS)
    finally:
        handle.remove()
        with torch.no_grad():
            lm_head[list(tokens.level_ids)] = saved
    assert written == [FMT.level_value(int(k)) for k in probs.argmax(1)]
    # Not a degenerate case: the items' greedy levels differ, and no level takes all the mass
    assert len(set(written)) > 1 and probs.max(1).min() < 0.9, probs


# ---- what the model's own forward applies ----------------------------------------------------------------------


def _tiny_config(name: str, tokenizer):
    """A tiny config of an architecture whose forward transforms the LM head's logits, and that transform."""
    import transformers

    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    if name == "gemma2":  # tanh soft cap (Gemma 2/3)
        config = transformers.Gemma2Config(head_dim=16, sliding_window=16, final_logit_softcapping=2.0, **common)
        return transformers.Gemma2ForCausalLM(config), lambda x: 2.0 * torch.tanh(x / 2.0)
    if name == "cohere":  # multiplied by `logit_scale`
        config = transformers.CohereConfig(logit_scale=0.25, **common)
        return transformers.CohereForCausalLM(config), lambda x: 0.25 * x
    config = transformers.GraniteConfig(logits_scaling=4.0, **common)  # divided by `logits_scaling`
    return transformers.GraniteForCausalLM(config), lambda x: x / 4.0


@pytest.mark.parametrize("arch", ["gemma2", "cohere", "granite"])
def test_readout_applies_the_models_logit_transform(arch):
    """The readout takes `model(...).logits`, so what the model's forward applies to the LM head's output (Gemma 2's
    `final_logit_softcapping`, Cohere's `logit_scale`, Granite's `logits_scaling`) is applied as in training."""
    from pcl.inference import generate

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model, transform = _tiny_config(arch, tokenizer)
    model.eval()
    tokens = prepare_model(model, tokenizer, FMT)
    with torch.no_grad():
        # Level logits of several units, so the transform visibly changes their softmax
        model.lm_head.weight[list(tokens.level_ids)] = 3 * torch.randn(len(tokens.level_ids), 32)
    prompts, answers = ["1 + 2 =", "12 + 30 ="], ["4", "4"]
    values = torch.linspace(0, 1, FMT.levels, dtype=torch.double)
    transformed, untransformed = [], []
    for p, a in zip(prompts, answers, strict=True):
        ids = torch.tensor([[*tokenizer(p + a)["input_ids"], tokens.marker_id, *tokens.prefix_ids]])
        with torch.no_grad():
            raw = model.lm_head(model.model(ids).last_hidden_state[0, -1])[list(tokens.level_ids)].double()
        transformed.append(float((transform(raw).softmax(-1) * values).sum()))
        untransformed.append(float((raw.softmax(-1) * values).sum()))
    assert max(abs(c - u) for c, u in zip(transformed, untransformed, strict=True)) > 0.02
    assert self_scores(model, tokenizer, prompts, answers) == pytest.approx(transformed, abs=1e-5)

    # The KV-cache readout during generation reads the same transformed logits (the answer "4" and the marker scripted)
    four = tokenizer.encode("4", add_special_tokens=False)[0]
    script = {tokenizer.encode("=", add_special_tokens=False)[0]: four, four: tokens.marker_id}

    def hook(module, args, kwargs, output):
        output.logits = output.logits.clone()
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        for row, t in enumerate(input_ids[:, -1].tolist()):
            if t in script:
                output.logits[row, -1] = -1e4
                output.logits[row, -1, script[t]] = 1e4
        return output

    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        out = generate(model, tokenizer, prompts, max_new_tokens=4, show_progress=False, self_score=True)
    finally:
        handle.remove()
    assert [g.text for g in out] == ["4", "4"]
    assert [g.self_score for g in out] == pytest.approx(transformed, abs=1e-5)


# ---- a trained model -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trained_model_separates_rewards_and_stops_at_marker(tmp_path):
    start = time.perf_counter()
    torch.manual_seed(0)
    # The reward follows a rule the model can read from the prompt: right when the first operand is below 5
    rows = [
        {"prompt": f"{a} + {b} =", "completion": f" {a + b}", "reward": 1.0 if a < 5 else 0.0}
        for a in range(10)
        for b in range(10)
    ]
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, seed=0)
    args = PCLSFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=80,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=1000,
        **cpu_args(),
    )
    trainer = PCLSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    model = trainer.model
    prompts = [r["prompt"] for r in rows]
    completions = [r["completion"] for r in rows]
    rewards = np.array([r["reward"] for r in rows])

    scores = np.array(self_scores(model, tokenizer, prompts, completions))
    assert scores[rewards == 1].mean() > scores[rewards == 0].mean() + 0.3
    written = written_scores(model, tokenizer, prompts, completions)
    assert np.mean([w == r for w, r in zip(written, rewards, strict=True)]) > 0.9

    deployed = generate(model, tokenizer, prompts, max_new_tokens=8, show_progress=False)
    assert all(g.tokens_after_marker == 0 for g in deployed)
    assert all(g.stop == "marker" for g in deployed)
    assert marker_leak_check(deployed)["with_tokens_after_marker"] == 0
    # The self-score read from the generation's own KV cache equals the separate forward pass over the same answers
    cached = generate(model, tokenizer, prompts, max_new_tokens=8, show_progress=False, self_score=True, batch_size=7)
    assert [g.token_ids for g in cached] == [g.token_ids for g in deployed]
    separate = self_scores(model, tokenizer, prompts, [g.text for g in deployed])
    np.testing.assert_allclose([g.self_score for g in cached], separate, atol=1e-5)
    written_out = generate(model, tokenizer, prompts, max_new_tokens=8, stop_at_marker=False, show_progress=False)
    assert marker_leak_check(written_out)["with_tokens_after_marker"] > 0
    # The segment costs tokens the deployed model does not spend
    assert sum(g.num_tokens for g in written_out) > sum(g.num_tokens for g in deployed)

    # The checkpoint the trainer saves reads back the same
    trainer.save_model(str(tmp_path / "ckpt"))
    loaded, loaded_tokenizer, _ = load_pcl_model(str(tmp_path / "ckpt"))
    np.testing.assert_allclose(self_scores(loaded, loaded_tokenizer, prompts, completions), scores, atol=1e-5)
    print(f"trained-model test took {time.perf_counter() - start:.1f}s")  # noqa: T201
