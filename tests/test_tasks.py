# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Tests for pcl.tasks: loading reasoning-gym and JSONL tasks, reward functions, and held-out filtering."""

import json

import pytest

from pcl.tasks import (
    TaskSpec,
    decode_entry,
    encode_entry,
    held_out,
    load_task,
    make_reward_func,
    score_completions,
)


# Small, fast arithmetic config shared by most tests.
SMALL = {"min_terms": 2, "max_terms": 3, "min_digits": 2, "max_digits": 2}


@pytest.fixture(scope="module")
def chain_sum():
    return load_task(TaskSpec("chain_sum", size=20, seed=3, config=SMALL))


@pytest.fixture(scope="module")
def chain_sum_reward():
    # A different seed than the data: the verifier must only rely on the entry it is given.
    return make_reward_func(TaskSpec("chain_sum", seed=10**6, config=SMALL))


# --- TaskSpec ---------------------------------------------------------------------------------------------------


def test_task_spec_from_dict():
    spec = TaskSpec.from_dict({"name": "chain_sum", "size": 5, "config": {"max_terms": 2}})
    assert spec == TaskSpec("chain_sum", size=5, seed=0, config={"max_terms": 2}, strip_prefix=True)


def test_task_spec_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown task spec key\(s\) \['sead', 'sise'\]"):
        TaskSpec.from_dict({"name": "chain_sum", "sise": 5, "sead": 1})


def test_task_spec_validates_fields():
    with pytest.raises(ValueError, match="size must be a positive integer"):
        TaskSpec("chain_sum", size=0)
    with pytest.raises(ValueError, match="must not contain"):
        TaskSpec("chain_sum", config={"seed": 1})


# --- loading reasoning-gym tasks --------------------------------------------------------------------------------


def test_load_chain_sum_columns_and_stripped_prompts(chain_sum):
    assert chain_sum.column_names == ["prompt", "answer", "task", "entry"]
    assert len(chain_sum) == 20
    assert set(chain_sum["task"]) == {"chain_sum"}
    for prompt, answer, entry in zip(chain_sum["prompt"], chain_sum["answer"], chain_sum["entry"], strict=True):
        assert prompt.endswith(" =") and "arithmetic problem" not in prompt and ":" not in prompt
        full = decode_entry(entry)
        assert full["question"] == f"State the final answer to the following arithmetic problem: {prompt}"
        assert full["answer"] == answer
        # The stripped prompt is still the whole problem: evaluating it gives the gold answer.
        assert str(eval(prompt[: -len(" =")])) == answer


def test_strip_prefix_false_keeps_question():
    ds = load_task(TaskSpec("chain_sum", size=3, seed=0, config=SMALL, strip_prefix=False))
    assert all(p.startswith("State the final answer to the following arithmetic problem: ") for p in ds["prompt"])


def test_known_chain_sum_prompt():
    # Seed 0 item 1 of the default chain_sum config is 'State the final answer ...: 4 - 1 - 7 ='.
    ds = load_task(TaskSpec("chain_sum", size=3, seed=0))
    assert ds["prompt"][1] == "4 - 1 - 7 ="
    assert ds["answer"][1] == "-4"


@pytest.mark.parametrize("style", ["simple", "natural"])
def test_basic_arithmetic_prompts_are_stripped(style):
    ds = load_task(TaskSpec("basic_arithmetic", size=10, seed=0, config={**SMALL, "format_style": style}))
    for prompt, entry in zip(ds["prompt"], ds["entry"], strict=True):
        expression = decode_entry(entry)["metadata"]["expression"]
        assert prompt == f"{expression} ="
    assert "5 - 3 - 6 =" in load_task(TaskSpec("basic_arithmetic", size=3, seed=0))["prompt"]


def test_products_prompt_is_stripped():
    ds = load_task(TaskSpec("products", size=3, seed=0))
    assert ds["prompt"][0] == "1663 * 5242 ="
    assert ds["answer"][0] == "8717446"


def test_non_arithmetic_prompts_are_unchanged():
    # gcd's question is not a bare expression; countdown's metadata 'expression' is the solution, never a prompt.
    for name in ("gcd", "countdown"):
        ds = load_task(TaskSpec(name, size=3, seed=0))
        assert ds["prompt"] == [decode_entry(e)["question"] for e in ds["entry"]]


def test_same_seed_same_prompts():
    a = load_task(TaskSpec("chain_sum", size=10, seed=7, config=SMALL))
    b = load_task(TaskSpec("chain_sum", size=10, seed=7, config=SMALL))
    c = load_task(TaskSpec("chain_sum", size=10, seed=8 + 10**6, config=SMALL))
    assert a["prompt"] == b["prompt"] and a["entry"] == b["entry"]
    assert a["prompt"] != c["prompt"]


