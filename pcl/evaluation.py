# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The calibration benchmark (`pcl calibrate`): deploy-mode answers, their true rewards, and how well each
confidence source predicts them, on a deduplicated held-out split and optionally on a shifted (harder) split.

Sources compared on the same generations: the PCL self-score (expected value over the score levels) and the free
token-probability baselines, all from one forward pass over `prompt + answer + MARKER` per answer (`pcl.features`,
`pcl.baselines`); the PCL score the model writes when the marker is not a stop; optionally the baselines fitted on the
labels PCL's score was trained on (`pcl.fitted_baselines`), k-sample self-consistency, and an RLCR-style model that
verbalises `<confidence>q</confidence>` in its output. This module orchestrates; each source is computed elsewhere.
"""

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .baselines import self_consistency, single_pass_sources
from .calibration import calibration_report
from .features import answer_features
from .fitted_baselines import FittedBaselines, fit_baselines, fit_labels, load_fit_rows, too_few_labels
from .inference import generate, marker_leak_check
from .items import difficulty_features, split_metrics, write_items
from .marker import format_of, load_pcl_model
from .plots import reliability_diagram, reliability_grid, risk_coverage_plot
from .readout import written_scores
from .report import SOURCE_NAMES, plotted_sources, render_report, summary
from .rewards import REWARD_INPUTS, check_reward_inputs, math_verify_accuracy
from .splits import deduplicate
from .tasks import TaskSpec, held_out, load_task, make_reward_func, resolve_reward_func, score_completions


CONFIDENCE_RE = re.compile(r"<confidence>\s*([0-9]*\.?[0-9]+)\s*</confidence>", re.IGNORECASE)


def parse_verbalized_confidence(text: str) -> tuple[str, float | None]:
    """Split an RLCR-style output into (answer, confidence in [0, 1] or None)."""
    match = CONFIDENCE_RE.search(text)
    answer = text.split("<confidence>")[0].split("<analysis>")[0].strip()
    if match is None:
        return answer, None
    q = float(match.group(1))
    return answer, (q if 0.0 <= q <= 1.0 else None)


def _score(reward_func: Callable, data, completions: Sequence[str], normalize: Callable) -> list[float | None]:
    return [None if r is None else normalize(r) for r in score_completions(reward_func, data, completions)]


def _verbalized(model_dir: str, data, reward_func, normalize, max_new_tokens: int, batch_size: int) -> dict:
    """An in-band confidence baseline: the model writes its answer, then `<confidence>q</confidence>`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    gens = generate(model, tokenizer, data["prompt"], max_new_tokens=max_new_tokens, batch_size=batch_size,
                     stop_at_marker=False, tokens=_NoMarker(tokenizer))  # fmt: skip
    texts = tokenizer.batch_decode([g.token_ids for g in gens], skip_special_tokens=True)
    parsed = [parse_verbalized_confidence(t) for t in texts]
    answers = [a for a, _ in parsed]
    answer_tokens = [len(tokenizer.encode(" " + a, add_special_tokens=False)) for a in answers]
    return {
        "correct": _score(reward_func, data, answers, normalize),
        "confidence": [q for _, q in parsed],
        "mean_tokens": float(np.mean([g.num_tokens for g in gens])),
        "extra_tokens": float(np.mean([max(g.num_tokens - n, 0) for g, n in zip(gens, answer_tokens, strict=True)])),
    }


class _NoMarker:
    """Stand-in segment tokens for a non-PCL model: no marker, only its EOS ids."""

    def __init__(self, tokenizer):
        self.marker_id = -1
        self.eos_ids = (tokenizer.eos_token_id,)
        self.eos_id = tokenizer.eos_token_id


