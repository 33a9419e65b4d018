# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Tests for pcl.inference: deploy-mode generation (stop reasons, token counts, the marker as stop id)."""

import os


os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from pcl.inference import Generation, encode_prompt, generate, marker_leak_check, pad_left, segment_tokens_of
from pcl.marker import prepare_model
from pcl.segment import SegmentFormat
from pcl.tiny import build_char_tokenizer, build_tiny_model


FMT = SegmentFormat(levels=5, prefix="c: ")


@pytest.fixture(scope="module")
def setup():
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, seed=0)
    tokens = prepare_model(model, tokenizer, FMT)
    return model, tokenizer, tokens


def _id(tokenizer, text: str) -> int:
    (i,) = tokenizer.encode(text, add_special_tokens=False)
    return i


@pytest.fixture
def scripted(setup):
    """Make the tiny model deterministic: its next token is a fixed function of the last input token."""
    model, tokenizer, tokens = setup
    handles = []

    def install(table: dict[str, str]):
        nxt = {_id(tokenizer, k): _id(tokenizer, v) for k, v in table.items()}

        def hook(module, args, kwargs, output):
            last = kwargs["input_ids"][:, -1].tolist()
            logits = torch.full_like(output.logits[:, -1], -1e4)
            for row, t in enumerate(last):
                # Unlisted tokens continue with "x" forever (never a stop id)
                logits[row, nxt.get(t, _id(tokenizer, "x"))] = 1e4
            output.logits = output.logits.clone()
            output.logits[:, -1] = logits
            return output

        handles.append(model.register_forward_hook(hook, with_kwargs=True))

    yield install
    for h in handles:
        h.remove()


# The answer " 7", then the marker, then the segment `c: 3 <eos>`; prompts ending in "?" get EOS at once
TABLE = {
    "=": " ",
    " ": "7",
    "7": FMT.marker,
    FMT.marker: "c",
    "c": ":",
    ":": "!",
    "!": "3",
    "3": "<eos>",
    "?": "<eos>",
}


def test_deploy_stops_at_marker(setup, scripted):
    model, tokenizer, tokens = setup
    scripted(TABLE)
    out = generate(
        model, tokenizer, ["1 + 6 =", "why?", "long prompt, 3 + 4 ="], max_new_tokens=10, show_progress=False
    )
    assert all(isinstance(g, Generation) for g in out)
    first, second, third = out
    assert first.stop == "marker" and first.text == " 7" and first.num_tokens == 3
    assert first.token_ids == [_id(tokenizer, " "), _id(tokenizer, "7"), tokens.marker_id]
    assert first.tokens_after_marker == 0
    # Padding of rows that finished early is not counted
    assert (
        second.stop == "eos" and second.text == "" and second.num_tokens == 1 and second.token_ids == [tokens.eos_id]
    )
    assert third == first
    assert marker_leak_check(out) == {"n": 3, "with_tokens_after_marker": 0, "share": 0.0}


def test_no_stop_at_marker_writes_segment(setup, scripted):
    model, tokenizer, tokens = setup
    scripted(TABLE)
    out = generate(model, tokenizer, ["1 + 6 =", "why?"], max_new_tokens=10, stop_at_marker=False, show_progress=False)
    first, second = out
    # " " "7" MARKER "c" ":" "!" "3" EOS: the text is the answer only
    assert first.stop == "eos" and first.text == " 7" and first.num_tokens == 8
    assert first.tokens_after_marker == 5
    assert first.token_ids[2] == tokens.marker_id and first.token_ids[-1] == tokens.eos_id
    assert second.stop == "eos" and second.tokens_after_marker == 0
    assert marker_leak_check(out) == {"n": 2, "with_tokens_after_marker": 1, "share": 0.5}


def test_length_stop(setup, scripted):
    model, tokenizer, _ = setup
    scripted(TABLE)
    out = generate(model, tokenizer, ["1 + 6 =", "ab"], max_new_tokens=2, show_progress=False)
    assert [g.stop for g in out] == ["length", "length"]
    assert [g.num_tokens for g in out] == [2, 2]
    assert out[0].text == " 7" and out[1].text == "xx"
    # The marker reached exactly at the limit is still a marker stop
    out = generate(model, tokenizer, ["1 + 6 ="], max_new_tokens=3, show_progress=False)
    assert out[0].stop == "marker" and out[0].num_tokens == 3


