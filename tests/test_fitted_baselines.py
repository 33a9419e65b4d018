# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Tests for pcl.fitted_baselines: fit rows I/O, labels, the validation split and the fit on synthetic answers."""

import json

import numpy as np
import pytest

from pcl.features import AnswerFeatures
from pcl.fitted_baselines import (
    C_GRID,
    FITTED_SOURCES,
    fit_baselines,
    fit_labels,
    load_fit_rows,
    too_few_labels,
    validation_split,
    write_fit_rows,
)


def test_fit_rows_round_trip_and_bad_rows(tmp_path):
    rows = [{"prompt": "1 + 1 =", "completion": " 2", "reward": 1.0, "difficulty": {"num_terms": 2}},
            {"prompt": "2 + 2 =", "completion": " 5", "reward": 0.0, "difficulty": {}}]  # fmt: skip
    write_fit_rows(rows, tmp_path / "a.jsonl")
    write_fit_rows(rows[:1], tmp_path / "b.jsonl")
    assert not list(tmp_path.glob("*.tmp"))
    assert load_fit_rows(tmp_path / "a.jsonl") == rows
    assert load_fit_rows([tmp_path / "a.jsonl", str(tmp_path / "b.jsonl")]) == rows + rows[:1]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1 lacks \['reward'\]"):
        load_fit_rows(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_fit_rows(tmp_path / "missing.jsonl")


def test_fit_labels():
    rows = [{"reward": r} for r in (1.0, 0.0, 1.0, 0.0, 1.0)]
    np.testing.assert_array_equal(fit_labels(rows, float), [1, 0, 1, 0, 1])
    # normalised like the benchmark's outcomes: rewards in [-1, 1] map to 0/1
    np.testing.assert_array_equal(fit_labels([{"reward": r} for r in (1, -1, 1, -1)], lambda r: (r + 1) / 2),
                                  [1, 0, 1, 0])  # fmt: skip
    with pytest.raises(ValueError, match="reward 0.5, not 0/1 correctness"):
        fit_labels([*rows, {"reward": 0.5}], float)
    assert too_few_labels(np.array([1.0, 1.0, 0.0, 0.0])) is None
    assert "1 wrong answers" in too_few_labels(fit_labels([{"reward": r} for r in (1.0, 1.0, 0.0)], float))
    with pytest.raises(ValueError, match="Cannot fit the baselines: the 3 fit rows have 1 wrong answers"):
        fit_baselines(AnswerFeatures(hidden=np.zeros((3, 2))), np.array([1.0, 1.0, 0.0]))


def test_validation_split_is_stratified_and_seeded():
    y = np.array([1.0] * 50 + [0.0] * 10)
    val = validation_split(y, 0.2, seed=3)
    assert val[:50].sum() == 10 and val[50:].sum() == 2
    np.testing.assert_array_equal(val, validation_split(y, 0.2, seed=3))
    assert not np.array_equal(val, validation_split(y, 0.2, seed=4))
    # at least one row of each class, never all of it
    small = validation_split(np.array([1.0, 1.0, 0.0, 0.0]), 0.1, seed=0)
    assert small[:2].sum() == 1 and small[2:].sum() == 1


def _synthetic(n, rng):
    """Answers whose correctness follows a known logistic model of the hidden state's first coordinate; token
    probabilities and prompt features carry part of the same signal."""
    h = rng.normal(size=(n, 8))
    y = (rng.random(n) < 1 / (1 + np.exp(-3 * h[:, 0]))).astype(float)
    p = 1 / (1 + np.exp(-(h[:, 0] + rng.normal(size=n))))
    feats = AnswerFeatures(token_logprobs=[np.log([0.9, x]) for x in p], hidden=h)
    return feats, y, [{"terms": int(x > 0), "name": "chain_sum"} for x in h[:, 0]]


def test_fit_baselines_on_synthetic_answers():
    rng = np.random.default_rng(0)
    feats, y, difficulty = _synthetic(600, rng)
    fitted = fit_baselines(feats, y, difficulty, seed=1)
    s = fitted.summary
    assert set(fitted.models) == set(FITTED_SOURCES) == set(s["validation_brier"])
    assert s["n_validation"] == 120 and s["n_fit"] == 480 and s["accuracy"] == pytest.approx(y.mean())
    assert s["chosen"]["hidden_probe"]["C"] in C_GRID and s["chosen"]["difficulty"]["features"] == ["terms"]
    assert s["best_on_validation"] == "hidden_probe"  # the probe sees the true cause of correctness
    # on fresh answers from the same model, the probe ranks like the true model and is calibrated
    test, y_test, d_test = _synthetic(2000, rng)
    q = fitted.predict(test, d_test)
    from pcl.calibration import auroc

    assert auroc(q["hidden_probe"], y_test) > 0.8 and abs(q["hidden_probe"].mean() - y_test.mean()) < 0.05
    assert auroc(q["difficulty"], y_test) > 0.7 and len(np.unique(q["difficulty"])) == 2  # one binary feature
    # items without the difficulty features: that baseline is left out, and the summary says why
    q = fitted.predict(test, [{}] * 2000)
    assert "difficulty" not in q and "lack the difficulty features" in fitted.summary["not_fitted"]["difficulty"]


def test_difficulty_baseline_skipped_without_numeric_features():
    feats, y, _ = _synthetic(100, np.random.default_rng(1))
    fitted = fit_baselines(feats, y, [{"name": "chain_sum"}] * 100)
    assert "difficulty" not in fitted.models and "no numeric difficulty" in fitted.summary["not_fitted"]["difficulty"]
    with pytest.raises(ValueError, match="features of 100 answers but 99 labels"):
        fit_baselines(feats, y[:-1])