def _answers_and_confidences(model, tokenizer, tokens, prompts, max_new_tokens, batch_size, quiet, timed) -> tuple:
    """Deploy-mode answers, their features (one forward pass) and every single-pass confidence source on them, plus
    timings when `timed`."""
    timing: dict = {}
    if timed:  # warm up, so neither timed generation below pays the first call's start-up
        generate(model, tokenizer, prompts[:8], max_new_tokens=max_new_tokens, tokens=tokens, show_progress=False)
    start = time.perf_counter()
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, tokens=tokens,
                    show_progress=not quiet)  # fmt: skip
    timing["generation_s"] = time.perf_counter() - start
    answers = [g.text for g in gens]
    features = answer_features(model, tokenizer, prompts, answers, batch_size=batch_size, tokens=tokens,
                               show_progress=not quiet)  # fmt: skip
    single = single_pass_sources(features)
    confidences = {"pcl_expected": single.pop("pcl_expected")}
    if timed:
        # What deployment pays for the score alone: a levels-only pass (the features pass above also keeps token
        # log-probs and hidden states, which the self-score does not need)
        start = time.perf_counter()
        answer_features(model, tokenizer, prompts, answers, batch_size=batch_size, tokens=tokens, logprobs=False,
                        hidden_states=False)  # fmt: skip
        timing["readout_s"] = time.perf_counter() - start
        # The same score read from the generation's own KV cache: the deployment-time cost of introspection
        start = time.perf_counter()
        cached = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          tokens=tokens, show_progress=False, self_score=True)  # fmt: skip
        timing["generation_with_cached_self_score_s"] = time.perf_counter() - start
        diff = [abs(g.self_score - q) for g, q in zip(cached, confidences["pcl_expected"], strict=True)
                if g.self_score is not None]  # fmt: skip
        timing["cached_self_score_max_abs_diff"] = max(diff) if diff else None
    written = written_scores(model, tokenizer, prompts, answers, batch_size=batch_size, tokens=tokens)
    # An unparseable written score carries no information: it counts as the uninformative 0.5
    confidences["pcl_written"] = np.array([0.5 if w is None else w for w in written])
    confidences.update(single)
    return gens, features, confidences, written, timing


def answer_key(task: TaskSpec, reward: str = "task") -> Callable[[str], str]:
    """How the task's verifier compares answers, as a key: equal keys are the same answer.

    reasoning-gym verifiers compare the stripped answer with the gold string; JSONL and dataset tasks also compare as
    numbers. Under `pcl.rewards.math_verify_accuracy` an answer is what math-verify reads from it (the boxed or last
    number), so two worked solutions that end in the same number agree, as the reward would judge them.
    """
    if task.is_reasoning_gym:
        return str.strip
    if reward != "task" and resolve_reward_func(reward) is math_verify_accuracy:
        from math_verify import parse

        def math_key(text: str) -> str:
            parsed = parse(text, parsing_timeout=10)  # time-limited, as in math_verify_accuracy
            if not parsed:
                return text.strip()
            # The extracted text, not the sympy value, whose evaluation can run for ever (`9^9^9^9`); "18", "18.00"
            # and "1,000"/"1000" compare as numbers
            return _number_key(str(parsed[-1]).replace(",", ""))

        return math_key
    return lambda text: _number_key(text.strip())


def _number_key(text: str) -> str:
    """`text` as a number when it is a finite one ("18" and "18.00" agree), else as it is."""
    try:
        value = float(text)
    except ValueError:
        return text
    return repr(value) if np.isfinite(value) else text


def _self_consistency(model, tokenizer, tokens, prompts, answers, k, max_new_tokens, batch_size, key, seed) -> tuple:
    """Agreement of k sampled answers (temperature 1) with each greedy answer, and the sampling time."""
    import torch

    torch.manual_seed(seed)
    start = time.perf_counter()
    # A prompt's k copies side by side: one batch holds whole groups of equal length (less padding)
    samples = generate(model, tokenizer, [p for p in prompts for _ in range(k)], max_new_tokens=max_new_tokens,
                       batch_size=batch_size, do_sample=True, tokens=tokens, show_progress=False)  # fmt: skip
    elapsed = time.perf_counter() - start
    groups = [[key(g.text) for g in samples[i * k : (i + 1) * k]] for i in range(len(prompts))]
    return self_consistency(groups, [key(a) for a in answers]), elapsed


def _eval_set(task: TaskSpec, train_prompts: Sequence | None) -> tuple:
    """The task's questions, deduplicated, with a `seen` column; returns (data, duplicates dropped)."""
    data, n_duplicates = deduplicate(load_task(task))
    if train_prompts is not None:
        data, _, _ = held_out(data, train_prompts)
    else:
        data = data.add_column("seen", [False] * len(data))
    return data, n_duplicates


def _item_rows(split: str, data, gens, correct, confidences, difficulty) -> list[dict]:
    return [
        {
            "split": split,
            "prompt": data["prompt"][i],
            "answer": gens[i].text,
            "gold": data["answer"][i],
            "correct": correct[i],
            "seen": bool(data["seen"][i]),
            "difficulty": difficulty[i],
            "stop": gens[i].stop,
            "confidence": {name: float(q[i]) for name, q in confidences.items()},
        }
        for i in range(len(data))
    ]


def _describe_shift(shifted: TaskSpec, train_tasks: Sequence[TaskSpec] | None) -> str:
    def name(t: TaskSpec) -> str:
        return (
            f"{t.dataset_name} split {t.dataset_split}"
            if t.is_dataset
            else f"{t.name} {t.config or '(default config)'}"
        )

    trained = "; ".join(name(t) for t in train_tasks or []) or "not given"
    return f"{name(shifted)}, vs trained on: {trained}"


