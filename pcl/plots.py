# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Plots for calibration analysis: reliability diagrams and risk-coverage curves, saved as PNG files.

All functions take confidences ``q`` in ``[0, 1]`` and outcomes ``c`` (correctness or normalised reward in
``[0, 1]``), write one PNG to ``path`` (creating parent folders) and close the figure, so they are safe to call in
loops and on headless machines.
"""

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
from numpy.typing import ArrayLike


# Headless backend: evaluation runs on servers without a display.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pcl.calibration import aurc, expected_calibration_error, reliability_bins, risk_coverage_curve  # noqa: E402


__all__ = ["reliability_diagram", "reliability_grid", "risk_coverage_plot"]

_ACC_COLOR = "#1f77b4"
_GAP_COLOR = "#d62728"


def _save(fig: "plt.Figure", path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def _draw_reliability(
    ax_top: "plt.Axes",
    ax_bottom: "plt.Axes",
    q: ArrayLike,
    c: ArrayLike,
    n_bins: int,
    title: str | None,
    log_counts: bool,
) -> None:
    bins = reliability_bins(q, c, n_bins=n_bins)
    ece = expected_calibration_error(q, c, n_bins=n_bins)
    width = 1.0 / n_bins
    lefts = np.array([b["lo"] for b in bins])
    counts = np.array([b["count"] for b in bins])
    filled = [b for b in bins if b["count"] > 0]
    f_lefts = np.array([b["lo"] for b in filled])
    acc = np.array([b["accuracy"] for b in filled])
    conf = np.array([b["mean_confidence"] for b in filled])

    ax_top.bar(
        f_lefts, acc, width=width, align="edge", color=_ACC_COLOR, edgecolor="black", linewidth=0.6, label="Accuracy"
    )
    # Gap between the bin's accuracy and its mean confidence: the quantity ECE averages.
    ax_top.bar(
        f_lefts,
        conf - acc,
        bottom=acc,
        width=width,
        align="edge",
        color=_GAP_COLOR,
        alpha=0.3,
        edgecolor=_GAP_COLOR,
        hatch="//",
        linewidth=0.6,
        label="Gap to mean confidence",
    )
    ax_top.plot(f_lefts + width / 2, conf, "o", color="black", markersize=3, label="Mean confidence")
    ax_top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="Perfect calibration")
    ax_top.set_xlim(0, 1)
    ax_top.set_ylim(0, 1)
    ax_top.set_ylabel("Accuracy (mean outcome)")
    ax_top.set_title(title or "Reliability diagram")
    ax_top.legend(loc="upper left", fontsize=8, title=f"ECE ({n_bins} bins) = {ece:.3f}", title_fontsize=8)
    ax_top.grid(alpha=0.3)

    ax_bottom.bar(lefts, counts, width=width, align="edge", color="gray", edgecolor="black", linewidth=0.6)
    ax_bottom.set_xlim(0, 1)
    if log_counts and counts.max() > 0:
        ax_bottom.set_yscale("log")
    ax_bottom.set_xlabel("Confidence")
    ax_bottom.set_ylabel("Count")
    ax_bottom.grid(alpha=0.3)


def reliability_diagram(
    q: ArrayLike,
    c: ArrayLike,
    path: str | os.PathLike,
    n_bins: int = 10,
    title: str | None = None,
    log_counts: bool = False,
) -> None:
    """Save a reliability diagram: per-bin accuracy against the diagonal (top) and item counts per bin (bottom)."""
    fig, (ax_top, ax_bottom) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    _draw_reliability(ax_top, ax_bottom, q, c, n_bins, title, log_counts)
    _save(fig, path)


def reliability_grid(
    sources: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | os.PathLike,
    n_bins: int = 10,
    log_counts: bool = False,
) -> None:
    """Save side-by-side reliability diagrams, one column per confidence source (name -> (q, c))."""
    if not sources:
        raise ValueError("sources is empty; pass at least one name -> (q, c) pair")
    n = len(sources)
    fig, axes = plt.subplots(
        2,
        n,
        figsize=(4.5 * n, 6),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08, "wspace": 0.3},
    )
    for col, (name, (q, c)) in enumerate(sources.items()):
        _draw_reliability(axes[0, col], axes[1, col], q, c, n_bins, str(name), log_counts)
    _save(fig, path)


def risk_coverage_plot(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | os.PathLike,
    title: str | None = None,
) -> None:
    """Save risk-coverage curves, one line per confidence source (name -> (q, c)), with AURC in the legend."""
    if not curves:
        raise ValueError("curves is empty; pass at least one name -> (q, c) pair")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    top = 0.0
    for name, (q, c) in curves.items():
        coverage, risk = risk_coverage_curve(q, c)
        ax.plot(coverage, risk, linewidth=1.5, label=f"{name} (AURC={aurc(q, c):.3f})")
        top = max(top, float(risk.max()))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, min(1.0, top * 1.1) if top > 0 else 1.0)
    ax.set_xlabel("Coverage (fraction of items kept, most confident first)")
    ax.set_ylabel("Risk (mean 1 - outcome among kept)")
    ax.set_title(title or "Risk-coverage")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
