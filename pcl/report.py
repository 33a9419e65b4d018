# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Rendering of the calibration benchmark's metrics: `report.md` and the terminal summary, with the paired verdict
tables (PCL self-score vs each baseline)."""

from typing import Any

from .fitted_baselines import SCALED_SOURCES


__all__ = ["SOURCE_NAMES", "plotted_sources", "render_report", "summary", "verdict_table"]

TOKEN_NAMES = {
    "mean_token_prob": "mean token prob",
    "sequence_prob": "sequence prob",
    "min_token_prob": "min token prob",
}
SCALING_NAMES = {"temperature": "temperature-scaled", "platt": "Platt-scaled", "isotonic": "isotonic"}
SOURCE_NAMES = {
    "pcl_expected": "PCL self-score (expected)",
    "pcl_written": "PCL self-score (written)",
    **{k: v for key, name in TOKEN_NAMES.items() for k, v in ((key, name), (f"{key}_no_stop", f"{name} (no stop)"))},
    "hidden_probe": "hidden-state probe",
    "difficulty": "difficulty only",
    "self_consistency": "self-consistency",
    "verbalized": "verbalised <confidence>",
}
SOURCE_NAMES.update(
    {f"{m}_{s}": f"{label} {SOURCE_NAMES[s]}" for m, label in SCALING_NAMES.items() for s in SCALED_SOURCES}
)
# The pictures show these (and the fitted baseline best on validation); the tables show every source
PLOTTED = ("pcl_expected", "pcl_written", *TOKEN_NAMES, "hidden_probe", "difficulty", "self_consistency")


def plotted_sources(sources: list[str], best_fitted: str | None = None) -> list[str]:
    """The sources drawn in the reliability grid and risk-coverage plot, in table order."""
    return [s for s in sources if s in PLOTTED or s == best_fitted]


SUBSETS = {"full": "all items", "unseen": "unseen items only"}
PAIRED = (("auroc", "AUROC"), ("brier", "Brier"), ("ece_10", "ECE-10"))


def _name(key: str) -> str:
    return SOURCE_NAMES.get(key, key)


def _num(x: float | None, ci: list | None = None, sign: bool = False) -> str:
    if x is None:
        return "n/a"
    text = f"{x:+.3f}" if sign else f"{x:.3f}"
    if not ci or ci[0] is None:
        return text
    return f"{text} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if sign else f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _source_table(sources: dict[str, dict]) -> list[str]:
    lines = [
        "| source | ECE-10 | ECE-15 | ECE-10 (equal mass) | Brier | AUROC | AURC | std | distinct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, m in sources.items():
        lines.append(
            f"| {_name(key)} | {_num(m['ece_10'], m.get('ece_10_ci'))} | {_num(m['ece_15'])} "
            f"| {_num(m['ece_10_quantile'])} | {_num(m['brier'], m.get('brier_ci'))} "
            f"| {_num(m['auroc'], m.get('auroc_ci'))} | {_num(m['aurc'], m.get('aurc_ci'))} "
            f"| {m['collapse']['std']:.3f} | {m['collapse']['n_distinct']} |"
        )
    return lines


def verdict_table(paired: dict[str, dict]) -> list[str]:
    """Markdown rows: for each baseline, PCL minus baseline with its paired 95% interval and the verdict."""
    head = " | ".join(f"{label} (PCL − baseline) [95% CI] | verdict" for _, label in PAIRED)
    lines = [f"| vs baseline | {head} |", "|---" * (1 + 2 * len(PAIRED)) + "|"]
    for baseline, result in paired.items():
        cells = " | ".join(
            f"{_num(result[m]['diff'], result[m]['ci'], sign=True)} | **{result[m]['verdict']}**" for m, _ in PAIRED
        )
        lines.append(f"| {_name(baseline)} | {cells} |")
    return lines


def _difficulty_table(cells: dict[str, dict]) -> list[str]:
    if not cells:
        return []
    sources = list(next(iter(cells.values()))["mean_confidence"])
    conf = " | ".join(f"mean q: {_name(s)}" for s in sources)
    lines = [f"| difficulty | n | seen | accuracy | accuracy (unseen) | {conf} |", "|---" * (5 + len(sources)) + "|"]
    for key, cell in cells.items():
        qs = " | ".join(f"{cell['mean_confidence'][s]:.3f}" for s in sources)
        lines.append(
            f"| {key} | {cell['n']} | {cell['n_seen']} | {cell['accuracy']:.3f} | {_num(cell['accuracy_unseen'])} "
            f"| {qs} |"
        )
    return lines


def _split_sections(m: dict[str, Any], title: str) -> list[str]:
    lines = []
    for subset, sources in m["sources"].items():
        lines += ["", f"## {title}: {SUBSETS[subset]}", "", *_source_table(sources)]
        if subset in m["paired"]:
            lines += ["", f"Paired bootstrap over {SUBSETS[subset]} (one shared resample index per comparison):", ""]
            lines += verdict_table(m["paired"][subset])
    lines += ["", f"## {title}: by difficulty", "", *_difficulty_table(m["by_difficulty"])]
    return lines


def _task(task: dict) -> str:
    """The evaluated set: a reasoning-gym generator's name, size, seed and config, or a dataset's name and split."""
    if "dataset_name" in task:
        return f"`{task['dataset_name']}` config `{task['dataset_config']}` split `{task['split']}`"
    return f"`{task['name']}` size {task['size']} seed {task['seed']} config `{task['config']}`"


def _counts(m: dict[str, Any]) -> str:
    seen_auroc = "n/a" if m["seen_auroc"] is None else f"{m['seen_auroc']:.3f}"
    return (
        f"{m['n']} distinct questions ({m['duplicates_dropped']} duplicates dropped), {m['n_scored']} scored; "
        f"{m['n_seen_in_training']} also in the training data, {m['n_unseen']} unseen; AUROC of `seen` alone as a "
        f"predictor of correctness: {seen_auroc}"
    )


def _accuracy(m: dict[str, Any]) -> str:
    acc = "n/a" if m["accuracy"] is None else f"{m['accuracy']:.3f}"
    return acc + (f" (unseen: {m['accuracy_unseen']:.3f})" if m["accuracy_unseen"] is not None else "")


def _baselines_section(m: dict[str, Any]) -> list[str]:
    lines = ["", "## Fitted baselines", ""]
    f = m.get("fitted_baselines") or {"skipped": "not run"}
    if "n_rows" not in f:
        lines.append(f"Skipped: {f['skipped']}. No baseline fitted on labels is compared.")
    else:
        chosen = "; ".join(
            f"{_name(k)}: " + ", ".join(f"{a} {v}" for a, v in c.items()) for k, c in f["chosen"].items()
        )
        lines += [
            f"Fit on {f['n_rows']} labelled answers (accuracy {f['accuracy']:.3f}) from {', '.join(f['paths'])}: "
            + f.get("origin", "the same self-labelled answers and 0/1 labels PCL's score was trained on")
            + ", with the evaluated model's features over them (token probabilities, hidden state at the answer end) "
            "and the items' prompt features. "
            f"Hyper-parameters are chosen on a validation split of those rows ({f['n_validation']} rows, "
            f"{100 * f['validation_share']:.0f}% of each class, seed {f['seed']}), never on evaluation items; each "
            f"baseline is then refit on all {f['n_rows']} rows. Chosen: {chosen or 'nothing'}. Best fitted baseline "
            f"on validation (Brier): {_name(f['best_on_validation'])}.",
        ]
        if f.get("not_fitted"):
            lines.append("Not fitted: " + "; ".join(f"{_name(k)}: {v}" for k, v in f["not_fitted"].items()) + ".")
        lines += ["", "| fitted baseline | validation Brier |", "|---|---|"]
        lines += [f"| {_name(k)} | {v:.4f} |" for k, v in f["validation_brier"].items()]
    sc = m.get("self_consistency") or {"k": 0}
    lines.append("")
    if sc["k"]:
        lines.append(
            f"Self-consistency: {sc['k']} answers sampled per item (temperature 1); the confidence is the share that "
            f"agrees with the greedy answer, compared as the task's verifier compares answers. Cost: {sc['k']}x the "
            f"generation: sampling took {sc['sampling_s']:.2f} s, {sc['sampling_over_generation']:.1f}x the greedy "
            "generation."
        )
    else:
        lines.append("Self-consistency: off (`self_consistency_k: 0`).")
    return lines


def render_report(m: dict[str, Any]) -> str:
    """`report.md`: setup, per-source tables, paired verdicts, difficulty breakdown, shifted split, pictures."""
    t = m["timing"]
    lines = [
        "# PCL calibration report",
        "",
        f"- model: `{m['model']}`",
        f"- task: {_task(m['task'])}",
        f"- items: {_counts(m)}",
        f"- accuracy (deploy mode, greedy): {_accuracy(m)}",
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
            f"- verbalised-confidence model `{v['model']}` (its own answers, not paired): accuracy "
            f"{v['accuracy']:.3f}, {v['extra_inference_tokens']:.1f} extra inference tokens per answer"
        )
    lines += _baselines_section(m)
    lines += _split_sections(m, "Held-out split")
    if "shifted" in m:
        s = m["shifted"]
        lines += ["", "## Shifted split", "", f"- shift: {s['shift']}", f"- items: {_counts(s)}"]
        lines += [f"- accuracy: {_accuracy(s)}"]
        lines += _split_sections(s, "Shifted split")
    lines += [
        "",
        "95% bootstrap intervals in brackets. ECE bins are left-closed; scores on a bin edge open that bin; AURC and "
        "equal-mass ECE average over tied scores. Verdicts: **win** when the paired interval of PCL − baseline "
        "excludes zero in PCL's favour (above zero for AUROC, below zero for Brier and ECE), **loss** when it "
        "excludes zero the other way, **tie** otherwise. Every number is recomputable from `items.jsonl`.",
        "",
        "![reliability](reliability_pcl.png)",
        "",
        "![reliability, all sources](reliability_all.png)",
        "",
        "![risk-coverage](risk_coverage.png)",
        "",
    ]
    return "\n".join(lines)


def _summary_split(m: dict[str, Any], label: str) -> list[str]:
    lines = [f"{label}: accuracy {_accuracy(m)}; {_counts(m)}"]
    lines.append(f"{'source':<46}{'subset':<8}{'ECE-10':>8}{'Brier':>8}{'AUROC':>8}{'AURC':>8}")
    for subset, sources in m["sources"].items():
        for key, r in sources.items():
            auroc = "n/a" if r["auroc"] is None else f"{r['auroc']:.3f}"
            lines.append(
                f"{_name(key):<46}{subset:<8}{r['ece_10']:>8.3f}{r['brier']:>8.3f}{auroc:>8}{r['aurc']:>8.3f}"
            )
    for subset, paired in m["paired"].items():
        lines.append(f"paired verdicts, PCL self-score vs baseline ({SUBSETS[subset]}; PCL − baseline, 95% CI):")
        for baseline, result in paired.items():
            cells = "  ".join(
                f"{label} {_num(result[k]['diff'], result[k]['ci'], sign=True)} {result[k]['verdict']}"
                for k, label in PAIRED
            )
            lines.append(f"  vs {_name(baseline):<44} {cells}")
    return lines


def summary(m: dict[str, Any]) -> str:
    """A short table for the terminal, with the paired verdicts."""
    lines = [
        f"{m['deploy']['with_tokens_after_marker']} generations wrote past the marker; "
        f"readout {100 * m['timing']['readout_over_generation']:.1f}% of generation time as a separate pass, "
        f"{100 * m['timing']['cached_readout_overhead']:+.1f}% from the generation's KV cache",
        *_summary_split(m, "held-out"),
    ]
    fitted = m.get("fitted_baselines") or {}
    if "n_rows" in fitted:
        lines.append(f"fitted baselines: {fitted['n_rows']} labelled answers, hyper-parameters chosen on "
                     f"{fitted['n_validation']} of them; best on validation: {_name(fitted['best_on_validation'])}")  # fmt: skip
    elif fitted:
        lines.append(f"fitted baselines skipped: {fitted['skipped']}")
    sc = m.get("self_consistency") or {"k": 0}
    if sc["k"]:
        lines.append(f"self-consistency: k={sc['k']} samples per item, {sc['sampling_s']:.2f} s of sampling "
                     f"({sc['sampling_over_generation']:.1f}x the greedy generation)")  # fmt: skip
    if "shifted" in m:
        lines += [f"shift: {m['shifted']['shift']}", *_summary_split(m["shifted"], "shifted")]
    return "\n".join(lines)
