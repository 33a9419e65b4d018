# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Per-item benchmark records (`items.jsonl`) and the metrics computed from them.

One row per evaluated question: its prompt, the model's answer, the gold answer, the outcome (`correct`, None when the
reward function did not score it), whether the question occurred in training (`seen`), its difficulty features and
every confidence source's value. Every number in `metrics.json` is a function of these rows (`split_metrics`), so any
comparison can be recomputed from the file alone.
"""

import json
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .calibration import auroc, calibration_report
from .paired_bootstrap import paired_bootstrap
from .tasks import decode_entry


__all__ = ["DIFFICULTY_FEATURES", "difficulty_features", "load_items", "split_metrics", "write_items"]

# The PCL self-score every baseline is compared against, and sources that are PCL themselves (not baselines)
PRIMARY = "pcl_expected"
PCL_SOURCES = ("pcl_expected", "pcl_written")

# Task name -> function of an entry's metadata returning its difficulty features. Without an entry here, the features
# are the item-level values of the config ranges reasoning-gym records in `metadata["difficulty"]` (for chain_sum:
# `num_terms` and `num_digits`), or a JSONL row's own `difficulty` mapping.
DIFFICULTY_FEATURES: dict[str, Callable[[dict], dict[str, Any]]] = {}


def difficulty_features(task: str, entry_json: str) -> dict[str, Any]:
    """The difficulty features of one item (an empty dict when the task records none)."""
    entry = decode_entry(entry_json)
    meta = entry.get("metadata") if isinstance(entry, dict) else None
    if task in DIFFICULTY_FEATURES:
        return dict(DIFFICULTY_FEATURES[task](meta or {}))
    if isinstance(entry, dict) and isinstance(entry.get("difficulty"), dict):
        return dict(entry["difficulty"])
    ranges = meta.get("difficulty") if isinstance(meta, dict) else None
    if not isinstance(ranges, dict):
        return {}
    return {k: meta[k] for k in ranges if isinstance(meta.get(k), (int, float, str, bool))}


def write_items(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write item rows as JSON lines."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_items(path: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """Read `items.jsonl` back (optionally one split: `"heldout"` or `"shifted"`)."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def _key(features: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(features.items())) or "all"


def by_difficulty(rows: Sequence[dict[str, Any]], sources: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per difficulty cell: items, how many were seen in training, accuracy (all and unseen), mean confidence and
    AUROC of each source, so a confound between seen/unseen and difficulty shows."""
    cells: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        cells[_key(r["difficulty"])].append(r)
    out = {}
    for key in sorted(cells):
        cell = cells[key]
        c = np.array([r["correct"] for r in cell])
        unseen = np.array([not r["seen"] for r in cell])
        out[key] = {
            "n": len(cell),
            "n_seen": int((~unseen).sum()),
            "accuracy": float(c.mean()),
            "accuracy_unseen": float(c[unseen].mean()) if unseen.any() else None,
            "mean_confidence": {s: float(np.mean([r["confidence"][s] for r in cell])) for s in sources},
            "auroc": {s: auroc([r["confidence"][s] for r in cell], c) for s in sources},
        }
    return out


def split_metrics(rows: Sequence[dict[str, Any]], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All metrics of one split from its item rows: unscored items (`correct` None) are left out.

    Keys: `n`, `n_scored`, `n_seen_in_training`, `n_unseen`, `accuracy`, `accuracy_unseen`, `seen_auroc` (how well
    "seen in training" alone predicts correctness), `sources` and `paired` per subset (`full`, `unseen`), and
    `by_difficulty`. `paired[subset][baseline]` is `paired_bootstrap(PCL self-score, baseline)`.
    """
    scored = [r for r in rows if r["correct"] is not None]
    sources = list(rows[0]["confidence"]) if rows else []
    unseen = [r for r in scored if not r["seen"]]
    c = np.array([r["correct"] for r in scored], dtype=float)
    seen = np.array([float(r["seen"]) for r in scored])
    out: dict[str, Any] = {
        "n": len(rows),
        "n_scored": len(scored),
        "n_seen_in_training": sum(bool(r["seen"]) for r in rows),
        "n_unseen": sum(not r["seen"] for r in rows),
        "accuracy": float(c.mean()) if scored else None,
        "accuracy_unseen": float(np.mean([r["correct"] for r in unseen])) if unseen else None,
        "seen_auroc": auroc(seen, c) if scored else None,
        "sources": {},
        "paired": {},
        "by_difficulty": by_difficulty(scored, sources),
    }
    for subset, items in (("full", scored), ("unseen", unseen)):
        if len(items) < 2:
            continue
        cc = np.array([r["correct"] for r in items], dtype=float)
        q = {s: np.array([r["confidence"][s] for r in items]) for s in sources}
        out["sources"][subset] = {s: calibration_report(q[s], cc, n_boot=n_boot, seed=seed) for s in sources}
        if PRIMARY in q and n_boot > 0:
            out["paired"][subset] = {
                s: paired_bootstrap(q[PRIMARY], q[s], cc, n_boot=n_boot, seed=seed)
                for s in sources
                if s not in PCL_SOURCES
            }
    return out
