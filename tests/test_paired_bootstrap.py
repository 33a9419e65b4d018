# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Tests for pcl.paired_bootstrap: hand-computed differences and verdicts, skipped undefined resamples, and the
weighted fast path against the metrics computed on each resample."""

import numpy as np
import pytest
from conftest import random_binary

from pcl.calibration import auroc, brier_score, expected_calibration_error
from pcl.paired_bootstrap import paired_bootstrap


def test_paired_bootstrap_hand_computed():
    q_s, q_b, c = [0.9, 0.2, 0.8], [0.6, 0.6, 0.6], [1, 0, 1]
    # resample 1 = the data; resample 2 = items 0, 0, 1 (c = 1, 1, 0)
    #   AUROC: source ranks perfectly (1), constant baseline .5 -> diff .5 in both resamples
    #   Brier: data (.01 + .04 + .04)/3 - (.16 + .36 + .16)/3 = -.196667 ; resample 2 (.01 + .01 + .04)/3 - .68/3
    #   ECE-10: data (.1 + .2 + .2)/3 - |2/3 - .6| = .1 ; resample 2 (|2 - 1.8| + .2)/3 - |2 - 1.8|/3 = .066667
    out = paired_bootstrap(q_s, q_b, c, indices=[[0, 1, 2], [0, 0, 1]])
    assert out["auroc"]["source"] == 1.0 and out["auroc"]["baseline"] == 0.5 and out["auroc"]["diff"] == 0.5
    assert out["auroc"]["ci"] == pytest.approx([0.5, 0.5]) and out["auroc"]["verdict"] == "win"
    b1, b2 = 0.09 / 3 - 0.68 / 3, 0.06 / 3 - 0.68 / 3
    assert out["brier"]["diff"] == pytest.approx(b1)
    # percentiles of two values (linear interpolation): lo + .025 (hi - lo) and lo + .975 (hi - lo)
    assert out["brier"]["ci"] == pytest.approx([b2 + 0.025 * (b1 - b2), b2 + 0.975 * (b1 - b2)])
    assert out["brier"]["verdict"] == "win"  # lower is better: the whole interval below zero
    e1, e2 = 0.5 / 3 - 0.2 / 3, 0.4 / 3 - 0.2 / 3
    assert out["ece_10"]["diff"] == pytest.approx(e1)
    assert out["ece_10"]["ci"] == pytest.approx([e2 + 0.025 * (e1 - e2), e2 + 0.975 * (e1 - e2)])
    assert out["ece_10"]["verdict"] == "loss"  # a higher ECE throughout
    assert all(v["n_resamples"] == 2 for v in out.values())
    assert out["auroc"]["higher_is_better"] and not out["brier"]["higher_is_better"]


def test_paired_bootstrap_tie_skips_and_default_resamples():
    q, c = random_binary(60, seed=4)
    same = paired_bootstrap(q, q, c, n_boot=30)
    assert all(v["verdict"] == "tie" and v["ci"] == [0.0, 0.0] for v in same.values())
    # a resample of one class leaves AUROC undefined and is skipped for AUROC only
    out = paired_bootstrap([0.9, 0.1], [0.5, 0.5], [1, 0], indices=[[0, 1], [0, 0], [1, 0]])
    assert out["auroc"]["n_resamples"] == 2 and out["brier"]["n_resamples"] == 3
    # without indices: resamples are drawn from default_rng(seed) as documented
    q_b = np.clip(q + 0.1, 0, 1)
    rng = np.random.default_rng(9)
    explicit = [rng.integers(0, 60, size=60) for _ in range(25)]
    assert paired_bootstrap(q, q_b, c, n_boot=25, seed=9) == paired_bootstrap(q, q_b, c, indices=explicit)
    with pytest.raises(ValueError, match="indices"):
        paired_bootstrap(q, q_b, c, indices=[[0, 1]])


def test_paired_bootstrap_resample_weights_equal_direct_metrics():
    # the fast path counts each item w_i times; it must equal the metrics computed on the resampled arrays
    q, c = random_binary(80, seed=11)
    q_b = np.round(np.clip(q + np.random.default_rng(1).normal(0, 0.2, 80), 0, 1), 1)
    c[::7] = 0.5  # graded outcomes too: not "correct" for AUROC, half a success for Brier and ECE
    rng = np.random.default_rng(2)
    indices = [rng.integers(0, 80, size=80) for _ in range(15)]
    out = paired_bootstrap(q, q_b, c, indices=indices)
    direct = {
        name: [fn(q[i], c[i]) - fn(q_b[i], c[i]) for i in indices]
        for name, fn in (("auroc", auroc), ("brier", brier_score), ("ece_10", expected_calibration_error))
    }
    for name, values in direct.items():
        assert out[name]["ci"] == pytest.approx(list(np.percentile(values, [2.5, 97.5])), abs=1e-12)


def test_still_importable_from_pcl_calibration():
    """`paired_bootstrap` and `PAIRED_METRICS` were public names of `pcl.calibration` before they got their module."""
    import pcl.paired_bootstrap
    from pcl.calibration import PAIRED_METRICS
    from pcl.calibration import paired_bootstrap as moved

    assert moved is paired_bootstrap and PAIRED_METRICS is pcl.paired_bootstrap.PAIRED_METRICS
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        pcl.calibration.nothing  # noqa: B018
