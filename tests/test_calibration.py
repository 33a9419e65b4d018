# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Tests for pcl.calibration (hand-computed metrics, edge bins, sklearn cross-checks) and pcl.plots (PNG output)."""

import json
import math

import numpy as np
import pytest
from conftest import random_binary

from pcl.calibration import (
    aurc,
    auroc,
    bin_indices,
    bootstrap_ci,
    brier_score,
    calibration_report,
    collapse_check,
    expected_calibration_error,
    reliability_bins,
    risk_coverage_curve,
)


# ---------------------------------------------------------------- bin_indices


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.7, 7), (0.3, 3), (0.6, 6), (0.1 * 3, 3), (1.0, 9), (0.0, 0), (0.05, 0), (0.999, 9), (0.6999, 6)],
)
def test_bin_indices_edges(value, expected):
    # 0.7 sits on an edge: np.linspace(0, 1, 11)[7] == 0.7000000000000001 would put it in bin 6 with np.digitize.
    assert bin_indices([value], 10).tolist() == [expected]


def test_bin_indices_all_tenths():
    assert bin_indices([k / 10 for k in range(11)], 10).tolist() == list(range(10)) + [9]


def test_bin_indices_ninths_grid():
    # k/9 in float: e.g. 3/9 * 9 may be 2.9999999999999996; each value must open its own bin, 1.0 goes in the last.
    assert bin_indices([k / 9 for k in range(10)], 9).tolist() == list(range(9)) + [8]
    assert bin_indices([1 / 3], 3).tolist() == [1]
    assert bin_indices([2 / 3], 3).tolist() == [2]


def test_bin_indices_single_bin():
    assert bin_indices([0.0, 0.5, 1.0], 1).tolist() == [0, 0, 0]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bin_indices_bad_n_bins(bad):
    with pytest.raises(ValueError, match="n_bins"):
        bin_indices([0.5], bad)


# ---------------------------------------------------------------- ECE


def test_ece_hand_two_bins():
    # bins [0, .5) and [.5, 1]:
    #   bin 0: q = .1, .4 -> conf .25, acc (0+1)/2 = .5  -> |.5 - .25| = .25, weight 2/4 -> .125
    #   bin 1: q = .6, .9 -> conf .75, acc 1           -> |1 - .75| = .25, weight 2/4 -> .125
    # ECE = .25
    assert expected_calibration_error([0.1, 0.4, 0.6, 0.9], [0, 1, 1, 1], n_bins=2) == pytest.approx(0.25)


def test_ece_hand_ten_bins():
    # every item alone in its bin: |0-.1| + |1-.4| + |1-.6| + |1-.9| = .1 + .6 + .4 + .1 = 1.2, / 4 = .3
    assert expected_calibration_error([0.1, 0.4, 0.6, 0.9], [0, 1, 1, 1], n_bins=10) == pytest.approx(0.3)


def test_ece_edge_value_goes_to_upper_bin():
    # q = .7 must be in bin [.7, .8) with the .75 item: conf .725, acc .5 -> ECE .225.
    # If .7 wrongly fell in [.6, .7) the ECE would be (|0-.7| + |1-.75|)/2 = .475.
    assert expected_calibration_error([0.7, 0.75], [0, 1], n_bins=10) == pytest.approx(0.225)


def test_ece_zero_for_perfectly_calibrated_groups():
    # four items at .25 with one correct, four at .75 with three correct: every bin's accuracy equals its confidence.
    q = [0.25] * 4 + [0.75] * 4
    c = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert expected_calibration_error(q, c, n_bins=10) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(q, c, n_bins=15) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(q, c, n_bins=2, strategy="quantile") == pytest.approx(0.0, abs=1e-12)


def test_ece_graded_reward():
    # a graded outcome equal to q is perfectly calibrated.
    q = [0.2, 0.5, 0.9]
    assert expected_calibration_error(q, q) == pytest.approx(0.0, abs=1e-12)


