# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The recipe's calibration benchmark, run after each listed stage, with baselines fit on the evaluated model's answers.

A recipe's `calibrate` section may hold, besides `run_calibration`'s own options:

```yaml
calibrate:
  task: {name: chain_sum, size: 2000, seed: 1000000}     # the held-out test split
  fit_task: {name: chain_sum, size: 4000, seed: 3000000}  # labelled questions for the fitted baselines
  after_stages: [sft, grpo]                               # benchmark each of these stages' models
```

* `after_stages` (default: the last stage) benchmarks the model saved by each listed stage on the same splits, into
  `calibration/<stage>/` (without it, the last stage's benchmark goes to `calibration/` as before), and writes
  `calibration/stages.md` / `stages.json`: accuracy and every source's calibration per stage side by side, and a paired
  bootstrap of each stage's accuracy against the first's on the same items.
* `fit_task`: the fitted baselines (Platt, isotonic, temperature, probe, difficulty) are fit on the EVALUATED model's
  own greedy answers to these questions, scored by the benchmark's reward (`calibrate.reward`, default the task's
  verifier), so a baseline is never handicapped by labels from another model or another reward; the fit questions
  count as seen. It is one of the recipe's datasets, so `pcl train` refuses it when it overlaps any other set.
  Without it, the baselines are fit on the recipe's self-labelled rows (the labels PCL-SFT's score saw), if any.

Every item's "seen" flag comes from the whole recipe's training prompts, so each stage's unseen subset holds the same
questions and the stages compare item by item.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .calibration import bootstrap_ci
from .items import load_items
from .report import SOURCE_NAMES
from .tasks import TaskSpec, load_task_cached


__all__ = [
    "RECIPE_ONLY_KEYS",
    "answer_fit_task",
    "calibrated_stages",
    "check_calibrate",
    "compare_stages",
    "render_stages",
    "run_recipe_calibration",
]

# `calibrate` keys the recipe runner reads itself; the rest go to `run_calibration`
RECIPE_ONLY_KEYS = ("after_stages", "fit_task")
# `run_calibration` options the recipe runner sets itself (a recipe's own value would replace them)
RUNNER_KEYS = ("train_prompts", "train_tasks", "fit_note")
FIT_ROWS = "fit_rows.jsonl"
METRICS = ("ece_10", "brier", "auroc")


def calibrated_stages(calibrate: dict, stage_names: Sequence[str]) -> list[str]:
    """The stages whose models the benchmark evaluates, in recipe order; refuses names that are not stages."""
    wanted = calibrate.get("after_stages")
    if wanted is None:
        return [stage_names[-1]]
    if isinstance(wanted, str):
        wanted = [wanted]
    unknown = [s for s in wanted if s not in stage_names]
    if unknown or not wanted:
        raise ValueError(
            f"`calibrate.after_stages` names {unknown or 'no stage'}, but the recipe's stages are {list(stage_names)}: "
            "list stage names (e.g. `after_stages: [sft, grpo]`), or drop the key to benchmark the last stage only."
        )
    return [s for s in stage_names if s in wanted]


def check_calibrate(calibrate: dict, stage_names: Sequence[str]) -> None:
    """Refuse a `calibrate` section the benchmark would fail on only after every stage has trained: no `task`, a key
    that is neither the recipe runner's nor a `run_calibration` option (e.g. a misspelt `after_stages`), or stage
    names that are not stages."""
    import inspect

    from .evaluation import run_calibration

    if not isinstance(calibrate, dict) or not calibrate.get("task"):
        raise ValueError(
            "The recipe's `calibrate` section needs a `task` (the held-out test split, e.g. `task: {name: chain_sum, "
            "size: 2000, seed: 1000000}`); drop the section (`--calibrate null`) to skip the benchmark."
        )
    params = inspect.signature(run_calibration).parameters
    allowed = {"task", *RECIPE_ONLY_KEYS, *(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY)}
    allowed -= set(RUNNER_KEYS)
    any_key = any(p.kind is p.VAR_KEYWORD for p in params.values())  # e.g. a wrapper that forwards every option
    unknown = [] if any_key else sorted(set(calibrate) - allowed)
    if unknown:
        raise ValueError(
            f"Unknown `calibrate` keys {unknown}: the section takes {sorted(allowed)} (`{RUNNER_KEYS[0]}` and "
            f"`{RUNNER_KEYS[1]}` come from the stages, `{RUNNER_KEYS[2]}` from `fit_task`)."
        )
    calibrated_stages(calibrate, stage_names)


