# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The calibration benchmark script runs end to end and reports what it promises (overhead: tests/test_overhead.py)."""

import json
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


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
    sizes = ["--stages.sft.task.size", "3000", "--stages.grpo.task.size", "300", "--calibrate.fit_task.size", "300",
             "--stages.polish.task.size", "300", "--stages.assess.task.size", "300",
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
    # training sets (the self-labelled questions too), and the fit questions (labelled data, so seen too)
    sets = ((1, 3000), (2000000, 300), (7000000, 300), (9000000, 300), (8000000, 300), (3000000, 300))
    trained = {prompt_text(p) for seed, size in sets
               for p in load_task(TaskSpec("chain_sum", size=size, seed=seed, config=cfg))["prompt"]}  # fmt: skip
    heldout = [r for r in items if r["split"] == "heldout"]
    assert [r["seen"] for r in heldout] == [prompt_text(r["prompt"]) in trained for r in heldout]
    assert metrics["n_seen_in_training"] > 0 and metrics["shifted"]["n_seen_in_training"] == 0
    assert {r["difficulty"]["num_terms"] for r in items if r["split"] == "shifted"} == {5}
    tokens = {f"{s}{v}" for s in ("mean_token_prob", "sequence_prob", "min_token_prob") for v in ("", "_no_stop")}
    # The evaluated model answered the recipe's fit questions itself; an untrained model gets (almost) none right, so
    # the fitted baselines are skipped with the reason
    assert len((tmp_path / "cal" / "fit_rows.jsonl").read_text().splitlines()) == 300
    assert set(metrics["paired"]["full"]) - {"self_consistency"} == tokens
    assert "skipped" in metrics["fitted_baselines"]