@dataclass
class _Bench:
    """What every split is evaluated with."""

    model: Any
    tokenizer: Any
    tokens: Any
    normalize: Callable
    reward: str
    max_new_tokens: int
    batch_size: int
    quiet: bool
    fitted: FittedBaselines | None
    self_consistency_k: int

    def reward_func(self, task: TaskSpec) -> Callable:
        return make_reward_func(task) if self.reward == "task" else resolve_reward_func(self.reward)


def _fit(b: _Bench, rows: list[dict] | None, paths) -> tuple[FittedBaselines | None, dict]:
    """The fitted baselines, on the evaluated model's features over the fit rows only (no evaluation item exists yet)."""
    if not rows:
        return None, {"skipped": "no fit rows given (`fit_rows=` / `pcl calibrate --fit_rows`)"}
    labels = fit_labels(rows, b.normalize)
    if (reason := too_few_labels(labels)) is not None:  # e.g. a model too weak to answer any correctly: a result
        return None, {"skipped": reason}
    features = answer_features(b.model, b.tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows],
                               batch_size=b.batch_size, tokens=b.tokens, levels=False, show_progress=not b.quiet)  # fmt: skip
    fitted = fit_baselines(features, labels, [r.get("difficulty") or {} for r in rows])
    fitted.summary["paths"] = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    return fitted, fitted.summary


def _evaluate_split(b: _Bench, split: str, task: TaskSpec, data, timed: bool) -> tuple:
    """Answers, every confidence source and the outcomes of one split's items: (item rows, generations, written
    scores, timings)."""
    gens, features, confidences, written, timing = _answers_and_confidences(
        b.model, b.tokenizer, b.tokens, data["prompt"], b.max_new_tokens, b.batch_size, b.quiet, timed
    )
    difficulty = [difficulty_features(t, e) for t, e in zip(data["task"], data["entry"], strict=True)]
    if b.fitted is not None:
        confidences.update(b.fitted.predict(features, difficulty))
    if b.self_consistency_k:
        confidences["self_consistency"], timing["self_consistency_s"] = _self_consistency(
            b.model, b.tokenizer, b.tokens, data["prompt"], [g.text for g in gens], b.self_consistency_k,
            b.max_new_tokens, b.batch_size, answer_key(task, b.reward), seed=0,
        )  # fmt: skip
    correct = _score(b.reward_func(task), data, [g.text for g in gens], b.normalize)
    return _item_rows(split, data, gens, correct, confidences, difficulty), gens, written, timing


