# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Tests for pcl.baselines: each source against a hand computation, each fitted baseline on synthetic data drawn from
a known model (the fit must recover it), and self-consistency by hand."""

import math

import numpy as np
import pytest

from pcl.baselines import (
    FITTED,
    SOURCES,
    DifficultyBaseline,
    HiddenStateProbe,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
    log_confidence,
    self_consistency,
    self_score,
    single_pass_sources,
)
from pcl.features import AnswerFeatures


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _one_token(p: np.ndarray) -> AnswerFeatures:
    """Features whose answers are a single scored token of probability `p` (so every token source equals `p`)."""
    return AnswerFeatures(token_logprobs=[np.array([math.log(x)]) for x in p])


# ---- single-pass sources -------------------------------------------------------------------------------------------


def test_token_sources_by_hand():
    lp = [np.log([0.5, 0.8, 0.9]), np.log([0.6]), np.array([])]  # answer tokens, then the stop token (last)
    f = AnswerFeatures(token_logprobs=lp)
    s = single_pass_sources(f)
    assert set(s) == set(SOURCES) - {"pcl_expected"}
    np.testing.assert_allclose(s["sequence_prob"], [0.36, 0.6, 1.0])
    np.testing.assert_allclose(s["sequence_prob_no_stop"], [0.4, 1.0, 1.0])  # no token left: the empty product
    np.testing.assert_allclose(s["mean_token_prob"], [0.36 ** (1 / 3), 0.6, 1.0])
    np.testing.assert_allclose(s["mean_token_prob_no_stop"], [0.4**0.5, 1.0, 1.0])
    np.testing.assert_allclose(s["min_token_prob"], [0.5, 0.6, 1.0])
    np.testing.assert_allclose(s["min_token_prob_no_stop"], [0.5, 1.0, 1.0])
    np.testing.assert_allclose(log_confidence(f, "sequence_prob"), np.log([0.36, 0.6, 1.0]))


def test_self_score_by_hand():
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0]])
    f = AnswerFeatures(level_probs=probs)
    expected = [0.2 / 3 + 0.3 * 2 / 3 + 0.4, 0.0]
    np.testing.assert_allclose(self_score(f), expected)
    np.testing.assert_allclose(single_pass_sources(f)["pcl_expected"], expected)
    assert list(single_pass_sources(f)) == ["pcl_expected"]
    with pytest.raises(ValueError, match="log-probs"):
        SOURCES["sequence_prob"](f)
    with pytest.raises(ValueError, match="level distribution"):
        self_score(AnswerFeatures(token_logprobs=[np.zeros(1)]))


# ---- fitted baselines on data from a known model ------------------------------------------------------------------


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 20000)  # the source's logit
    for true_t in (0.5, 2.5):
        labels = rng.random(z.size) < _sigmoid(z / true_t)
        fitted = TemperatureScaling("sequence_prob").fit(_one_token(_sigmoid(z)), labels)
        assert fitted.temperature == pytest.approx(true_t, rel=0.06)
        test = _one_token(_sigmoid(np.array([-2.0, 0.0, 3.0])))
        np.testing.assert_allclose(fitted.predict(test), _sigmoid(np.array([-2.0, 0.0, 3.0]) / fitted.temperature))


def test_platt_recovers_known_coefficients():
    rng = np.random.default_rng(1)
    log_p = -rng.exponential(2.0, 20000)  # a sequence log-prob
    a, b = 1.5, 2.0
    labels = rng.random(log_p.size) < _sigmoid(a * log_p + b)
    fitted = PlattScaling("sequence_prob").fit(_one_token(np.exp(log_p)), labels)
    fa, fb = fitted.coef
    assert fa == pytest.approx(a, abs=0.1) and fb == pytest.approx(b, abs=0.1)
    grid = np.array([-6.0, -2.0, -0.1])
    np.testing.assert_allclose(fitted.predict(_one_token(np.exp(grid))), _sigmoid(fa * grid + fb), rtol=1e-6)


def test_isotonic_is_monotone_and_calibrated():
    rng = np.random.default_rng(2)
    p = rng.random(5000)
    # Outcomes follow a known non-linear, increasing map of the source: q = p^3
    labels = rng.random(p.size) < p**3
    fitted = IsotonicCalibration("min_token_prob").fit(_one_token(p), labels)
    grid = np.linspace(0.01, 0.99, 99)
    q = fitted.predict(_one_token(grid))
    assert np.all(np.diff(q) >= 0) and q.min() >= 0 and q.max() <= 1
    assert np.abs(q - grid**3).mean() < 0.04
    # Outside the fitted range the map is clipped, not extrapolated
    assert fitted.predict(_one_token(np.array([1e-9])))[0] == pytest.approx(q[0], abs=0.05)


def test_hidden_state_probe_recovers_a_linear_rule():
    rng = np.random.default_rng(3)
    w, b = rng.normal(0, 1, 8), -0.5
    hidden = rng.normal(0, 1, (6000, 8)).astype(np.float32)
    true_q = _sigmoid(hidden @ w + b)
    labels = rng.random(len(hidden)) < true_q
    train, test = AnswerFeatures(hidden=hidden[:5000]), AnswerFeatures(hidden=hidden[5000:])
    fitted = HiddenStateProbe().fit(train, labels[:5000])
    assert np.abs(fitted.predict(test) - true_q[5000:]).mean() < 0.03
    with pytest.raises(ValueError, match="hidden states"):
        fitted.predict(_one_token(np.array([0.5])))


def test_difficulty_baseline_on_prompt_features():
    rng = np.random.default_rng(4)
    terms, digits = rng.integers(2, 5, 4000), rng.integers(1, 3, 4000)
    true_q = _sigmoid(4.0 - 1.2 * terms - 0.8 * digits)
    labels = rng.random(terms.size) < true_q
    rows = [{"terms": int(t), "digits": int(d)} for t, d in zip(terms, digits, strict=True)]
    fitted = DifficultyBaseline().fit(rows[:3000], labels[:3000])
    assert fitted.names == ["digits", "terms"]
    assert np.abs(fitted.predict(rows[3000:]) - true_q[3000:]).mean() < 0.03
    # An array of the same features (columns in the sorted order) gives the same predictions
    array_fit = DifficultyBaseline().fit(np.stack([digits, terms], 1)[:3000], labels[:3000])
    np.testing.assert_allclose(array_fit.predict(np.stack([digits, terms], 1)[3000:]), fitted.predict(rows[3000:]))
    with pytest.raises(ValueError, match="lack the prompt features"):
        fitted.predict([{"terms": 2}])


@pytest.mark.parametrize("name", ["temperature", "platt", "isotonic", "hidden_probe"])
def test_fitted_baselines_refuse_bad_labels(name):
    f = AnswerFeatures(token_logprobs=[np.log([0.3]), np.log([0.6])], hidden=np.zeros((2, 3), dtype=np.float32))
    baseline = FITTED[name]()
    with pytest.raises(RuntimeError, match="fit"):
        baseline.predict(f)
    with pytest.raises(ValueError, match="both correct and wrong"):
        baseline.fit(f, [1, 1])
    with pytest.raises(ValueError, match="one 0/1 label"):
        baseline.fit(f, [1, 0, 1])
    with pytest.raises(ValueError, match="0/1"):
        baseline.fit(f, [0.5, 1])


def test_unknown_source():
    with pytest.raises(ValueError, match="Unknown confidence source"):
        PlattScaling("entropy").fit(_one_token(np.array([0.3, 0.6])), [0, 1])


# ---- self-consistency ------------------------------------------------------------------------------------------


def test_self_consistency_by_hand():
    samples = [["4", "4", "5", "4"], ["1", "2", "3", "1"], ["7"] * 4]
    np.testing.assert_allclose(self_consistency(samples), [0.75, 0.5, 1.0])
    np.testing.assert_allclose(self_consistency(samples, answers=["5", "1", "8"]), [0.25, 0.5, 0.0])
    with pytest.raises(ValueError, match="one per item"):
        self_consistency(samples, answers=["4"])
    with pytest.raises(ValueError, match="no samples"):
        self_consistency([[]])