def test_ece_quantile_hand():
    # sorted q = .1 .2 | .3 .4 (two equal-mass bins):
    #   {.1, .2}: conf .15, acc 0 -> .15 ; {.3, .4}: conf .35, acc 1 -> .65 ; ECE = (.15 + .65) / 2 = .4
    # while uniform 2 bins puts everything in [0, .5): conf .25, acc .5 -> .25
    q, c = [0.3, 0.1, 0.4, 0.2], [1, 0, 1, 0]
    assert expected_calibration_error(q, c, n_bins=2, strategy="quantile") == pytest.approx(0.4)
    assert expected_calibration_error(q, c, n_bins=2, strategy="uniform") == pytest.approx(0.25)


def test_ece_quantile_uneven_split():
    # 5 items, 2 bins -> np.array_split sizes 3 and 2:
    #   {.1, .2, .3}: conf .2, acc 0 -> .2 * 3/5 = .12 ; {.4, .5}: conf .45, acc 1 -> .55 * 2/5 = .22 ; ECE = .34
    q, c = [0.1, 0.2, 0.3, 0.4, 0.5], [0, 0, 0, 1, 1]
    assert expected_calibration_error(q, c, n_bins=2, strategy="quantile") == pytest.approx(0.34)


def test_ece_quantile_more_bins_than_items():
    # 2 items, 10 bins: each item alone -> (|0-.2| + |1-.6|) / 2 = .3
    assert expected_calibration_error([0.6, 0.2], [1, 0], n_bins=10, strategy="quantile") == pytest.approx(0.3)


def test_ece_quantile_ties_share_their_mean_outcome():
    q = [0.5] * 6
    c = [1, 0, 1, 1, 0, 0]
    # a boundary through six tied items: each carries the tie's mean outcome .5 = its confidence -> ECE 0, whatever
    # the input order (a stable sort would give groups {1,0,1} and {1,0,0} -> 1/6, and 1/2 for c = [1,1,1,0,0,0]).
    assert expected_calibration_error(q, c, n_bins=2, strategy="quantile") == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(q, sorted(c), n_bins=2, strategy="quantile") == pytest.approx(0.0, abs=1e-12)
    # ties mixed with distinct scores: sorted q = .2 | .6 .6 .6 | .9 in 2 bins of 3 and 2: the tie's mean outcome 1/3
    #   {.2, .6, .6}: conf 1.4/3, acc (0 + 2/3)/3 -> |2/3 - 1.4| / 5 ; {.6, .9}: conf 1.5, acc 1/3 + 1 -> |4/3 - 1.5| / 5
    q, c = [0.6, 0.2, 0.6, 0.9, 0.6], [1, 0, 0, 1, 0]
    expected = (abs(2 / 3 - 1.4) + abs(4 / 3 - 1.5)) / 5
    assert expected_calibration_error(q, c, n_bins=2, strategy="quantile") == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_order_dependent_metrics_invariant_under_permutation_of_ties(seed):
    rng = np.random.default_rng(seed)
    q = rng.choice([0.1, 0.5, 0.5, 0.9], size=40)  # heavy ties
    c = (rng.uniform(size=40) < q).astype(float)
    perm = rng.permutation(40)
    for fn in (aurc, lambda a, b: expected_calibration_error(a, b, n_bins=3, strategy="quantile")):
        assert fn(q[perm], c[perm]) == pytest.approx(fn(q, c), abs=1e-12)
    np.testing.assert_allclose(risk_coverage_curve(q[perm], c[perm])[1], risk_coverage_curve(q, c)[1])


def test_ece_unknown_strategy():
    with pytest.raises(ValueError, match="strategy"):
        expected_calibration_error([0.5], [1], strategy="adaptive")


# ---------------------------------------------------------------- Brier


def test_brier_hand():
    # ((.9-1)^2 + (.2-0)^2) / 2 = (.01 + .04) / 2 = .025
    assert brier_score([0.9, 0.2], [1, 0]) == pytest.approx(0.025)
    # graded: ((.5-.5)^2 + (1-.0)^2) / 2 = .5
    assert brier_score([0.5, 1.0], [0.5, 0.0]) == pytest.approx(0.5)


