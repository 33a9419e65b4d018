# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The calibration benchmark (`pcl calibrate`): deploy-mode answers, their true rewards, and how well each
confidence source predicts them.

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
from .marker import format_of, load_pcl_model
from .plots import reliability_diagram, reliability_grid, risk_coverage_plot
from .readout import self_scores, token_logprob_confidence, written_scores
from .tasks import TaskSpec, held_out, load_task, make_reward_func, resolve_reward_func, score_completions


SOURCE_NAMES = {
    "pcl_expected": "PCL self-score (expected)",
    "pcl_written": "PCL self-score (written)",
    "mean_token_prob": "mean token prob",
    "sequence_prob": "sequence prob",
    "min_token_prob": "min token prob",
    "verbalized": "verbalised <confidence>",
}
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


def _table(rows: list[tuple[str, dict]]) -> str:
    def fmt(x, ci=None):
        if x is None:
            return "n/a"
        text = f"{x:.3f}"
        return text if not ci or ci[0] is None else f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]"

    lines = [
        "| source | ECE-10 | ECE-15 | ECE-10 (equal mass) | Brier | AUROC | AURC | std | distinct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {fmt(m['ece_10'], m.get('ece_10_ci'))} | {fmt(m['ece_15'])} | {fmt(m['ece_10_quantile'])} "
            f"| {fmt(m['brier'], m.get('brier_ci'))} | {fmt(m['auroc'], m.get('auroc_ci'))} "
            f"| {fmt(m['aurc'], m.get('aurc_ci'))} | {m['collapse']['std']:.3f} | {m['collapse']['n_distinct']} |"
        )
    return "\n".join(lines)


