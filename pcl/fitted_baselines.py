# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Fitted confidence baselines, given the same labelled answers PCL's score was trained on.

A user's alternative to PCL is "train as usual, then calibrate a confidence with labelled data". The labelled data
here are the self-labelled rows that trained PCL's score: prompt, the model's own answer, its reward. `pcl train`
saves them as `self_labelled.jsonl` in the stage's output directory ([`write_fit_rows`]); `pcl calibrate --fit_rows`
reads them back. [`fit_baselines`] fits every baseline on the evaluated model's features over those answers with
their 0/1 correctness, never on evaluation items: temperature, Platt and isotonic scaling of the sequence and minimum
token probabilities (with and without the stop token), a probe on the hidden state at the answer end, and a
difficulty-only regression on prompt features. Hyper-parameters (the regressions' `C`) are chosen on a seeded,
stratified validation split of the same rows; each baseline is then refit on all of them.
"""

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .baselines import DifficultyBaseline, HiddenStateProbe, IsotonicCalibration, PlattScaling, TemperatureScaling
from .features import AnswerFeatures


__all__ = ["FITTED_SOURCES", "FIT_ROWS_FILE", "FittedBaselines", "fit_baselines", "load_fit_rows", "write_fit_rows"]

FIT_ROWS_FILE = "self_labelled.jsonl"
SCALINGS = {"temperature": TemperatureScaling, "platt": PlattScaling, "isotonic": IsotonicCalibration}
SCALED_SOURCES = ("sequence_prob", "sequence_prob_no_stop", "min_token_prob", "min_token_prob_no_stop")
# Inverse L2 strengths tried for the probe and the difficulty regression
C_GRID = (0.01, 0.1, 1.0, 10.0)
FITTED_SOURCES = (*(f"{m}_{s}" for m in SCALINGS for s in SCALED_SOURCES), "hidden_probe", "difficulty")
REQUIRED = ("prompt", "completion", "reward")


def write_fit_rows(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write labelled rows (`prompt`, `completion`, `reward`, optional `difficulty`) as JSON lines, atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # a crash mid-write never leaves a partial file to be reused on resume


def load_fit_rows(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Read labelled rows from one or more JSONL files (each row needs `prompt`, `completion` and `reward`)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    rows = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Fit rows file {str(path)!r} does not exist (e.g. a stage's {FIT_ROWS_FILE}).")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                missing = [k for k in REQUIRED if k not in row]
                if missing:
                    raise ValueError(
                        f"{path}:{n} lacks {missing}: each fit row needs `prompt`, `completion` (the model's answer) "
                        "and `reward` (its reward, 0/1 correctness after normalisation)."
                    )
                rows.append(row)
    if not rows:
        raise ValueError(f"No fit rows in {[str(p) for p in paths]}.")
    return rows


def fit_labels(rows: Sequence[dict[str, Any]], normalize: Callable[[float], float | None]) -> np.ndarray:
    """0/1 correctness of each row from its reward, normalised like the benchmark's outcomes; refuses other values."""
    labels = np.array([np.nan if (v := normalize(r["reward"])) is None else v for r in rows], dtype=np.float64)
    bad = np.flatnonzero(~np.isin(labels, (0.0, 1.0)))
    if bad.size:
        raise ValueError(
            f"Fit row {int(bad[0])} has reward {rows[bad[0]]['reward']!r}, not 0/1 correctness after normalisation "
            f"({bad.size} such rows): fitted baselines predict whether an answer is correct. Pass rows labelled by a "
            "0/1 verifier (e.g. `reward: task`), or no fit rows."
        )
    return labels


def too_few_labels(labels: np.ndarray) -> str | None:
    """Why these labels cannot fit and validate a calibrator (fewer than 2 correct or 2 wrong answers), else None."""
    for value, name in ((1.0, "correct"), (0.0, "wrong")):
        if (labels == value).sum() < 2:
            return (
                f"the {len(labels)} fit rows have {int((labels == value).sum())} {name} answers; fitting and "
                "validating a calibrator needs at least 2 correct and 2 wrong ones"
            )
    return None


def validation_split(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A boolean mask of validation rows: `share` of each class (at least one, never all), seeded."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"The validation share must be in (0, 1), got {share}.")
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), dtype=bool)
    for value in (0.0, 1.0):
        idx = rng.permutation(np.flatnonzero(labels == value))
        k = min(max(int(round(share * len(idx))), 1), len(idx) - 1)
        val[idx[:k]] = True
    return val