def test_brier_matches_sklearn():
    from sklearn import metrics  # a dev dependency: CI must fail, not skip, when it is missing

    q, c = random_binary(500, seed=1)
    assert brier_score(q, c) == pytest.approx(metrics.brier_score_loss(c, q))


# ---------------------------------------------------------------- AUROC


def test_auroc_hand():
    # positives q = .9, .7 ; negatives q = .8, .6 ; pairs: .9>.8, .9>.6, .7<.8, .7>.6 -> 3/4
    assert auroc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(0.75)


def test_auroc_ties_count_half():
    # positive .5 vs negatives .5 (tie: 1/2) and .9 (0) -> .25
    assert auroc([0.5, 0.5, 0.9], [1, 0, 0]) == pytest.approx(0.25)


def test_auroc_constant_q_is_half():
    assert auroc([0.3] * 6, [1, 0, 1, 0, 0, 1]) == pytest.approx(0.5)


def test_auroc_perfect_and_inverted():
    assert auroc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == pytest.approx(0.0)


def test_auroc_single_class_is_none():
    assert auroc([0.1, 0.5, 0.9], [1, 1, 1]) is None
    assert auroc([0.1, 0.5, 0.9], [0, 0, 0]) is None
    # graded outcomes that never reach full reward: no "correct" item
    assert auroc([0.1, 0.5, 0.9], [0.2, 0.5, 0.9]) is None


def test_auroc_graded_threshold():
    # correct means c >= 1 - 1e-9: 0.9999999999 counts as correct, 0.99 does not.
    q = [0.9, 0.8, 0.7]
    assert auroc(q, [1 - 1e-10, 0.99, 0.0]) == pytest.approx(1.0)
    assert auroc(q, [0.99, 1.0, 0.0]) == pytest.approx(0.5)


def test_auroc_matches_sklearn():
    from sklearn import metrics

    for seed in range(3):
        q, c = random_binary(400, seed=seed)
        assert auroc(q, c) == pytest.approx(metrics.roc_auc_score(c, q))


# ---------------------------------------------------------------- AURC / risk-coverage


def test_aurc_hand():
    # sorted by q desc: c = 1, 0, 1, 0 -> risks 0/1, 1/2, 1/3, 2/4 -> mean (0 + .5 + .3333 + .5) / 4 = .3333
    q, c = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    assert aurc(q, c) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    coverage, risk = risk_coverage_curve(q, c)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 0.5, 1 / 3, 0.5])


def test_aurc_order_independent_of_input_order():
    q, c = [0.6, 0.9, 0.7, 0.8], [0, 1, 1, 0]
    assert aurc(q, c) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)


def test_aurc_averages_over_tied_scores():
    # q = .9 (c 1), then a tie of .5 with c = 1, 0, 0: the tie's mean wrongness 2/3 per item
    #   risks: 0/1, (2/3)/2, (4/3)/3, (6/3)/4 ; any fixed order of the tie would give a different curve
    q, c = [0.5, 0.9, 0.5, 0.5], [0, 1, 1, 0]
    expected = [0, 1 / 3, 4 / 9, 0.5]
    np.testing.assert_allclose(risk_coverage_curve(q, c)[1], expected)
    assert aurc(q, c) == pytest.approx(sum(expected) / 4)


def test_aurc_graded_and_extremes():
    # graded: risk uses 1 - c: sorted c = .5, 1 -> risks .5, .25 -> .375
    assert aurc([0.9, 0.1], [0.5, 1.0]) == pytest.approx(0.375)
    assert aurc([0.9, 0.1], [1, 1]) == pytest.approx(0.0)
    assert aurc([0.9, 0.1], [0, 0]) == pytest.approx(1.0)


# ---------------------------------------------------------------- reliability_bins