def answer_fit_task(
    model_dir: str, fit_task: dict, max_new_tokens: int, out_dir: str, reward: str = "task"
) -> tuple[str, str]:
    """The evaluated model's greedy answers to the fit questions (`calibrate.fit_task`), scored by the benchmark's
    reward (`calibrate.reward`, default the task's verifier: the labels the baselines are fit on must be the ones they
    are evaluated against) and saved as `fit_rows.jsonl` in `out_dir`; returns (path, where the rows come from, for
    the report)."""
    from .fitted_baselines import write_fit_rows
    from .marker import format_of, load_pcl_model
    from .self_labelling import self_labelled_rows

    model, tokenizer, _ = load_pcl_model(model_dir)
    task = TaskSpec.from_dict(fit_task)
    spec = {"task": fit_task, "max_new_tokens": max_new_tokens}
    # The benchmark runs on the main process only: no collectives
    rows = self_labelled_rows(
        spec, load_task_cached(task), model, tokenizer, [reward], format_of(model), sharded=False
    )
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, FIT_ROWS)
    write_fit_rows(rows, path)
    note = (
        f"the evaluated model's own greedy answers to `calibrate.fit_task` ({task.describe()}, "
        f"{task.size} questions disjoint from every other set of the recipe), scored by "
        + ("the task's verifier" if reward == "task" else f"the benchmark's reward ({reward})")
    )
    return path, note


def run_recipe_calibration(recipe: dict, stages: list, model_dirs: dict[str, str], run_calibration, **common) -> dict:
    """Benchmark each stage of `calibrated_stages`; returns the last one's metrics, with `stages` (the comparison)
    when more than one stage is benchmarked.

    `common` holds what every stage's benchmark shares (training prompts and tasks, the `fit_rows` fallback);
    `run_calibration` is `pcl.evaluation.run_calibration` (passed in so tests may wrap it).
    """
    spec = dict(recipe["calibrate"])
    names = calibrated_stages(spec, [s.name for s in stages])
    fit_task = spec.pop("fit_task", None)
    spec.pop("after_stages", None)
    task = TaskSpec.from_dict(spec.pop("task"))
    if spec.get("shifted_task"):
        spec["shifted_task"] = TaskSpec.from_dict(spec["shifted_task"])
    max_new_tokens = spec.get("max_new_tokens", 64)
    if fit_task is not None:
        fit_prompts = load_task_cached(TaskSpec.from_dict(fit_task))["prompt"]
    root = os.path.join(recipe["output_dir"], "calibration")
    per_stage = {}
    for name in names:
        out = root if recipe["calibrate"].get("after_stages") is None else os.path.join(root, name)
        kwargs = {**common, **spec}
        if fit_task is not None:
            kwargs["fit_rows"], kwargs["fit_note"] = answer_fit_task(
                model_dirs[name], fit_task, max_new_tokens, out, spec.get("reward", "task")
            )
            # The fit questions count as seen by their own prompts: the fit rows hold chat prompts rendered by the
            # chat template, which do not match the evaluation set's conversations
            kwargs["train_prompts"] = [*(kwargs.get("train_prompts") or []), *fit_prompts]
        per_stage[name] = run_calibration(model_dirs[name], task, out, **kwargs)
    result = per_stage[names[-1]]
    if len(names) > 1:
        comparison = compare_stages({n: os.path.join(root, n) for n in names}, per_stage)
        with open(os.path.join(root, "stages.json"), "w") as f:
            json.dump(comparison, f, indent=2)
        text = render_stages(comparison)
        with open(os.path.join(root, "stages.md"), "w") as f:
            f.write(text)
        print(text)
        result = {**result, "stages": comparison}
    return result


