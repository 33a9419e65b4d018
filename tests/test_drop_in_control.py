# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""benchmarks/drop_in_control.py: its split, paired statistics and record, and its `--quick` run end to end."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("drop_in_control", ROOT / "benchmarks" / "drop_in_control.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_held_out_prompts_are_disjoint_from_training(script):
    held, train = script.split(400)
    assert len(held) == 400 and len(held) + len(train) == 1000
    assert not {script.prompt(*p) for p in held} & {script.prompt(*p) for p in train}
    assert script.split(400) == (held, train)  # the same split for every seed and arm


def test_paired_diff_is_a_paired_bootstrap_of_the_accuracy_difference(script):
    rng = np.random.default_rng(3)
    a = [rng.integers(0, 2, 50).tolist(), rng.integers(0, 2, 30).tolist()]
    b = [rng.integers(0, 2, 50).tolist(), rng.integers(0, 2, 30).tolist()]
    out = script.paired_diff(a, b, n_boot=200, seed=7)
    # By hand: one shared index per seed for both arms, items resampled within each seed
    d = [np.asarray(x, float) - np.asarray(y, float) for x, y in zip(a, b, strict=True)]
    draw = np.random.default_rng(7)
    means = []
    for _ in range(200):
        idx = [draw.integers(0, len(x), size=len(x)) for x in d]
        means.append(np.concatenate([x[i] for x, i in zip(d, idx, strict=True)]).mean())
    assert out["diff"] == pytest.approx(np.concatenate(d).mean())
    assert out["ci"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
    assert out["verdict"] == ("higher" if out["ci"][0] > 0 else "lower" if out["ci"][1] < 0 else "tie")
    same = script.paired_diff([[1, 0, 1]], [[1, 0, 1]], n_boot=50)
    assert same == {"diff": 0.0, "ci": [0.0, 0.0], "verdict": "tie"}


def test_expected_accuracy_is_the_probability_of_the_right_answer_then_a_stop(script, tiny_model, tokenizer):
    import torch

    held = [(5, 3), (15, 3), (99, 9)]  # answers of 1, 2 and 3 digits, so the batch is padded
    tiny_model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]  # two stop ids
    got = script.expected(tiny_model, tokenizer, held)
    for (a, b), p in zip(held, got, strict=True):
        # By hand, one token at a time without padding: the chance to sample each answer token, then any stop
        ids = tokenizer(script.prompt(a, b), add_special_tokens=False)["input_ids"]
        log_p = 0.0
        for token in tokenizer(f" {a + b}", add_special_tokens=False)["input_ids"]:
            with torch.no_grad():
                log_p += tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)[token].item()
            ids.append(token)
        with torch.no_grad():
            probs = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].softmax(-1)
        stop = probs[tokenizer.eos_token_id] + probs[tokenizer.pad_token_id]
        assert p == pytest.approx(math.exp(log_p) * stop.item(), rel=1e-4)


def test_summary_keeps_per_item_correctness(script):
    result = {"correct": [1.0, 0.0, 1.0], "expected": [0.125, 0.99999, 0.0], "reward_last": 0.5}
    out = script.summary(result)
    assert out["correct"] == "101" and out["expected"] == [0.125, 1.0, 0.0]
    assert out["greedy_accuracy"] == pytest.approx(2 / 3) and out["expected_accuracy"] == pytest.approx(1.12499 / 3)
    assert out["reward_last"] == 0.5


@pytest.mark.slow  # one 150-step SFT, then five 8-step GRPO runs and their evaluations: ~30 s on one core
def test_quick_drop_in_control(script, monkeypatch, capsys):
    results = {}
    run = script.run

    def recorded(kind, *args):
        results[kind] = run(kind, *args)
        return results[kind]

    monkeypatch.setattr(script, "run", recorded)
    monkeypatch.setattr(sys, "argv", ["drop_in_control.py", "--quick"])
    script.main()
    printed = capsys.readouterr().out.splitlines()
    table = printed[next(i for i, line in enumerate(printed) if line.startswith("metric")) :]
    assert table[0].split() == ["metric", *script.ARMS]
    common = {"reward_first", "reward_last", "greedy_accuracy", "expected_accuracy"}
    pcl_only = {"segment_nll_first", "segment_nll_last", "frac_self_scored", "frac_stop_marker", "frac_stop_eos",
                "frac_stop_length", "p_marker_at_stop", "p_eos_at_stop", "self_score_auroc"}  # fmt: skip
    assert set(results) == set(script.ARMS)
    for kind, result in results.items():
        expected = common | (set() if kind.startswith("plain") else pcl_only)
        assert set(result) - {"correct", "expected"} == expected, kind
        assert len(result["correct"]) == len(result["expected"]) == 100
        assert all(0.0 <= p <= 1.0 for p in result["expected"])
        assert result["greedy_accuracy"] == pytest.approx(np.mean(result["correct"]))
        if kind.startswith("plain"):
            continue
        assert all(math.isfinite(result[k]) for k in pcl_only - {"self_score_auroc"}), kind
        stops = result["frac_stop_marker"] + result["frac_stop_eos"] + result["frac_stop_length"]
        assert stops == pytest.approx(1.0)
        # Every answer that stopped (at the marker or at EOS) gets a self-score; only length-cut ones do not
        assert result["frac_self_scored"] == pytest.approx(1.0 - result["frac_stop_length"])
    assert {line.split()[0] for line in table[1 : 1 + len(common | pcl_only)]} == common | pcl_only
    verdicts = [line.split() for line in printed if line.startswith(("greedy ", "expected "))]
    assert {(v[1], " ".join(v[2:5])) for v in verdicts} >= {("pooled", "pcl - plain"), ("seed0", "plain - base")}