def test_reliability_bins():
    bins = reliability_bins([0.1, 0.15, 0.7, 1.0], [0, 1, 1, 0], n_bins=5)
    assert len(bins) == 5
    assert [b["count"] for b in bins] == [2, 0, 0, 1, 1]
    assert bins[0]["lo"] == 0.0 and bins[0]["hi"] == pytest.approx(0.2)
    assert bins[0]["mean_confidence"] == pytest.approx(0.125)
    assert bins[0]["accuracy"] == pytest.approx(0.5)
    assert bins[1]["mean_confidence"] is None and bins[1]["accuracy"] is None
    assert bins[3]["mean_confidence"] == pytest.approx(0.7) and bins[3]["accuracy"] == 1.0
    assert bins[4]["mean_confidence"] == 1.0 and bins[4]["accuracy"] == 0.0
    json.dumps(bins)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_resamples_as_documented():
    # the interval is the percentile of the metric over resamples rng.integers(0, N, size=N), drawn in turn
    q, c = random_binary(50, seed=7)
    rng = np.random.default_rng(3)
    values = []
    for _ in range(40):
        idx = rng.integers(0, 50, size=50)
        values.append(np.mean((q[idx] - c[idx]) ** 2))
    assert bootstrap_ci(brier_score, q, c, n_boot=40, seed=3) == pytest.approx(
        tuple(np.percentile(values, [2.5, 97.5]))
    )
    assert bootstrap_ci(auroc, q, c, n_boot=100, seed=5) != bootstrap_ci(auroc, q, c, n_boot=100, seed=6)


def test_bootstrap_ci_width_of_a_mean():
    # Brier is a mean of per-item losses: its 95% interval is about +-1.96 standard errors wide
    q, c = random_binary(400, seed=7)
    losses = (q - c) ** 2
    half_width = 1.96 * losses.std() / np.sqrt(losses.size)
    lo, hi = bootstrap_ci(brier_score, q, c, n_boot=2000, seed=0)
    assert (hi - lo) / 2 == pytest.approx(half_width, rel=0.15)
    assert (lo + hi) / 2 == pytest.approx(losses.mean(), abs=0.25 * half_width)


def test_bootstrap_ci_skips_none():
    # with 2 items many resamples are one-class (auroc None) and must be skipped, not crash.
    lo, hi = bootstrap_ci(auroc, [0.9, 0.1], [1, 0], n_boot=50, seed=0)
    assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
    lo, hi = bootstrap_ci(auroc, [0.9, 0.1], [1, 1], n_boot=20, seed=0)
    assert math.isnan(lo) and math.isnan(hi)