def run_calibration(
    model_dir: str,
    task: TaskSpec,
    output_dir: str,
    *,
    train_prompts: Sequence[str] | None = None,
    train_tasks: Sequence[TaskSpec] | None = None,
    shifted_task: TaskSpec | None = None,
    fit_rows: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    self_consistency_k: int = 0,
    reward: str = "task",
    max_new_tokens: int = 64,
    batch_size: int = 64,
    confidence_model: str | None = None,
    n_boot: int = 1000,
    quiet: bool = False,
    fit_note: str | None = None,
) -> dict:
    """Run the benchmark and write `metrics.json`, `items.jsonl`, `report.md` and PNGs into `output_dir`.

    The evaluation set is deduplicated and each question marked `seen` when it occurs in `train_prompts`; metrics are
    reported on all items and on the unseen ones, broken down by difficulty, with a paired bootstrap of the PCL
    self-score against each baseline. With `shifted_task` (questions harder than any trained, e.g. more terms), the
    same metrics are also reported on that split, with the shift described against `train_tasks`.

    `fit_rows` (JSONL files of `prompt`, `completion`, `reward`, e.g. the `self_labelled.jsonl` that trained PCL's
    score) adds the baselines fitted on those labels (`pcl.fitted_baselines`), fit before any evaluation item is
    generated; evaluation questions among the fit rows' prompts count as seen. `self_consistency_k > 0` adds k-sample self-consistency (k sampled answers per item, k times the
    generation cost, which the report states). `fit_note` says in the report where the fit rows come from (default:
    the self-labelled answers PCL's score was trained on).
    """
    if self_consistency_k < 0 or self_consistency_k == 1:
        raise ValueError(f"`self_consistency_k` must be 0 (off) or >= 2 samples, got {self_consistency_k}.")
    if reward != "task":  # a reward that cannot be called fails now, not after the whole set was generated
        check_reward_inputs(resolve_reward_func(reward), REWARD_INPUTS, f"the benchmark's reward ({reward})")
    model, tokenizer, tokens = load_pcl_model(model_dir)
    b = _Bench(model, tokenizer, tokens, format_of(model).normalize, reward, max_new_tokens, batch_size, quiet,
               None, self_consistency_k)  # fmt: skip
    rows = load_fit_rows(fit_rows) if fit_rows else None
    b.fitted, fitted_summary = _fit(b, rows, fit_rows)
    if fit_note and "n_rows" in fitted_summary:
        fitted_summary["origin"] = fit_note
    if rows:  # labelled questions are training data: evaluation items among them count as seen
        train_prompts = [*(train_prompts or []), *(r["prompt"] for r in rows)]
    data, n_duplicates = _eval_set(task, train_prompts)
    items, gens, written, t = _evaluate_split(b, "heldout", task, data, timed=True)
    metrics = {
        "model": model_dir,
        "task": task.describe(),
        "duplicates_dropped": n_duplicates,
        **split_metrics(items, n_boot=n_boot),
        "mean_tokens": float(np.mean([g.num_tokens for g in gens])),
        "stop_reasons": dict(Counter(g.stop for g in gens)),
        "deploy": marker_leak_check(gens),
        "written_parse_rate": float(np.mean([w is not None for w in written])),
        "timing": {
            "generation_s": t["generation_s"],
            "readout_s": t["readout_s"],
            "readout_over_generation": t["readout_s"] / max(t["generation_s"], 1e-9),
            "generation_with_cached_self_score_s": t["generation_with_cached_self_score_s"],
            "cached_readout_overhead": t["generation_with_cached_self_score_s"] / max(t["generation_s"], 1e-9) - 1.0,
        },
        "cached_self_score_max_abs_diff": t["cached_self_score_max_abs_diff"],
        "fitted_baselines": fitted_summary,
        "self_consistency": {"k": self_consistency_k},
    }
    if self_consistency_k:
        metrics["self_consistency"].update(
            {"sampling_s": t["self_consistency_s"],
             "sampling_over_generation": t["self_consistency_s"] / max(t["generation_s"], 1e-9)}
        )  # fmt: skip
    if confidence_model:
        reward_func = b.reward_func(task)
        verbal = _verbalized(confidence_model, data, reward_func, b.normalize, max_new_tokens, batch_size)
        metrics["verbalized_model"] = {
            "model": confidence_model,
            "accuracy": float(np.mean([x or 0.0 for x in verbal["correct"]])),
            "mean_tokens": verbal["mean_tokens"],
            "extra_inference_tokens": verbal["extra_tokens"],
            "parse_rate": float(np.mean([q is not None for q in verbal["confidence"]])),
        }
        # Its own answers and outcomes: reported beside the others, not paired with them
        for row, q, ok in zip(items, verbal["confidence"], verbal["correct"], strict=True):
            row["verbalized"] = {"confidence": q, "correct": ok}
        for subset, keep in (("full", lambda r: True), ("unseen", lambda r: not r["seen"])):
            rows = [r for r in items if keep(r) and r["verbalized"]["correct"] is not None]
            if subset in metrics["sources"] and len(rows) >= 2:
                q_v = [0.5 if r["verbalized"]["confidence"] is None else r["verbalized"]["confidence"] for r in rows]
                c_v = [r["verbalized"]["correct"] for r in rows]
                metrics["sources"][subset]["verbalized"] = calibration_report(q_v, c_v, n_boot=n_boot)
    if shifted_task is not None:
        shifted, n_dup_shifted = _eval_set(shifted_task, train_prompts)
        shifted_items, _, _, _ = _evaluate_split(b, "shifted", shifted_task, shifted, timed=False)
        items += shifted_items
        metrics["shifted"] = {
            "task": shifted_task.describe(),
            "shift": _describe_shift(shifted_task, train_tasks),
            "duplicates_dropped": n_dup_shifted,
            **split_metrics(shifted_items, n_boot=n_boot),
        }

    os.makedirs(output_dir, exist_ok=True)
    write_items(items, os.path.join(output_dir, "items.jsonl"))
    scored = [r for r in items if r["split"] == "heldout" and r["correct"] is not None]
    if scored:
        c = np.array([r["correct"] for r in scored])
        shown = plotted_sources(list(scored[0]["confidence"]), fitted_summary.get("best_on_validation"))
        full = {SOURCE_NAMES.get(k, k): (np.array([r["confidence"][k] for r in scored]), c) for k in shown}
        reliability_diagram(*full[SOURCE_NAMES["pcl_expected"]], os.path.join(output_dir, "reliability_pcl.png"),
                            title="PCL self-score (expected), deploy-mode answers")  # fmt: skip
        reliability_grid(full, os.path.join(output_dir, "reliability_all.png"))
        risk_coverage_plot(full, os.path.join(output_dir, "risk_coverage.png"), title="Selective prediction")
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(render_report(metrics))
    if not quiet:
        print(summary(metrics))
    return metrics
