# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Calibration metrics for self-predicted confidences.

Every function takes ``q``, the model's confidences in ``[0, 1]``, and ``c``, the outcome: correctness in ``{0, 1}``
or a true normalised reward in ``[0, 1]``. Both are array-like of the same non-zero length and must be finite.

Metrics implemented here, in plain numpy:

* ``expected_calibration_error``: ECE with equal-width (``"uniform"``) or equal-mass (``"quantile"``) bins.
* ``brier_score``: mean squared error between confidence and outcome.
* ``auroc``: how well ``q`` ranks correct items above wrong ones (discrimination, ignores calibration).
* ``aurc``: area under the risk-coverage curve of selective prediction (lower is better).
* ``bootstrap_ci``: percentile bootstrap intervals for any of the above.
* ``collapse_check``: detects a confidence head that emits (nearly) the same value for every input.
* ``calibration_report``: all of the above in one JSON-serialisable dict.

Comparing two confidence sources on the same items is :mod:`pcl.paired_bootstrap`'s.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


__all__ = [
    "aurc",
    "auroc",
    "bin_indices",
    "bootstrap_ci",
    "brier_score",
    "calibration_report",
    "collapse_check",
    "expected_calibration_error",
    "reliability_bins",
    "risk_coverage_curve",
]

# Slack used when mapping a confidence to its bin: q * n_bins can land a hair below an integer edge in float
# (e.g. (1/3) * 9 or 0.1 * 3 * 10), and such values must go to the bin the edge opens.
_EDGE_EPS = 1e-9
# A non-binary outcome counts as "correct" for AUROC when it reaches full reward, up to float noise.
_CORRECT_EPS = 1e-9

_STRATEGIES = ("uniform", "quantile")


def _as_1d(x: ArrayLike, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric array-like, got {type(x).__name__}: {e}") from e
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; calibration metrics need at least one item")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(arr)))} non-finite value(s) (nan or inf)")
    return arr


def _validate_q(q: ArrayLike) -> np.ndarray:
    q = _as_1d(q, "q")
    if q.min() < 0.0 or q.max() > 1.0:
        raise ValueError(f"q (confidence) must lie in [0, 1], got min={q.min():.6g}, max={q.max():.6g}")
    return q


