# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Comparing two confidence sources on the same items: a paired bootstrap of the difference of their calibration
metrics (AUROC, Brier, ECE-10; see :mod:`pcl.calibration`), its percentile interval and a win / tie / loss verdict.

One shared resample index serves both sources, so the interval reflects their difference, not their separate noise.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .calibration import ResampledMetrics, auroc, brier_score, expected_calibration_error, validate


__all__ = ["PAIRED_METRICS", "paired_bootstrap"]

# The metrics a paired comparison reports, each with whether higher is better
PAIRED_METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float | None], bool]] = {
    "auroc": (auroc, True),
    "brier": (brier_score, False),
    "ece_10": (partial(expected_calibration_error, n_bins=10), False),
}


def paired_bootstrap(
    q_source: ArrayLike,
    q_baseline: ArrayLike,
    c: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    indices: ArrayLike | None = None,
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of ``metric(q_source) - metric(q_baseline)`` over items, for AUROC, Brier and ECE-10.

    Both sources are scored on the same items, so each resample applies one shared index to both: the interval then
    reflects the difference, not the two sources' separate noise. Resample ``b`` is
    ``np.random.default_rng(seed).integers(0, N, size=N)`` drawn in turn (the same sequence as
    :func:`pcl.calibration.bootstrap_ci`), or row ``b`` of ``indices`` (shape ``(n_boot, N)``) when given. Resamples
    where a metric is undefined for either source (AUROC on one class) are skipped for that metric.

    Returns ``{metric: {"source", "baseline", "diff", "ci": [lo, hi], "n_resamples", "higher_is_better", "verdict"}}``.
    The verdict is ``"win"`` when the ``(1 - alpha)`` percentile interval of the difference excludes zero in the
    source's favour (above zero for AUROC, below zero for Brier and ECE, where lower is better), ``"loss"`` when it
    excludes zero the other way, ``"tie"`` otherwise, and ``"n/a"`` when the metric is undefined.
    """
    q_source, c = validate(q_source, c)
    q_baseline, _ = validate(q_baseline, c)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    n = c.size
    if indices is None:
        if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
            raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
        rng = np.random.default_rng(seed)
        resamples = (rng.integers(0, n, size=n) for _ in range(int(n_boot)))
    else:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 2 or indices.shape[1] != n or indices.min() < 0 or indices.max() >= n:
            raise ValueError(f"indices must have shape (n_boot, {n}) with values in [0, {n}), got {indices.shape}")
        resamples = iter(indices)
    source, baseline = ResampledMetrics(q_source, c), ResampledMetrics(q_baseline, c)
    diffs: dict[str, list[float]] = {name: [] for name in PAIRED_METRICS}
    for idx in resamples:
        w = np.bincount(idx, minlength=n).astype(np.float64)
        a, b = source(w), baseline(w)
        for name in PAIRED_METRICS:
            if a[name] is not None and b[name] is not None:
                diffs[name].append(a[name] - b[name])
    out: dict[str, dict[str, Any]] = {}
    for name, (fn, higher) in PAIRED_METRICS.items():
        a, b = fn(q_source, c), fn(q_baseline, c)
        entry: dict[str, Any] = {
            "source": a,
            "baseline": b,
            "diff": None if a is None or b is None else float(a) - float(b),
            "ci": [None, None],
            "n_resamples": len(diffs[name]),
            "higher_is_better": higher,
            "verdict": "n/a",
        }
        if entry["diff"] is not None and diffs[name]:
            lo, hi = np.percentile(diffs[name], [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
            entry["ci"] = [float(lo), float(hi)]
            better, worse = (lo > 0, hi < 0) if higher else (hi < 0, lo > 0)
            entry["verdict"] = "win" if better else "loss" if worse else "tie"
        out[name] = entry
    return out
