# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Confidence sources to compare PCL's self-score against, each a small function of [`AnswerFeatures`].

Single-pass sources (free, no labels): the answer's token probabilities (mean, sequence, min; each with the stop
token, i.e. the marker where a PCL model stops, and without it) and the PCL self-score (expected level). Fitted
baselines, given the same labelled answers PCL's score was trained on: temperature, Platt and isotonic scaling of a
token-probability source, a logistic-regression probe on the hidden state at the answer end, and a difficulty-only
logistic regression on prompt features. Each fitted baseline is `Baseline(...).fit(train, labels)` (returns itself)
and `.predict(test)` (a confidence in [0, 1] per answer). `self_consistency` scores agreement among k sampled answers.
"""

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .features import AnswerFeatures


# scipy and scikit-learn are imported by the fitted baselines only, so `pcl.readout` (which uses the single-pass
# sources) does not need them


# ---- single-pass sources -------------------------------------------------------------------------------------------


def _token_logprobs(features: AnswerFeatures, include_stop: bool) -> list[np.ndarray]:
    if features.token_logprobs is None:
        raise ValueError("These features have no token log-probs: compute them with `answer_features(logprobs=True)`.")
    # The last scored token is the stop token (the marker); an answer with no scored token has nothing to drop
    return [lp if include_stop else lp[:-1] for lp in features.token_logprobs]


def _reduce(features: AnswerFeatures, include_stop: bool, fn: Callable[[np.ndarray], float]) -> np.ndarray:
    # No token to score (an empty answer without its stop token): 0 nats, probability 1 (the empty product)
    return np.array([fn(lp) if lp.size else 0.0 for lp in _token_logprobs(features, include_stop)], dtype=np.float64)


def sequence_logprob(features: AnswerFeatures, include_stop: bool = True) -> np.ndarray:
    """Summed log-prob of each answer's tokens (and of its stop token with `include_stop`)."""
    return _reduce(features, include_stop, np.sum)


def mean_token_logprob(features: AnswerFeatures, include_stop: bool = True) -> np.ndarray:
    return _reduce(features, include_stop, np.mean)


def min_token_logprob(features: AnswerFeatures, include_stop: bool = True) -> np.ndarray:
    return _reduce(features, include_stop, np.min)


def sequence_prob(features: AnswerFeatures, include_stop: bool = True) -> np.ndarray:
    """Probability of the whole answer, `exp(sum log p)`."""
    return np.exp(sequence_logprob(features, include_stop))


def mean_token_prob(features: AnswerFeatures, include_stop: bool = True) -> np.ndarray:
    """Geometric mean of the token probabilities, `exp(mean log p)` (the length-normalised sequence probability)."""
    return np.exp(mean_token_logprob(features, include_stop))


def min_token_prob(features: AnswerFeatures, include_stop: bool = True) -> np.ndarray:
    """Probability of the least likely token."""
    return np.exp(min_token_logprob(features, include_stop))


def self_score(features: AnswerFeatures | np.ndarray) -> np.ndarray:
    """PCL's self-score: the expected level `sum_k p_k * k / (levels - 1)`, in [0, 1] (features or level probs)."""
    probs = features.level_probs if isinstance(features, AnswerFeatures) else np.asarray(features)
    if probs is None:
        raise ValueError(
            "These features have no level distribution: compute them with `answer_features(levels=True)`."
        )
    return np.clip(probs @ np.linspace(0.0, 1.0, probs.shape[1]), 0.0, 1.0)


def _token_source(fn, include_stop):
    return lambda features: fn(features, include_stop)


# Every single-pass source by name; `*_no_stop` leaves out the stop token's probability
SOURCES: dict[str, Callable[[AnswerFeatures], np.ndarray]] = {"pcl_expected": self_score}
LOG_SOURCES: dict[str, Callable[[AnswerFeatures], np.ndarray]] = {}
for _name, _prob, _log in (
    ("mean_token_prob", mean_token_prob, mean_token_logprob),
    ("sequence_prob", sequence_prob, sequence_logprob),
    ("min_token_prob", min_token_prob, min_token_logprob),
):
    for _suffix, _stop in (("", True), ("_no_stop", False)):
        SOURCES[_name + _suffix] = _token_source(_prob, _stop)
        LOG_SOURCES[_name + _suffix] = _token_source(_log, _stop)