def test_batch_size_and_conversational(setup, scripted):
    model, tokenizer, _ = setup
    scripted(TABLE)
    prompts = ["1 + 6 =", [{"role": "user", "content": "2 + 5 ="}], "why?", "a", [{"role": "user", "content": "?"}]]
    one = generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=1, show_progress=False)
    many = generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=4, show_progress=False)
    assert one == many
    assert [g.stop for g in one] == ["marker", "marker", "eos", "length", "eos"]


def test_random_model_contract(setup):
    model, tokenizer, tokens = setup
    model.train()
    padding_side = tokenizer.padding_side
    prompts = ["1 + 1 =", "12 + 30 =", "9 + 9 ="]
    out = generate(model, tokenizer, prompts, max_new_tokens=6, show_progress=False)
    assert model.training and tokenizer.padding_side == padding_side
    stops = {tokens.marker_id, *tokens.eos_ids}
    for g in out:
        assert 1 <= g.num_tokens == len(g.token_ids) <= 6
        assert g.tokens_after_marker == 0
        # Only the last token may be a stop id, and it decides the stop reason
        assert not stops & set(g.token_ids[:-1])
        expected = "marker" if g.token_ids[-1] == tokens.marker_id else "eos" if g.token_ids[-1] in stops else "length"
        assert g.stop == expected
    model.eval()


def test_warns_without_marker_stop_id(setup, scripted):
    model, tokenizer, tokens = setup
    scripted(TABLE)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = list(tokens.eos_ids)
    try:
        with pytest.warns(UserWarning, match="does not list the marker"):
            out = generate(model, tokenizer, ["1 + 6 ="], max_new_tokens=10, show_progress=False)
        assert out[0].tokens_after_marker > 0
    finally:
        model.generation_config.eos_token_id = saved