def _paired_accuracy(first: list[dict], other: list[dict], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy difference (other − first) on the items both scored, with a paired bootstrap 95% interval."""
    a = {(r["split"], r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])): r for r in first}
    mine, theirs = [], []
    for r in other:
        key = (r["split"], r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"]))
        if key in a and r["correct"] is not None and a[key]["correct"] is not None:
            mine.append(float(r["correct"]))
            theirs.append(float(a[key]["correct"]))
    if not mine:
        return {"n": 0, "diff": None, "ci": [None, None], "verdict": "n/a"}
    q, c = np.array(mine), np.array(theirs)
    # One shared resample of items for both stages: the interval is the paired difference's
    lo, hi = bootstrap_ci(lambda x, y: float(np.mean(x) - np.mean(y)), q, c, n_boot=n_boot, seed=seed)
    d = q - c
    verdict = "higher" if lo > 0 else "lower" if hi < 0 else "tie"
    return {"n": int(d.size), "diff": float(d.mean()), "ci": [lo, hi], "verdict": verdict}


def compare_stages(dirs: dict[str, str], metrics: dict[str, dict]) -> dict[str, Any]:
    """Per stage and split subset (held-out unseen, held-out all, shifted): accuracy and each source's ECE-10 / Brier /
    AUROC; and each later stage's accuracy against the first stage's, paired over the same items."""
    names = list(dirs)
    items = {n: load_items(os.path.join(d, "items.jsonl")) for n, d in dirs.items()}
    subsets = {
        "heldout_unseen": lambda r: r["split"] == "heldout" and not r["seen"],
        "heldout_full": lambda r: r["split"] == "heldout",
        "shifted": lambda r: r["split"] == "shifted",
    }
    out: dict[str, Any] = {"stages": names, "subsets": {}}
    for subset, keep in subsets.items():
        table = {}
        for n in names:
            m = metrics[n]
            if subset == "shifted":
                if "shifted" not in m:
                    continue
                acc, sources = m["shifted"]["accuracy"], m["shifted"]["sources"].get("full", {})
            elif subset == "heldout_unseen":
                acc, sources = m["accuracy_unseen"], m["sources"].get("unseen", {})
            else:
                acc, sources = m["accuracy"], m["sources"].get("full", {})
            table[n] = {"accuracy": acc, "sources": {s: {k: r[k] for k in METRICS} for s, r in sources.items()}}
        if not table:
            continue
        paired = {
            n: _paired_accuracy([r for r in items[names[0]] if keep(r)], [r for r in items[n] if keep(r)])
            for n in names[1:]
        }
        out["subsets"][subset] = {"per_stage": table, "accuracy_vs_first": paired}
    return out


SUBSET_TITLES = {
    "heldout_unseen": "Held-out split, unseen items",
    "heldout_full": "Held-out split, all items",
    "shifted": "Shifted split",
}


def render_stages(c: dict[str, Any]) -> str:
    """`stages.md`: per subset, accuracy and each source's ECE-10 / Brier / AUROC after each stage, side by side."""
    names = c["stages"]
    lines = ["# Calibration after each stage", ""]
    for subset, body in c["subsets"].items():
        per = body["per_stage"]
        shown = [n for n in names if n in per]
        lines += [f"## {SUBSET_TITLES[subset]}", ""]
        lines.append("accuracy: " + ", ".join(f"{n} {per[n]['accuracy']:.3f}" for n in shown))
        for n, p in body["accuracy_vs_first"].items():
            if p["diff"] is not None:
                lines.append(
                    f"accuracy {n} − {names[0]} (paired over {p['n']} items): {p['diff']:+.3f} "
                    f"[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}] ({p['verdict']})"
                )
        lines += ["", "| source | " + " | ".join(f"{n} ECE-10 | {n} Brier | {n} AUROC" for n in shown) + " |"]
        lines.append("|---|" + "---|---|---|" * len(shown))
        sources = list(per[shown[-1]]["sources"])
        for s in sources:
            cells = []
            for n in shown:
                r = per[n]["sources"].get(s)
                cells += ["n/a"] * 3 if r is None else [("n/a" if r[k] is None else f"{r[k]:.3f}") for k in METRICS]
            lines.append(f"| {SOURCE_NAMES.get(s, s)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