def test_unknown_task_name_suggests_close_matches():
    with pytest.raises(ValueError) as info:
        load_task(TaskSpec("chainsum"))
    message = str(info.value)
    assert "'chain_sum'" in message and "reasoning_gym.factory" in message and "DATASETS" in message


def test_bad_config_lists_valid_keys():
    with pytest.raises(ValueError, match=r"Valid config keys: \['min_terms', 'max_terms'"):
        load_task(TaskSpec("chain_sum", size=2, config={"max_term": 2}))
    with pytest.raises(ValueError, match="max_terms must be >= min_terms"):
        load_task(TaskSpec("chain_sum", size=2, config={"max_terms": 0}))


def test_composite_task_names_sub_datasets():
    config = {"datasets": [{"name": "chain_sum", "config": SMALL}, {"name": "gcd", "weight": 1.0}]}
    ds = load_task(TaskSpec("composite", size=12, seed=0, config=config))
    assert set(ds["task"]) == {"chain_sum", "gcd"}
    reward = make_reward_func(TaskSpec("composite", seed=5, config=config))
    assert reward.__name__ == "composite_accuracy"
    assert reward(ds["prompt"], ds["answer"], entry=ds["entry"], task=ds["task"]) == [1.0] * 12
    # A single-task reward abstains (None) on the other task's rows of a mixed dataset.
    only_sum = make_reward_func(TaskSpec("chain_sum", config=SMALL))
    scores = only_sum(ds["prompt"], ds["answer"], entry=ds["entry"], task=ds["task"])
    assert scores == [1.0 if t == "chain_sum" else None for t in ds["task"]]


def test_entry_round_trips_tuples_and_int_keys():
    entry = {"answer": "1", "metadata": {"grid": ((1, 2), (3, 4)), "colors": {0: "red", 1: [(5,)]}}}
    assert decode_entry(encode_entry(entry)) == entry


# --- reward functions -------------------------------------------------------------------------------------------


def test_reward_gold_and_wrong(chain_sum, chain_sum_reward):
    prompts, answers, entries = chain_sum["prompt"], chain_sum["answer"], chain_sum["entry"]
    assert chain_sum_reward.__name__ == "chain_sum_accuracy"
    assert chain_sum_reward(prompts, answers, entry=entries) == [1.0] * len(answers)
    wrong = [str(int(a) + 1) for a in answers]
    assert chain_sum_reward(prompts, wrong, entry=entries) == [0.0] * len(answers)
    assert chain_sum_reward(prompts[:1], [""], entry=entries[:1]) == [0.0]


def test_reward_conversational_and_whitespace(chain_sum_reward):
    entry = [encode_entry({"question": "40 + 2 =", "answer": "42", "metadata": {}})] * 4
    completions = [
        " 42 ",
        "42\n",
        [{"role": "assistant", "content": " 42 "}],
        [{"role": "user", "content": "ignored"}, {"role": "assistant", "content": "41"}],
    ]
    assert chain_sum_reward(["40 + 2 ="] * 4, completions, entry=entry) == [1.0, 1.0, 1.0, 0.0]


def test_partial_credit_counts_as_wrong():
    # chain_sum's verifier gives len(gold)/len(answer) when the gold answer is merely contained in the reply.
    from reasoning_gym import create_dataset

    entry = {"question": "40 + 2 =", "answer": "42", "metadata": {}}
    partial = create_dataset("chain_sum", size=1, seed=0).score_answer("42 apples", entry=entry)
    assert 0.0 < partial < 1.0
    spec = TaskSpec("chain_sum", config=SMALL)
    assert make_reward_func(spec)(["x"], ["42 apples"], entry=[encode_entry(entry)]) == [0.0]
    assert make_reward_func(spec, threshold=partial)(["x"], ["42 apples"], entry=[encode_entry(entry)]) == [1.0]


def test_reward_needs_entry_column(chain_sum_reward):
    with pytest.raises(ValueError, match="'entry' column"):
        chain_sum_reward(["1 + 1 ="], ["2"])


def test_reward_rejects_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        make_reward_func(TaskSpec("chain_sum"), threshold=0.0)