def test_helpers(setup):
    model, tokenizer, tokens = setup
    assert segment_tokens_of(model, tokenizer) == tokens
    assert encode_prompt(tokenizer, "ab", "c") == tokenizer("abc")["input_ids"]
    chat = [{"role": "user", "content": "ab"}]
    assert encode_prompt(tokenizer, chat, "c") == tokenizer("abc")["input_ids"]
    ids, mask = pad_left([[5, 6], [7]], 0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    assert marker_leak_check([]) == {"n": 0, "with_tokens_after_marker": 0, "share": 0.0}


# ---- the self-score read from the generation's KV cache -------------------------------------------------------------


@pytest.fixture
def distinct_levels():
    """A tiny model whose answers are scripted (" 4" then the marker after "=") but whose level logits after the
    prefix are the model's own, made distinct (and far from tied) by redrawing the level rows of the LM head."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, seed=0)
    tokens = prepare_model(model, tokenizer, FMT)
    with torch.no_grad():
        rows = torch.randn(len(tokens.level_ids), 32, generator=torch.Generator().manual_seed(1))
        model.lm_head.weight[list(tokens.level_ids)] = rows
    nxt = {_id(tokenizer, "="): _id(tokenizer, "4"), _id(tokenizer, "4"): tokens.marker_id, _id(tokenizer, "?"): 1}
    assert tokenizer.eos_token_id == 1

    def hook(module, args, kwargs, output):
        output.logits = output.logits.clone()
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        for row, t in enumerate(input_ids[:, -1].tolist()):
            if t in nxt:  # only the answer is scripted; every other position keeps the model's logits
                output.logits[row, -1] = -1e4
                output.logits[row, -1, nxt[t]] = 1e4
        return output

    handle = model.register_forward_hook(hook, with_kwargs=True)
    yield model, tokenizer, tokens
    handle.remove()


def _hand_score(model, tokenizer, tokens, prompt: str, answer: str) -> float:
    """Expected level after `prompt answer MARKER prefix`, from a plain forward pass (softmax over the levels)."""
    ids = [*tokenizer(prompt + answer)["input_ids"], tokens.marker_id, *tokens.prefix_ids]
    with torch.no_grad():
        level_logits = model(torch.tensor([ids])).logits[0, -1, list(tokens.level_ids)].double()
    return float((level_logits.softmax(-1) * torch.linspace(0, 1, len(tokens.level_ids), dtype=torch.double)).sum())


PROMPTS = ["3 + 4 =", "why?", "21 + 3 =", "a longer prompt, 1 + 2 ="]


def test_self_score_from_the_generation_cache(distinct_levels):
    """The prefix is fed after the marker and the score read at the next step: same value as the separate readout."""
    from pcl.readout import self_scores

    model, tokenizer, tokens = distinct_levels
    out = generate(model, tokenizer, PROMPTS, max_new_tokens=6, show_progress=False, self_score=True, batch_size=3)
    plain = generate(model, tokenizer, PROMPTS, max_new_tokens=6, show_progress=False, batch_size=3)
    assert [g.token_ids for g in out] == [g.token_ids for g in plain]  # the answers are the deploy-mode answers
    scored = [i for i, g in enumerate(out) if g.stop == "marker"]
    assert scored == [0, 2, 3] and out[1].stop == "eos" and all(out[i].text == "4" for i in scored)
    # An answer that stopped at EOS is scored where PCL trains it, after `answer MARKER` (here the empty answer)
    assert out[1].self_score == pytest.approx(_hand_score(model, tokenizer, tokens, PROMPTS[1], ""), abs=1e-5)
    hand = [_hand_score(model, tokenizer, tokens, PROMPTS[i], "4") for i in scored]
    # The levels do not tie, and the answers do not all get the same score
    assert max(hand) - min(hand) > 0.01 and all(abs(h - 0.5) > 0.01 for h in hand)
    assert [out[i].self_score for i in scored] == pytest.approx(hand, abs=1e-5)
    assert self_scores(model, tokenizer, [PROMPTS[i] for i in scored], ["4"] * 3) == pytest.approx(hand, abs=1e-5)
    with pytest.raises(ValueError, match="deploy mode"):
        generate(model, tokenizer, PROMPTS, stop_at_marker=False, self_score=True)
    model.generation_config.num_beams = 2  # the fixture's model is fresh for each test
    with pytest.raises(ValueError, match="num_beams=2"):
        generate(model, tokenizer, PROMPTS, self_score=True)
    model.generation_config.update(num_beams=1, do_sample=True, num_return_sequences=3)
    with pytest.raises(ValueError, match="num_return_sequences=3"):
        generate(model, tokenizer, PROMPTS, self_score=True)


@pytest.mark.parametrize("do_sample", [False, True])
def test_self_score_ignores_the_generation_configs_processors(distinct_levels, do_sample):
    """Processors of a saved generation config (Qwen2.5-Instruct ships repetition_penalty 1.05) shape the answer, not
    the score: the cached score still equals the separate readout."""
    model, tokenizer, tokens = distinct_levels
    gen = model.generation_config  # the fixture's model is fresh for each test: no need to restore it
    # Levels 1-4 occur in the prompts (repetition penalty), " " -> "4" occurs in them (no_repeat_ngram_size=2 bans "4"
    # after the prefix's " "), level 2 is suppressed outright; the warpers act when sampling
    gen.update(
        repetition_penalty=1.05,
        no_repeat_ngram_size=2,
        suppress_tokens=[tokens.level_ids[2]],
        temperature=0.7,
        top_k=3,
        top_p=0.9,
    )
    out = generate(
        model, tokenizer, PROMPTS, max_new_tokens=6, show_progress=False, self_score=True, do_sample=do_sample
    )
    scored = [i for i, g in enumerate(out) if g.stop == "marker"]
    assert scored == [0, 2, 3] and all(out[i].text == "4" for i in scored)
    hand = [_hand_score(model, tokenizer, tokens, PROMPTS[i], "4") for i in scored]
    assert [out[i].self_score for i in scored] == pytest.approx(hand, abs=1e-5)
