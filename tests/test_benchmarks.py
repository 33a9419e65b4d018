# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The benchmark scripts still run end to end (their --quick modes) and report what they promise."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_overhead_quick(tmp_path):
    out = tmp_path / "overhead.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())

    assert {"meta", "grpo", "sft", "memory", "inference", "readout", "targets"} <= result.keys()
    assert result["meta"]["threads"] == 1 and result["meta"]["preset"] == "quick"
    grpo = result["grpo"]
    assert {"token_floor", "sequence_floor", "train_step", "full_step", "tokens"} <= grpo.keys()
    for step in ("train_step", "full_step"):
        assert {"pcl_s", "plain_s", "ratio", "ratio_min", "ratio_max"} <= grpo[step].keys()
        assert grpo[step]["ratio"] > 0
    # Every rollout got its segment: `SCORE EOS` after the stopping marker, two tokens a row
    tokens = grpo["tokens"]["pcl"]
    assert tokens["rows_with_segment"] == tokens["rows"] and tokens["segment_tokens"] == 2 * tokens["rows"]
    assert grpo["token_floor"] == pytest.approx(1 + 2 / result["meta"]["sizes"]["completion_len"])
    for key in ("no_reward", "reward", "reward_vs_unrendered"):
        assert {"token_floor", "ratio", "ratio_min", "ratio_max"} <= result["sft"][key].keys()
    assert result["sft"]["reward"]["token_floor"] == 1.0  # identical token work, only the reweighting differs
    assert result["sft"]["no_reward"]["token_floor"] > 1.0
    assert set(result["memory"]) == {"grpo", "sft_no_reward", "sft_reward"}
    for item in result["memory"].values():
        assert item["pcl"]["growth_mib"] > 0 and item["plain"]["growth_mib"] > 0 and item["growth_ratio"] > 0

    inference = result["inference"]
    assert {"deploy", "no_stop", "plain", "time_ratio_deploy_vs_plain", "aa_ratio_noise"} <= inference.keys()
    assert inference["matched_answers"] > 0
    assert inference["deploy_extra_tokens"] == 0  # deploy mode: not one token more than the non-PCL model
    assert inference["deploy_tokens_after_marker"] == 0
    assert inference["deploy"]["stops"]["marker"] > 0
    assert {"self_scores_s", "generate_s", "ratio"} <= result["readout"].keys()
    assert all({"name", "value", "target", "met"} <= t.keys() for t in result["targets"])


def test_calibration_benchmark_script(tmp_path, tokenizer, capsys):
    """benchmarks/calibration.py on a tiny PCL checkpoint and a shrunk quickstart recipe: both splits, the items file,
    the paired verdicts, and every evaluation question that occurs in a training set (self-labelled ones included)
    marked as seen."""
    import importlib.util

    from pcl.marker import prepare_model
    from pcl.segment import SegmentFormat
    from pcl.tasks import TaskSpec, load_task, prompt_text
    from pcl.tiny import build_tiny_model

    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    prepare_model(model, tokenizer, SegmentFormat())
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    spec = importlib.util.spec_from_file_location("calibration_benchmark", ROOT / "benchmarks" / "calibration.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sizes = ["--stages.sft.task.size", "3000", "--stages.assess.task.size", "300",
             "--stages.assess.self_labelled.task.size", "300", "--output_dir", str(tmp_path / "run")]  # fmt: skip
    out = tmp_path / "cal.json"
    metrics = script.main([str(tmp_path / "model"), "--recipe", str(ROOT / "recipes" / "quickstart.yaml"), "--size",
                           "40", "--shifted_size", "10", "--n_boot", "20", "--out", str(out), "--", *sizes])  # fmt: skip
    printed = capsys.readouterr().out
    assert "paired verdicts, PCL self-score vs baseline" in printed and "shift: chain_sum" in printed
    assert json.loads(out.read_text())["n"] == metrics["n"]
    items = [json.loads(line) for line in (tmp_path / "cal" / "items.jsonl").read_text().splitlines()]
    assert len(items) == metrics["n"] + metrics["shifted"]["n"]
    cfg = {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2}
    trained = {prompt_text(p) for seed, size in ((1, 3000), (2000000, 300), (3000000, 300))
               for p in load_task(TaskSpec("chain_sum", size=size, seed=seed, config=cfg))["prompt"]}  # fmt: skip
    heldout = [r for r in items if r["split"] == "heldout"]
    assert [r["seen"] for r in heldout] == [prompt_text(r["prompt"]) in trained for r in heldout]
    assert metrics["n_seen_in_training"] > 0 and metrics["shifted"]["n_seen_in_training"] == 0
    assert {r["difficulty"]["num_terms"] for r in items if r["split"] == "shifted"} == {5}
    tokens = {f"{s}{v}" for s in ("mean_token_prob", "sequence_prob", "min_token_prob") for v in ("", "_no_stop")}
    # No stage ran in this recipe's output directory: no saved self-labelled rows, so no fitted baselines
    assert set(metrics["paired"]["full"]) - {"self_consistency"} == tokens
    assert metrics["fitted_baselines"]["skipped"].startswith("no fit rows given")
