# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The calibration benchmark (`pcl calibrate`): deploy-mode answers, their true rewards, and how well each
confidence source predicts them, on a deduplicated held-out split and optionally on a shifted (harder) split.

Sources compared on the same generations: the PCL self-score read in one forward pass (expected value over the score
levels), the PCL score the model writes when the marker is not a stop, the free token-probability baselines, and
optionally an RLCR-style model that verbalises `<confidence>q</confidence>` in its output.
"""

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from .calibration import calibration_report
from .inference import generate, marker_leak_check
from .items import difficulty_features, split_metrics, write_items
from .marker import format_of, load_pcl_model
from .plots import reliability_diagram, reliability_grid, risk_coverage_plot
from .readout import self_scores, token_logprob_confidence, written_scores
from .report import SOURCE_NAMES, render_report, summary
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
    """Deploy-mode answers and every single-pass confidence source on them, plus timings when `timed`."""
    timing: dict = {}
    if timed:  # warm up, so neither timed generation below pays the first call's start-up
        generate(model, tokenizer, prompts[:8], max_new_tokens=max_new_tokens, tokens=tokens, show_progress=False)
    start = time.perf_counter()
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, tokens=tokens,
                    show_progress=not quiet)  # fmt: skip
    timing["generation_s"] = time.perf_counter() - start
    answers = [g.text for g in gens]
    start = time.perf_counter()
    confidences = {"pcl_expected": self_scores(model, tokenizer, prompts, answers, batch_size=batch_size,
                                               tokens=tokens, show_progress=not quiet)}  # fmt: skip
    timing["readout_s"] = time.perf_counter() - start
    if timed:  # the same score read from the generation's own KV cache: the deployment-time cost of introspection
        start = time.perf_counter()
        cached = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          tokens=tokens, show_progress=False, self_score=True)  # fmt: skip
        timing["generation_with_cached_self_score_s"] = time.perf_counter() - start
        diff = [abs(g.self_score - q) for g, q in zip(cached, confidences["pcl_expected"], strict=True)
                if g.self_score is not None]  # fmt: skip
        timing["cached_self_score_max_abs_diff"] = max(diff) if diff else None
    written = written_scores(model, tokenizer, prompts, answers, batch_size=batch_size, tokens=tokens)
    # An unparseable written score carries no information: it counts as the uninformative 0.5
    confidences["pcl_written"] = [0.5 if w is None else w for w in written]
    confidences.update(token_logprob_confidence(model, tokenizer, prompts, answers, batch_size=batch_size,
                                                tokens=tokens))  # fmt: skip
    return gens, confidences, written, timing


def _eval_set(task: TaskSpec, train_prompts: Sequence | None) -> tuple:
    """The task's questions, deduplicated, with a `seen` column; returns (data, duplicates dropped)."""
    data, n_duplicates = deduplicate(load_task(task))
    if train_prompts is not None:
        data, _, _ = held_out(data, train_prompts)
    else:
        data = data.add_column("seen", [False] * len(data))
    return data, n_duplicates


def _item_rows(split: str, data, gens, correct, confidences) -> list[dict]:
    return [
        {
            "split": split,
            "prompt": data["prompt"][i],
            "answer": gens[i].text,
            "gold": data["answer"][i],
            "correct": correct[i],
            "seen": bool(data["seen"][i]),
            "difficulty": difficulty_features(data["task"][i], data["entry"][i]),
            "stop": gens[i].stop,
            "confidence": {name: float(q[i]) for name, q in confidences.items()},
        }
        for i in range(len(data))
    ]


def _describe_shift(shifted: TaskSpec, train_tasks: Sequence[TaskSpec] | None) -> str:
    trained = "; ".join(f"{t.name} {t.config or '(default config)'}" for t in train_tasks or []) or "not given"
    return f"{shifted.name} {shifted.config or '(default config)'}, vs trained on: {trained}"


def run_calibration(
    model_dir: str,
    task: TaskSpec,
    output_dir: str,
    *,
    train_prompts: Sequence[str] | None = None,
    train_tasks: Sequence[TaskSpec] | None = None,
    shifted_task: TaskSpec | None = None,
    reward: str = "task",
    max_new_tokens: int = 64,
    batch_size: int = 64,
    confidence_model: str | None = None,
    n_boot: int = 1000,
    quiet: bool = False,
) -> dict:
    """Run the benchmark and write `metrics.json`, `items.jsonl`, `report.md` and PNGs into `output_dir`.

    The evaluation set is deduplicated and each question marked `seen` when it occurs in `train_prompts`; metrics are
    reported on all items and on the unseen ones, broken down by difficulty, with a paired bootstrap of the PCL
    self-score against each baseline. With `shifted_task` (questions harder than any trained, e.g. more terms), the
    same metrics are also reported on that split, with the shift described against `train_tasks`.
    """
    model, tokenizer, tokens = load_pcl_model(model_dir)
    normalize = format_of(model).normalize
    data, n_duplicates = _eval_set(task, train_prompts)
    reward_func = make_reward_func(task) if reward == "task" else resolve_reward_func(reward)
    gens, confidences, written, t = _answers_and_confidences(
        model, tokenizer, tokens, data["prompt"], max_new_tokens, batch_size, quiet, timed=True
    )
    correct = _score(reward_func, data, [g.text for g in gens], normalize)
    items = _item_rows("heldout", data, gens, correct, confidences)
    metrics = {
        "model": model_dir,
        "task": {"name": task.name, "size": task.size, "seed": task.seed, "config": task.config},
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
    }
    if confidence_model:
        verbal = _verbalized(confidence_model, data, reward_func, normalize, max_new_tokens, batch_size)
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
        gens_s, conf_s, _, _ = _answers_and_confidences(
            model, tokenizer, tokens, shifted["prompt"], max_new_tokens, batch_size, quiet, timed=False
        )
        correct_s = _score(make_reward_func(shifted_task) if reward == "task" else reward_func, shifted,
                           [g.text for g in gens_s], normalize)  # fmt: skip
        shifted_items = _item_rows("shifted", shifted, gens_s, correct_s, conf_s)
        items += shifted_items
        metrics["shifted"] = {
            "task": {
                "name": shifted_task.name,
                "size": shifted_task.size,
                "seed": shifted_task.seed,
                "config": shifted_task.config,
            },  # fmt: skip
            "shift": _describe_shift(shifted_task, train_tasks),
            "duplicates_dropped": n_dup_shifted,
            **split_metrics(shifted_items, n_boot=n_boot),
        }

    os.makedirs(output_dir, exist_ok=True)
    write_items(items, os.path.join(output_dir, "items.jsonl"))
    scored = [r for r in items if r["split"] == "heldout" and r["correct"] is not None]
    if scored:
        c = np.array([r["correct"] for r in scored])
        full = {SOURCE_NAMES[k]: (np.array([r["confidence"][k] for r in scored]), c) for k in confidences}
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