def single_pass_sources(features: AnswerFeatures) -> dict[str, np.ndarray]:
    """Every source of [`SOURCES`] the features allow (token sources need log-probs, the self-score levels)."""
    has = {True: features.level_probs is not None, False: features.token_logprobs is not None}
    names = [name for name in SOURCES if has[name == "pcl_expected"]]
    return {name: SOURCES[name](features) for name in names}


def log_confidence(features: AnswerFeatures, source: str) -> np.ndarray:
    """`log` of a source's confidence, computed in log space for the token sources (no underflow near 0 or 1)."""
    if source in LOG_SOURCES:
        return LOG_SOURCES[source](features)
    if source not in SOURCES:
        raise ValueError(f"Unknown confidence source {source!r}; choose one of {sorted(SOURCES)}.")
    return np.log(np.clip(SOURCES[source](features), 1e-300, 1.0))


# ---- fitted baselines ----------------------------------------------------------------------------------------------


def _labels(labels, n: int) -> np.ndarray:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if y.size != n:
        raise ValueError(f"Got {y.size} labels for {n} answers; pass one 0/1 label (correct or not) per answer.")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("Labels must be 0/1 (or bools): whether each answer was correct.")
    if y.min() == y.max():
        raise ValueError(f"All {n} labels are {int(y[0])}: a calibrator needs both correct and wrong answers to fit.")
    return y


