# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""benchmarks/drop_in_control.py in its `--quick` setting reports what its docstring promises."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # three 20-step GRPO runs after a 150-step SFT: ~20 s on one core
def test_quick_drop_in_control(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("drop_in_control", ROOT / "benchmarks" / "drop_in_control.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = {}
    run = script.run

    def recorded(kind, *args):
        results[kind] = run(kind, *args)
        return results[kind]

    monkeypatch.setattr(script, "run", recorded)
    monkeypatch.setattr(sys, "argv", ["drop_in_control.py", "--quick"])
    script.main()
    printed = capsys.readouterr().out.splitlines()
    printed = printed[next(i for i, line in enumerate(printed) if line.startswith("metric")) :]  # the table
    assert printed[0].split() == ["metric", "plain", "pcl_w0", "pcl"]
    common = {"reward_first", "reward_last", "terminated_length_last", "greedy_accuracy"}
    pcl_only = {"frac_with_segment_last", "segment_nll_first", "segment_nll_last", "frac_self_scored",
                "frac_stop_marker", "p_marker_at_stop", "p_eos_at_stop"}  # fmt: skip
    assert set(results) == {"plain", "pcl_w0", "pcl"} and set(results["plain"]) == common
    assert set(results["pcl_w0"]) == set(results["pcl"]) == common | pcl_only
    assert {line.split()[0] for line in printed[1:]} == common | pcl_only  # one printed row per metric
    for kind, result in results.items():
        assert all(math.isfinite(v) for k, v in result.items() if k != "terminated_length_last"), kind
        assert 0.0 <= result["greedy_accuracy"] <= 1.0
    # The segment term trains the self-score: its NLL falls with weight 1
    assert results["pcl"]["segment_nll_last"] < results["pcl"]["segment_nll_first"]