def validate(q: ArrayLike, c: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``q`` and ``c`` as 1-D float arrays of one length, with values in ``[0, 1]``; a clear error otherwise."""
    q = _validate_q(q)
    c = _as_1d(c, "c")
    if q.shape != c.shape:
        raise ValueError(f"q and c must have the same length, got len(q)={q.size} and len(c)={c.size}")
    if c.min() < 0.0 or c.max() > 1.0:
        raise ValueError(
            f"c (correctness / normalised reward) must lie in [0, 1], got min={c.min():.6g}, max={c.max():.6g}"
        )
    return q, c


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def bin_indices(q: ArrayLike, n_bins: int) -> np.ndarray:
    """Equal-width bin index of each confidence.

    Bin ``k`` is ``[k/B, (k+1)/B)``; the last bin also holds ``1.0``. A value on an edge belongs to the bin it opens,
    even when float arithmetic put it a hair below the edge (``0.1 * 3`` or ``3/9``), so we floor ``q * B`` with a
    tiny slack instead of comparing against ``np.linspace`` edges (whose 0.7 edge is 0.7000000000000001).
    """
    q = _validate_q(q)
    n_bins = _check_n_bins(n_bins)
    idx = np.floor(q * n_bins + _EDGE_EPS).astype(np.int64)
    return np.clip(idx, 0, n_bins - 1)


def expected_calibration_error(q: ArrayLike, c: ArrayLike, n_bins: int = 10, strategy: str = "uniform") -> float:
    """ECE = sum_b (n_b / N) * |mean(c in b) - mean(q in b)|.

    ``strategy="uniform"`` uses equal-width bins (see ``bin_indices``); ``"quantile"`` sorts items by ``q`` and splits
    them into ``n_bins`` groups of near-equal size. A group boundary can cut through items with the same ``q``; which
    of them fall on each side would then depend on the input order, so tied items share their mean outcome (the
    expected outcome of a random order within the tie) and the result does not depend on the order. With fewer items
    than bins the quantile strategy simply has empty groups, which contribute nothing.
    """
    q, c = validate(q, c)
    n_bins = _check_n_bins(n_bins)
    if strategy not in _STRATEGIES:
        raise ValueError(f"unknown ECE strategy {strategy!r}; expected one of {_STRATEGIES}")
    n = q.size
    if strategy == "uniform":
        idx = bin_indices(q, n_bins)
        sum_q = np.bincount(idx, weights=q, minlength=n_bins)
        sum_c = np.bincount(idx, weights=c, minlength=n_bins)
        # n_b/N * |sum_c/n_b - sum_q/n_b| == |sum_c - sum_q| / N, which also makes empty bins contribute 0.
        return float(np.sum(np.abs(sum_c - sum_q)) / n)
    order = np.argsort(q, kind="stable")
    c = _tie_mean(q, c)
    total = 0.0
    for group in np.array_split(order, n_bins):
        if group.size:
            total += abs(float(np.sum(c[group]) - np.sum(q[group])))
    return total / n


def brier_score(q: ArrayLike, c: ArrayLike) -> float:
    """Mean squared error ``mean((q - c)^2)``; works for binary and graded outcomes alike."""
    q, c = validate(q, c)
    return float(np.mean((q - c) ** 2))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (O(n log n))."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie group
    avg = ends - (counts - 1) / 2.0
    return avg[inverse.reshape(-1)]


def auroc(q: ArrayLike, c: ArrayLike) -> float | None:
    """Probability that a correct item gets a higher ``q`` than a wrong one; ties count 1/2.

    Computed from the Mann-Whitney U statistic on average ranks. For graded outcomes, an item is "correct" when
    ``c >= 1 - 1e-9`` (full reward) and wrong otherwise. Returns ``None`` when there are no correct or no wrong items,
    since the ranking is then undefined (e.g. all ``c`` equal, or graded ``c`` that never reaches 1).
    """
    q, c = validate(q, c)
    pos = c >= 1.0 - _CORRECT_EPS
    n_pos = int(pos.sum())
    n_neg = q.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(q)
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _tie_mean(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Each item's outcome replaced by the mean outcome of all items with the same ``q``."""
    _, inverse, counts = np.unique(q, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    return (np.bincount(inverse, weights=c) / counts)[inverse]


def _risks(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    # Most confident first. Among tied scores the order is arbitrary, so each tied item carries the tie's mean outcome:
    # risk(k) is then the expected risk over every order of the ties, and does not depend on the input order.
    order = np.argsort(-q, kind="stable")
    wrong = 1.0 - _tie_mean(q, c)[order]
    return np.cumsum(wrong) / np.arange(1, q.size + 1)


def risk_coverage_curve(q: ArrayLike, c: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Selective-prediction curve: keep the ``k`` most confident items; return (coverage ``k/N``, risk(k)).

    risk(k) is the mean of ``1 - c`` over the kept items (the error rate for binary ``c``); items with tied ``q`` count
    with their tie's mean outcome (the expected risk over the orders of the ties).
    """
    q, c = validate(q, c)
    n = q.size
    return np.arange(1, n + 1) / n, _risks(q, c)


def aurc(q: ArrayLike, c: ArrayLike) -> float:
    """Area under the risk-coverage curve: mean of risk(k) over k = 1..N. Lower is better."""
    q, c = validate(q, c)
    return float(np.mean(_risks(q, c)))


def reliability_bins(q: ArrayLike, c: ArrayLike, n_bins: int = 10) -> list[dict[str, Any]]:
    """Per-bin summary for reliability diagrams, one dict per equal-width bin (empty bins kept).

    Keys: ``lo``, ``hi`` (bin edges), ``count``, ``mean_confidence`` and ``accuracy`` (mean ``c``); the two means are
    ``None`` for an empty bin.
    """
    q, c = validate(q, c)
    n_bins = _check_n_bins(n_bins)
    idx = bin_indices(q, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    sum_q = np.bincount(idx, weights=q, minlength=n_bins)
    sum_c = np.bincount(idx, weights=c, minlength=n_bins)
    out = []
    for k in range(n_bins):
        n_k = int(counts[k])
        out.append(
            {
                "lo": k / n_bins,
                "hi": (k + 1) / n_bins,
                "count": n_k,
                "mean_confidence": float(sum_q[k] / n_k) if n_k else None,
                "accuracy": float(sum_c[k] / n_k) if n_k else None,
            }
        )
    return out


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float | None],
    q: ArrayLike,
    c: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of ``metric_fn(q, c)``.

    Items are resampled with replacement using ``np.random.default_rng(seed)``. Resamples where the metric is
    undefined (returns ``None`` or a non-finite value, e.g. AUROC on a one-class resample) are skipped; if none is
    valid the result is ``(nan, nan)``.
    """
    q, c = validate(q, c)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    rng = np.random.default_rng(seed)
    n = q.size
    values = []
    # One resample at a time: an (n_boot, N) index matrix would not fit in memory for large eval sets.
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, size=n)
        v = metric_fn(q[idx], c[idx])
        if v is not None and np.isfinite(v):
            values.append(float(v))
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(lo), float(hi)


def _ece_10(q: np.ndarray, c: np.ndarray) -> float:
    return expected_calibration_error(q, c, n_bins=10)


class ResampledMetrics:
    """AUROC, Brier and ECE-10 of one source on a resample given as item counts ``w``, in O(N) without re-sorting.

    A resample with replacement is the data with each item counted ``w_i`` times, so the metrics are weighted sums
    over structures computed once (tie groups of ``q``, ECE bins): the same values as on ``q[idx], c[idx]``. The
    resamples of ``calibration_report``'s intervals and of :func:`pcl.paired_bootstrap.paired_bootstrap` use it.
    """

    def __init__(self, q: np.ndarray, c: np.ndarray):
        self.sq = (q - c) ** 2
        self.gap = c - q
        self.bins = bin_indices(q, 10)
        _, groups = np.unique(q, return_inverse=True)  # ascending score groups: ties share one
        self.groups, self.n_groups = groups.reshape(-1), int(groups.max()) + 1
        self.pos = (c >= 1.0 - _CORRECT_EPS).astype(np.float64)

    def __call__(self, w: np.ndarray) -> dict[str, float | None]:
        n = w.sum()
        pos = np.bincount(self.groups, weights=w * self.pos, minlength=self.n_groups)
        neg = np.bincount(self.groups, weights=w * (1.0 - self.pos), minlength=self.n_groups)
        n_pos, n_neg = pos.sum(), neg.sum()
        # each positive beats the negatives in lower groups and ties half of those in its own group
        below = np.cumsum(neg) - neg
        roc = None if n_pos == 0 or n_neg == 0 else float(np.sum(pos * (below + 0.5 * neg)) / (n_pos * n_neg))
        ece = np.sum(np.abs(np.bincount(self.bins, weights=w * self.gap, minlength=10))) / n
        return {"auroc": roc, "brier": float(w @ self.sq / n), "ece_10": float(ece)}


def collapse_check(q: ArrayLike) -> dict[str, Any]:
    """Flag a collapsed confidence head: ``std < 0.01`` or at most one distinct value (rounded to 6 decimals)."""
    q = _validate_q(q)
    std = float(np.std(q))
    n_distinct = int(np.unique(np.round(q, 6)).size)
    return {"std": std, "n_distinct": n_distinct, "collapsed": bool(std < 0.01 or n_distinct <= 1)}


def _json_float(x: float | None) -> float | None:
    # NaN is not valid JSON; report undefined values as None instead.
    if x is None or not np.isfinite(x):
        return None
    return float(x)


def calibration_report(q: ArrayLike, c: ArrayLike, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All calibration metrics in one JSON-serialisable dict (plain floats / ints / bools / None).

    Keys: ``n``, ``ece_10``, ``ece_15``, ``ece_10_quantile``, ``brier``, ``auroc``, ``aurc``; ``<name>_ci`` as a
    ``[lo, hi]`` list for ``ece_10``, ``brier``, ``auroc`` and ``aurc`` (``[None, None]`` when undefined or when
    ``n_boot=0``); ``collapse`` (see ``collapse_check``), ``mean_confidence`` and ``accuracy`` (mean ``c``).
    """
    q, c = validate(q, c)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")

    report: dict[str, Any] = {
        "n": int(q.size),
        "ece_10": _ece_10(q, c),
        "ece_15": expected_calibration_error(q, c, n_bins=15),
        "ece_10_quantile": expected_calibration_error(q, c, n_bins=10, strategy="quantile"),
        "brier": brier_score(q, c),
        "auroc": auroc(q, c),
        "aurc": aurc(q, c),
    }
    # The resamples of `bootstrap_ci(metric, q, c, n_boot, seed)` for every metric at once; AUROC, Brier and ECE-10
    # from item counts (O(N) each), AURC on the resampled arrays
    values: dict[str, list[float]] = {name: [] for name in ("ece_10", "brier", "auroc", "aurc")}
    rng, weighted = np.random.default_rng(seed), ResampledMetrics(q, c)
    for _ in range(int(n_boot)):
        idx = rng.integers(0, q.size, size=q.size)
        resample = {**weighted(np.bincount(idx, minlength=q.size).astype(np.float64)), "aurc": aurc(q[idx], c[idx])}
        for name in values:
            if resample[name] is not None:
                values[name].append(resample[name])
    for name in values:
        if n_boot == 0 or report[name] is None or not values[name]:
            report[f"{name}_ci"] = [None, None]
        else:
            lo, hi = np.percentile(values[name], [2.5, 97.5])
            report[f"{name}_ci"] = [_json_float(lo), _json_float(hi)]
    report["collapse"] = collapse_check(q)
    report["mean_confidence"] = float(np.mean(q))
    report["accuracy"] = float(np.mean(c))
    return report


def __getattr__(name: str) -> Any:
    # `paired_bootstrap` and `PAIRED_METRICS` (public names of this module before they moved to
    # `pcl.paired_bootstrap`) stay importable from here; imported on use, since that module builds on this one
    if name in ("PAIRED_METRICS", "paired_bootstrap"):
        from . import paired_bootstrap as module

        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