def numeric_difficulty(difficulty: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the difficulty features every item has as a number (bools count); empty when there are none."""
    names = None
    for d in difficulty:
        numeric = {k for k, v in d.items() if isinstance(v, (int, float, bool))}
        names = numeric if names is None else names & numeric
    return sorted(names or ())


def _brier(q: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((q - y) ** 2))


@dataclass
class FittedBaselines:
    """The fitted baselines and what was chosen on the validation split.

    Args:
        models (`dict[str, Any]`): Baseline name -> fitted model (refit on all fit rows).
        difficulty_names (`list[str]`): The prompt features the difficulty baseline reads (empty: not fitted).
        summary (`dict`): Rows, split, chosen hyper-parameters, validation Brier of each baseline, the best one on
            validation, baselines not fitted (`not_fitted`) with the reason, fit time.
    """

    models: dict[str, Any]
    difficulty_names: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def predict(self, features: AnswerFeatures, difficulty: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Each baseline's confidence for the answers of `features` (prompt `difficulty` features per item)."""
        out = {}
        for name, model in self.models.items():
            if name == "difficulty":
                if any(k not in d for d in difficulty for k in self.difficulty_names):
                    # Items of another task: the prompt features it was fit on do not exist there
                    self.summary.setdefault("not_fitted", {})["difficulty"] = (
                        f"some evaluated items lack the difficulty features {self.difficulty_names}"
                    )
                    continue
                out[name] = model.predict([{k: d[k] for k in self.difficulty_names} for d in difficulty])
            else:
                out[name] = model.predict(features)
        return out


def _choose_c(make: Callable[[float], Any], x_fit, y_fit, x_val, y_val) -> tuple[float, float]:
    scores = {c: _brier(make(c).fit(x_fit, y_fit).predict(x_val), y_val) for c in C_GRID}
    best = min(scores, key=lambda c: (scores[c], c))  # ties: the stronger regularisation
    return best, scores[best]


def fit_baselines(
    features: AnswerFeatures,
    labels: np.ndarray,
    difficulty: Sequence[dict[str, Any]] | None = None,
    *,
    validation_share: float = 0.2,
    seed: int = 0,
) -> FittedBaselines:
    """Fit every baseline of [`FITTED_SOURCES`] on labelled answers (their features, 0/1 labels, prompt difficulty).

    Each is first fit on the rows outside a stratified validation split (`validation_share` of each class, `seed`)
    and scored there (Brier), which chooses `C` of the probe and of the difficulty regression from [`C_GRID`]; then
    each is refit on all rows. The difficulty baseline is fitted only when every row has numeric difficulty features.
    """
    start = time.perf_counter()
    y = np.asarray(labels, dtype=np.float64)
    if len(features) != len(y):
        raise ValueError(f"Got features of {len(features)} answers but {len(y)} labels.")
    if (reason := too_few_labels(y)) is not None:
        raise ValueError(f"Cannot fit the baselines: {reason}. Label more answers.")
    val = validation_split(y, validation_share, seed)
    f_fit, f_val = features.select(~val), features.select(val)
    y_fit, y_val = y[~val], y[val]
    models, val_brier, chosen, not_fitted = {}, {}, {}, {}
    for method, cls in SCALINGS.items():
        for source in SCALED_SOURCES:
            name = f"{method}_{source}"
            val_brier[name] = _brier(cls(source).fit(f_fit, y_fit).predict(f_val), y_val)
            models[name] = cls(source).fit(features, y)
    c, val_brier["hidden_probe"] = _choose_c(HiddenStateProbe, f_fit, y_fit, f_val, y_val)
    chosen["hidden_probe"] = {"C": c}
    models["hidden_probe"] = HiddenStateProbe(C=c).fit(features, y)
    names = numeric_difficulty(difficulty or [])
    if names:
        x = [{k: d[k] for k in names} for d in difficulty]
        x_fit, x_val = [x[i] for i in np.flatnonzero(~val)], [x[i] for i in np.flatnonzero(val)]
        c, val_brier["difficulty"] = _choose_c(DifficultyBaseline, x_fit, y_fit, x_val, y_val)
        chosen["difficulty"] = {"C": c, "features": names}
        models["difficulty"] = DifficultyBaseline(C=c).fit(x, y)
    else:
        not_fitted["difficulty"] = "the fit rows have no numeric difficulty features"
    summary = {
        "n_rows": len(y),
        "accuracy": float(y.mean()),
        "n_fit": int((~val).sum()),
        "n_validation": int(val.sum()),
        "validation_share": validation_share,
        "seed": seed,
        "chosen": chosen,
        "validation_brier": val_brier,
        "best_on_validation": min(val_brier, key=val_brier.get),
        "not_fitted": not_fitted,
        "fit_s": time.perf_counter() - start,
    }
    return FittedBaselines(models, names, summary)