def _logit_from_log(log_p: np.ndarray) -> np.ndarray:
    # logit(p) = log p - log(1 - p), with log(1 - p) = log(-expm1(log p)) exact for p near 1
    log_p = np.minimum(log_p, -1e-15)
    return log_p - np.log(-np.expm1(log_p))


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def _scaled_logistic_regression(C: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


class TemperatureScaling:
    """One scalar `T` on a source's logit: `q = sigmoid(logit(p) / T)`, fitted by the labels' negative log-likelihood.

    This is temperature scaling of the binary confidence `p` (correct vs wrong); `T > 1` softens an overconfident
    source, `T < 1` sharpens it. Fitted with `scipy.optimize.minimize_scalar` over `log T` in `[-7, 7]`.

    Args:
        source (`str`): A name in [`SOURCES`], e.g. `"sequence_prob"` or `"min_token_prob_no_stop"`.
    """

    def __init__(self, source: str = "sequence_prob"):
        self.source = source
        self.temperature: float | None = None

    def _z(self, features: AnswerFeatures) -> np.ndarray:
        return _logit_from_log(log_confidence(features, self.source))

    def fit(self, features: AnswerFeatures, labels) -> "TemperatureScaling":
        z = self._z(features)
        y = _labels(labels, len(z))

        def nll(log_t: float) -> float:
            s = z / np.exp(log_t)
            return -float(np.sum(y * _log_sigmoid(s) + (1 - y) * _log_sigmoid(-s)))

        from scipy.optimize import minimize_scalar

        result = minimize_scalar(nll, bounds=(-7.0, 7.0), method="bounded", options={"xatol": 1e-8})
        self.temperature = float(np.exp(result.x))
        return self

    def predict(self, features: AnswerFeatures) -> np.ndarray:
        if self.temperature is None:
            raise RuntimeError("Call `fit` before `predict`.")
        return np.exp(_log_sigmoid(self._z(features) / self.temperature))


class PlattScaling:
    """Platt scaling: `q = sigmoid(a * log p + b)` on a source's log-confidence (unregularised logistic regression).

    Args:
        source (`str`): A name in [`SOURCES`].
    """

    def __init__(self, source: str = "sequence_prob"):
        self.source = source
        self.model = None

    def _x(self, features: AnswerFeatures) -> np.ndarray:
        return log_confidence(features, self.source)[:, None]

    def fit(self, features: AnswerFeatures, labels) -> "PlattScaling":
        from sklearn.linear_model import LogisticRegression

        x = self._x(features)
        self.model = LogisticRegression(C=np.inf, max_iter=1000).fit(x, _labels(labels, len(x)))
        return self

    @property
    def coef(self) -> tuple[float, float]:
        """The fitted `(a, b)`."""
        return float(self.model.coef_[0, 0]), float(self.model.intercept_[0])

    def predict(self, features: AnswerFeatures) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("Call `fit` before `predict`.")
        return self.model.predict_proba(self._x(features))[:, 1]


class IsotonicCalibration:
    """Isotonic regression of the labels on a source's confidence: the best monotone non-decreasing map to [0, 1].

    Args:
        source (`str`): A name in [`SOURCES`].
    """

    def __init__(self, source: str = "sequence_prob"):
        self.source = source
        self.model = None

    def fit(self, features: AnswerFeatures, labels) -> "IsotonicCalibration":
        # Log space keeps sequence probabilities near 0 apart; isotonic regression is invariant to monotone maps
        from sklearn.isotonic import IsotonicRegression

        x = log_confidence(features, self.source)
        self.model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        self.model.fit(x, _labels(labels, len(x)))
        return self

    def predict(self, features: AnswerFeatures) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("Call `fit` before `predict`.")
        return np.clip(self.model.predict(log_confidence(features, self.source)), 0.0, 1.0)


class HiddenStateProbe:
    """Logistic-regression probe on the hidden state at the answer end (standardised, L2-regularised with `C`).

    Args:
        C (`float`): Inverse L2 strength of scikit-learn's `LogisticRegression`.
    """

    def __init__(self, C: float = 1.0):
        self.C = C
        self.model = None

    @staticmethod
    def _x(features: AnswerFeatures) -> np.ndarray:
        if features.hidden is None:
            raise ValueError(
                "These features have no hidden states: compute them with `answer_features(hidden_states=True)`."
            )
        return features.hidden.astype(np.float64)

    def fit(self, features: AnswerFeatures, labels) -> "HiddenStateProbe":
        x = self._x(features)
        self.model = _scaled_logistic_regression(self.C)
        self.model.fit(x, _labels(labels, len(x)))
        return self

    def predict(self, features: AnswerFeatures) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("Call `fit` before `predict`.")
        return self.model.predict_proba(self._x(features))[:, 1]


class DifficultyBaseline:
    """Logistic regression on prompt features alone (e.g. number of terms, digits): how much difficulty predicts.

    `fit` and `predict` take per-item prompt features instead of [`AnswerFeatures`]: a `(N, d)` array, or one
    mapping of feature name to number per item (the names seen in `fit` are used, in sorted order).

    Args:
        C (`float`): Inverse L2 strength of scikit-learn's `LogisticRegression`.
    """

    def __init__(self, C: float = 1.0):
        self.C = C
        self.names: list[str] | None = None
        self.model = None

    def _x(self, prompt_features) -> np.ndarray:
        if len(prompt_features) and isinstance(prompt_features[0], Mapping):
            if self.names is None:
                self.names = sorted({k for row in prompt_features for k in row})
            missing = [k for k in self.names if any(k not in row for row in prompt_features)]
            if missing:
                raise ValueError(f"Some items lack the prompt features {missing}; give every item the same features.")
            return np.array([[float(row[k]) for k in self.names] for row in prompt_features])
        x = np.asarray(prompt_features, dtype=np.float64)
        return x[:, None] if x.ndim == 1 else x

    def fit(self, prompt_features, labels) -> "DifficultyBaseline":
        self.names = None
        x = self._x(prompt_features)
        self.model = _scaled_logistic_regression(self.C)
        self.model.fit(x, _labels(labels, len(x)))
        return self

    def predict(self, prompt_features) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("Call `fit` before `predict`.")
        return self.model.predict_proba(self._x(prompt_features))[:, 1]


# ---- k-sample self-consistency -------------------------------------------------------------------------------------


def self_consistency(samples: Sequence[Sequence[str]], answers: Sequence[str] | None = None) -> np.ndarray:
    """Agreement among k sampled answers per item (k generations per item: k times the inference cost).

    Args:
        samples: Per item, the k sampled answers' normalised strings (normalise as the task's verifier compares them).
        answers: Per item, the answer to score (e.g. the greedy one): its confidence is the share of samples equal to
            it. Without `answers`, the share of the most common sample (the majority vote's confidence).
    """
    if answers is not None and len(answers) != len(samples):
        raise ValueError(f"Got {len(answers)} answers for {len(samples)} items' samples; pass one per item.")
    out = np.zeros(len(samples))
    for i, group in enumerate(samples):
        if not len(group):
            raise ValueError(f"Item {i} has no samples; self-consistency needs k >= 1 sampled answers per item.")
        counts = Counter(group)
        top = counts.most_common(1)[0][1] if answers is None else counts.get(answers[i], 0)
        out[i] = top / len(group)
    return out


FITTED = {
    "temperature": TemperatureScaling,
    "platt": PlattScaling,
    "isotonic": IsotonicCalibration,
    "hidden_probe": HiddenStateProbe,
    "difficulty": DifficultyBaseline,
}