def run_calibration(
    model_dir: str,
    task: TaskSpec,
    output_dir: str,
    *,
    train_prompts: Sequence[str] | None = None,
    reward: str = "task",
    max_new_tokens: int = 64,
    batch_size: int = 64,
    confidence_model: str | None = None,
    n_boot: int = 1000,
    quiet: bool = False,
) -> dict:
    """Run the benchmark and write `metrics.json`, `report.md` and PNGs into `output_dir`; returns the metrics."""
    model, tokenizer, tokens = load_pcl_model(model_dir)
    fmt = format_of(model)
    data = load_task(task)
    n_seen = 0
    if train_prompts is not None:
        data, _, n_seen = held_out(data, train_prompts)
    else:
        data = data.add_column("seen", [False] * len(data))
    reward_func = make_reward_func(task) if reward == "task" else resolve_reward_func(reward)
    normalize = fmt.normalize

    # Warm up on a few prompts, so neither of the two timed generations below pays the first call's start-up
    generate(model, tokenizer, data["prompt"][:8], max_new_tokens=max_new_tokens, tokens=tokens, show_progress=False)
    start = time.perf_counter()
    gens = generate(model, tokenizer, data["prompt"], max_new_tokens=max_new_tokens, batch_size=batch_size,
                    tokens=tokens, show_progress=not quiet)  # fmt: skip
    generation_time = time.perf_counter() - start
    answers = [g.text for g in gens]
    correct = _score(reward_func, data, answers, normalize)

    start = time.perf_counter()
    confidences = {"pcl_expected": self_scores(model, tokenizer, data["prompt"], answers, batch_size=batch_size,
                                               tokens=tokens, show_progress=not quiet)}  # fmt: skip
    readout_time = time.perf_counter() - start
    # The same score read from the generation's own KV cache: the deployment-time cost of introspection
    start = time.perf_counter()
    cached = generate(model, tokenizer, data["prompt"], max_new_tokens=max_new_tokens, batch_size=batch_size,
                      tokens=tokens, show_progress=False, self_score=True)  # fmt: skip
    cached_time = time.perf_counter() - start
    cache_diff = [abs(g.self_score - q) for g, q in zip(cached, confidences["pcl_expected"], strict=True)
                  if g.self_score is not None]  # fmt: skip
    written = written_scores(model, tokenizer, data["prompt"], answers, batch_size=batch_size, tokens=tokens)
    # An unparseable written score carries no information: it counts as the uninformative 0.5
    confidences["pcl_written"] = [0.5 if w is None else w for w in written]
    confidences.update(token_logprob_confidence(model, tokenizer, data["prompt"], answers, batch_size=batch_size,
                                                tokens=tokens))  # fmt: skip

    scored = np.array([c is not None for c in correct])
    c = np.array([0.0 if x is None else x for x in correct])
    unseen = ~np.array(data["seen"])
    subsets = {"full": scored, "unseen": scored & unseen}
    metrics = {
        "model": model_dir,
        "task": {"name": task.name, "size": task.size, "seed": task.seed, "config": task.config},
        "n": len(data),
        "n_scored": int(scored.sum()),
        "n_seen_in_training": int(n_seen),
        "n_unseen": int(unseen.sum()),
        "accuracy": float(c[scored].mean()),
        "accuracy_unseen": float(c[subsets["unseen"]].mean()) if subsets["unseen"].any() else None,
        "mean_tokens": float(np.mean([g.num_tokens for g in gens])),
        "stop_reasons": dict(Counter(g.stop for g in gens)),
        "deploy": marker_leak_check(gens),
        "written_parse_rate": float(np.mean([w is not None for w in written])),
        "timing": {
            "generation_s": generation_time,
            "readout_s": readout_time,
            "readout_over_generation": readout_time / max(generation_time, 1e-9),
            "generation_with_cached_self_score_s": cached_time,
            "cached_readout_overhead": cached_time / max(generation_time, 1e-9) - 1.0,
        },
        "cached_self_score_max_abs_diff": max(cache_diff) if cache_diff else None,
        "sources": {},
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
    for subset, mask in subsets.items():
        if mask.sum() < 2:
            continue
        metrics["sources"][subset] = {
            name: calibration_report(np.asarray(q)[mask], c[mask], n_boot=n_boot) for name, q in confidences.items()
        }
        if confidence_model:
            q_v = np.array([0.5 if q is None else q for q in verbal["confidence"]])
            c_v = np.array([x or 0.0 for x in verbal["correct"]])
            metrics["sources"][subset]["verbalized"] = calibration_report(q_v[mask], c_v[mask], n_boot=n_boot)

    os.makedirs(output_dir, exist_ok=True)
    full = {SOURCE_NAMES[k]: (np.asarray(q)[scored], c[scored]) for k, q in confidences.items()}
    reliability_diagram(*full[SOURCE_NAMES["pcl_expected"]], os.path.join(output_dir, "reliability_pcl.png"),
                        title="PCL self-score (expected), deploy-mode answers")  # fmt: skip
    reliability_grid(full, os.path.join(output_dir, "reliability_all.png"))
    risk_coverage_plot(full, os.path.join(output_dir, "risk_coverage.png"), title="Selective prediction")
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    report = _report(metrics)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(report)
    if not quiet:
        print(summary(metrics))
    return metrics


def _report(m: dict) -> str:
    t = m["timing"]
    lines = [
        "# PCL calibration report",
        "",
        f"- model: `{m['model']}`",
        f"- task: `{m['task']['name']}` size {m['task']['size']} seed {m['task']['seed']} config `{m['task']['config']}`",
        f"- items: {m['n']} ({m['n_seen_in_training']} also in the training data, {m['n_unseen']} unseen)",
        f"- accuracy (deploy mode, greedy): {m['accuracy']:.3f}"
        + (f" (unseen: {m['accuracy_unseen']:.3f})" if m["accuracy_unseen"] is not None else ""),
        f"- mean generated tokens per answer: {m['mean_tokens']:.2f}; stop reasons: {m['stop_reasons']}",
        f"- generations with tokens after the marker: {m['deploy']['with_tokens_after_marker']} "
        f"of {m['deploy']['n']} ({100 * m['deploy']['share']:.1f}%)",
        f"- self-score readout time: {t['readout_s']:.2f} s vs generation {t['generation_s']:.2f} s "
        f"({100 * t['readout_over_generation']:.1f}%) as a separate pass; read from the generation's KV cache "
        f"(`generate(..., self_score=True)`): {100 * t['cached_readout_overhead']:+.1f}% generation time, "
        f"max difference to the separate pass {m['cached_self_score_max_abs_diff']}",
        f"- written score parse rate: {100 * m['written_parse_rate']:.1f}%",
    ]
    if "verbalized_model" in m:
        v = m["verbalized_model"]
        lines.append(
            f"- verbalised-confidence model `{v['model']}`: accuracy {v['accuracy']:.3f}, "
            f"{v['extra_inference_tokens']:.1f} extra inference tokens per answer"
        )
    for subset, sources in m["sources"].items():
        rows = [(SOURCE_NAMES[k], v) for k, v in sources.items()]
        lines += ["", f"## {'All items' if subset == 'full' else 'Unseen items only'}", "", _table(rows)]
    lines += [
        "",
        "95% bootstrap intervals in brackets. ECE bins are left-closed; scores on a bin edge open that bin.",
        "",
        "![reliability](reliability_pcl.png)",
        "",
        "![reliability, all sources](reliability_all.png)",
        "",
        "![risk-coverage](risk_coverage.png)",
        "",
    ]
    return "\n".join(lines)


def summary(m: dict) -> str:
    """A short table for the terminal."""
    lines = [
        f"accuracy {m['accuracy']:.3f} on {m['n']} items ({m['n_unseen']} unseen); "
        f"{m['deploy']['with_tokens_after_marker']} generations wrote past the marker; "
        f"readout {100 * m['timing']['readout_over_generation']:.1f}% of generation time as a separate pass, "
        f"{100 * m['timing']['cached_readout_overhead']:+.1f}% from the generation's KV cache",
        f"{'source':<28}{'subset':<8}{'ECE-10':>8}{'Brier':>8}{'AUROC':>8}{'AURC':>8}",
    ]
    for subset, sources in m["sources"].items():
        for key, r in sources.items():
            auroc = "n/a" if r["auroc"] is None else f"{r['auroc']:.3f}"
            lines.append(
                f"{SOURCE_NAMES[key]:<28}{subset:<8}{r['ece_10']:>8.3f}{r['brier']:>8.3f}{auroc:>8}{r['aurc']:>8.3f}"
            )
    return "\n".join(lines)