def test_bootstrap_ci_bad_args():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(brier_score, [0.5], [1], n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(brier_score, [0.5], [1], alpha=1.5)


# ---------------------------------------------------------------- collapse


def test_collapse_check():
    out = collapse_check([0.7] * 10)
    assert out == {"std": 0.0, "n_distinct": 1, "collapsed": True}
    out = collapse_check(np.linspace(0, 1, 11))
    assert out["n_distinct"] == 11 and out["collapsed"] is False and out["std"] > 0.3
    # many distinct values but a tiny spread still counts as collapsed
    out = collapse_check(0.5 + 1e-3 * np.random.default_rng(0).standard_normal(100))
    assert out["n_distinct"] > 1 and out["collapsed"] is True
    # values equal to 6 decimals are one distinct value
    assert collapse_check([0.5, 0.5 + 1e-8])["n_distinct"] == 1


# ---------------------------------------------------------------- report


def test_calibration_report():
    q, c = [0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]
    report = calibration_report(q, c, n_boot=50, seed=0)
    expected = {
        "n",
        "ece_10",
        "ece_15",
        "ece_10_quantile",
        "brier",
        "auroc",
        "aurc",
        "ece_10_ci",
        "brier_ci",
        "auroc_ci",
        "aurc_ci",
        "collapse",
        "mean_confidence",
        "accuracy",
    }
    assert set(report) == expected
    # by hand: pairs .9>.8, .9>.6, .7<.8, .7>.6 -> AUROC 3/4; Brier (.01 + .64 + .09 + .36) / 4;
    # ECE-10: each item alone in its bin -> (.1 + .8 + .3 + .6) / 4; AURC: risks 0, 1/2, 1/3, 1/2
    assert report["n"] == 4
    assert report["auroc"] == pytest.approx(0.75)
    assert report["brier"] == pytest.approx(1.1 / 4)
    assert report["ece_10"] == pytest.approx(1.8 / 4)
    assert report["aurc"] == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    assert report["accuracy"] == 0.5 and report["mean_confidence"] == pytest.approx(0.75)
    for name in ("ece_10", "brier", "auroc", "aurc"):
        lo, hi = report[f"{name}_ci"]
        assert isinstance(lo, float) and 0.0 <= lo <= hi <= 1.0
    json.loads(json.dumps(report, allow_nan=False))


def test_calibration_report_single_class_json_safe():
    report = calibration_report([0.2, 0.4, 0.9], [1, 1, 1], n_boot=10)
    assert report["auroc"] is None and report["auroc_ci"] == [None, None]
    json.dumps(report, allow_nan=False)
    assert calibration_report([0.2, 0.9], [0, 1], n_boot=0)["brier_ci"] == [None, None]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("q", "c", "match"),
    [
        ([0.1, 0.2], [1], "same length"),
        ([], [], "empty"),
        ([0.1, float("nan")], [1, 0], "non-finite"),
        ([0.1, 0.2], [1, float("inf")], "non-finite"),
        ([0.1, 1.2], [1, 0], r"\[0, 1\]"),
        ([-0.1, 0.2], [1, 0], r"\[0, 1\]"),
        ([0.1, 0.2], [1, 2], r"c .*\[0, 1\]"),
        ([[0.1, 0.2]], [[1, 0]], "1-D"),
        (["a", "b"], [1, 0], "numeric"),
    ],
)
def test_validation_errors(q, c, match):
    for fn in (expected_calibration_error, brier_score, auroc, aurc, reliability_bins, risk_coverage_curve):
        with pytest.raises(ValueError, match=match):
            fn(q, c)


def test_validation_q_only():
    with pytest.raises(ValueError, match="q"):
        collapse_check([0.5, 1.5])
    with pytest.raises(ValueError, match="empty"):
        bin_indices([], 10)


# ---------------------------------------------------------------- plots


def _assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png(tmp_path):
    from pcl import plots

    q, c = random_binary(300, seed=0)
    # a sharply over-confident second source, with empty low bins
    q2 = np.clip(0.6 + 0.4 * q, 0, 1)

    plots.reliability_diagram(q, c, tmp_path / "rel.png", title="PCL head")
    plots.reliability_diagram(q2, c, tmp_path / "sub" / "rel_log.png", n_bins=15, log_counts=True)
    plots.reliability_grid({"PCL head": (q, c), "verbalised": (q2, c)}, tmp_path / "grid.png")
    plots.risk_coverage_plot({"PCL head": (q, c), "verbalised": (q2, c)}, tmp_path / "rc.png", title="GSM8K")
    for name in ("rel.png", "sub/rel_log.png", "grid.png", "rc.png"):
        _assert_png(tmp_path / name)

    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # every figure closed after saving

    with pytest.raises(ValueError, match="empty"):
        plots.reliability_grid({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        plots.risk_coverage_plot({}, tmp_path / "x.png")


def test_calibration_report_intervals_equal_bootstrap_ci():
    q, c = random_binary(120, seed=5)
    report = calibration_report(q, c, n_boot=40, seed=3)
    ece_10 = lambda a, b: expected_calibration_error(a, b, n_bins=10)  # noqa: E731
    for name, fn in (("ece_10", ece_10), ("brier", brier_score), ("auroc", auroc), ("aurc", aurc)):
        assert report[f"{name}_ci"] == pytest.approx(list(bootstrap_ci(fn, q, c, n_boot=40, seed=3)), abs=1e-12)