# --- JSONL tasks ------------------------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_load_jsonl_and_reward(tmp_path):
    rows = [
        {"prompt": "2 + 2 =", "answer": "4", "source": "handwritten"},
        {"prompt": "Capital of France?", "answer": "Paris"},
        {"prompt": "1 / 4 =", "answer": "0.25"},
    ]
    path = write_jsonl(tmp_path / "mini.jsonl", rows[:1] + [""] + rows[1:])  # a blank line is skipped
    ds = load_task(TaskSpec(path))
    assert ds.column_names == ["prompt", "answer", "task", "entry"]
    assert ds["prompt"] == [r["prompt"] for r in rows]
    assert ds["task"] == ["mini"] * 3
    assert json.loads(ds["entry"][0]) == rows[0]

    reward = make_reward_func(TaskSpec(path))
    assert reward.__name__ == "mini_accuracy"
    entries = ds["entry"]
    assert reward(ds["prompt"], [" 4 ", "Paris\n", ".25"], entry=entries) == [1.0, 1.0, 1.0]
    assert reward(ds["prompt"], ["4.0", [{"role": "assistant", "content": "paris"}], "0.3"], entry=entries) == [
        1.0,
        0.0,
        0.0,
    ]


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"answer": "4"}, "line 2: missing key 'prompt'"),
        ({"prompt": "2 + 2 ="}, "line 2: missing key 'answer'"),
        ({"prompt": "2 + 2 =", "answer": 4}, "line 2: 'answer' must be a string, got int 4; quote it"),
        ({"prompt": ["2 + 2 ="], "answer": "4"}, "line 2: 'prompt' must be a string, got list"),
        ({"prompt": "  ", "answer": "4"}, "line 2: 'prompt' is empty"),
        ({"prompt": "2 + 2 =", "answer": ""}, "line 2: 'answer' is empty"),
        ('{"prompt": "2 + 2 =", "answer": "4"', "line 2: invalid JSON"),
        ('["2 + 2 =", "4"]', "line 2: expected a JSON object, got list"),
    ],
)
def test_jsonl_malformed_rows(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "1 + 1 =", "answer": "2"}, bad_row])
    with pytest.raises(ValueError) as info:
        load_task(TaskSpec(path))
    assert message in str(info.value) and "bad.jsonl" in str(info.value)


def test_jsonl_empty_and_missing(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(ValueError, match="is empty"):
        load_task(TaskSpec(path))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_task(TaskSpec(str(tmp_path / "nope.jsonl")))


# --- held-out evaluation ----------------------------------------------------------------------------------------


def test_close_seeds_overlap_and_held_out_counts_it():
    train = load_task(TaskSpec("chain_sum", size=200, seed=0, config=SMALL))
    shifted = load_task(TaskSpec("chain_sum", size=200, seed=1, config=SMALL))
    far = load_task(TaskSpec("chain_sum", size=200, seed=10**6, config=SMALL))

    # Item idx comes from Random(seed + idx): seed 1 is seed 0 shifted by one item.
    assert shifted["prompt"][:199] == train["prompt"][1:]
    marked, unseen, n_seen = held_out(shifted, train["prompt"])
    assert n_seen == sum(p in set(train["prompt"]) for p in shifted["prompt"]) >= 199
    assert marked["seen"][:199] == [True] * 199
    assert len(unseen) == 200 - n_seen and not set(unseen["prompt"]) & set(train["prompt"])

    marked, unseen, n_seen = held_out(far, train["prompt"])
    assert n_seen == sum(p in set(train["prompt"]) for p in far["prompt"]) < 10
    assert marked.column_names == ["prompt", "answer", "task", "entry", "seen"]
    assert len(marked) == 200 and len(unseen) == 200 - n_seen == sum(not s for s in marked["seen"])


def test_held_out_normalises_whitespace_and_replaces_seen(chain_sum):
    train = ["  " + chain_sum["prompt"][0].replace(" ", "\n  ") + "\t", chain_sum["prompt"][1]]
    marked, unseen, n_seen = held_out(chain_sum, train)
    assert n_seen == 2 and marked["seen"][:3] == [True, True, False]
    assert len(unseen) == len(chain_sum) - 2
    # Re-marking a marked set replaces the column instead of failing on a duplicate name.
    again, _, n_again = held_out(marked, [])
    assert n_again == 0 and not any(again["seen"])


def test_score_completions_passes_conversations_for_chat_prompts():
    """Self-labelling and the benchmark call rewards as GRPOTrainer does: answers to chat prompts as conversations,
    so a reward written for TRL's chat datasets (`completion[0]["content"]`, as TRL's own rewards read them) works."""

    def trl_style(completions, answer, **kwargs):
        return [float(c[0]["content"].strip() == a) for c, a in zip(completions, answer, strict=True)]

    chat = load_task(TaskSpec("chain_sum", size=2, seed=3, config=SMALL, chat=True))
    assert score_completions(trl_style, chat, [chat[0]["answer"], "0"]) == [1.0, 0.0]
    from trl.rewards import think_format_reward

    assert score_completions(think_format_reward, chat, ["<think>\nhm\n</think>\n1", "1"]) == [1.0, 0.0]
    # Text prompts keep text answers, and PCL's task reward reads both forms
    text = load_task(TaskSpec("chain_sum", size=2, seed=3, config=SMALL))
    assert score_completions(lambda completions, **kw: completions, text, ["a", "b"]) == ["a", "b"]
    spec = TaskSpec("chain_sum", size=2, seed=3, config=SMALL, chat=True)
    assert score_completions(make_reward_func(spec), chat, [chat[0]["answer"], "0"]) == [1.0, 0.0]
