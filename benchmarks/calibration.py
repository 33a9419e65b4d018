# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Calibration benchmark of a trained PCL model on a recipe's held-out and shifted splits.

    .venv/bin/python benchmarks/calibration.py outputs/quickstart/assess \
        --recipe recipes/quickstart.yaml --out benchmarks/results/calibration.json

Uses the recipe's `calibrate` task (held out: its seed range is disjoint from every training set's, which the recipe
loader checks) and its `shifted_task` (harder than any trained) when present; marks the questions that occur in any
training set, self-labelled ones included, as seen; fits the baselines of `pcl.fitted_baselines` on the self-labelled
rows the recipe saved (`self_labelled.jsonl` in the stage's directory): the labels PCL's score got. Prints the summary
with the paired verdicts and writes the full metrics as JSON, plus `items.jsonl`, the report and PNGs in the directory
named like `--out` without `.json`. Same code path as `pcl calibrate` and the end of `pcl train`.
"""

import argparse
import json
import os
import sys


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pcl.evaluation import run_calibration, summary  # noqa: E402
from pcl.recipe import fit_rows_of, load_recipe, load_task_cached, training_prompts, training_tasks  # noqa: E402
from pcl.stage_calibration import RECIPE_ONLY_KEYS, answer_fit_task  # noqa: E402
from pcl.tasks import TaskSpec  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--size", type=int, default=None, help="Override the evaluation set size.")
    parser.add_argument("--shifted_size", type=int, default=None, help="Override the shifted split's size.")
    parser.add_argument("--n_boot", type=int, default=1000, help="Bootstrap resamples for intervals and verdicts.")
    parser.add_argument("--fit_rows", action="append", default=None,
                        help="Labelled answers for the fitted baselines (default: the recipe's saved self_labelled.jsonl "
                             "files in its stage directories; 'none' skips them).")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/results/calibration.json")
    parser.epilog = "Recipe overrides go after `--`, e.g. `-- --stages.sft.task.size 100` (as for `pcl train`)."
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1 :]

    # GPU recipes default to bf16, which a CPU-only machine refuses when the stage configs are built
    cpu = [] if "quickstart" in args.recipe else ["--bf16", "false"]
    recipe, stages = load_recipe(args.recipe, cpu + overrides)
    spec = {k: v for k, v in recipe["calibrate"].items() if k not in RECIPE_ONLY_KEYS}
    task = TaskSpec.from_dict(spec.pop("task"))
    if args.size:
        task.size = args.size
    shifted = spec.pop("shifted_task", None)
    if shifted:
        shifted = TaskSpec.from_dict(shifted)
        shifted.size = args.shifted_size or shifted.size
    # The labels PCL's score was trained on, saved by `pcl train` beside each self-labelling stage's checkpoint
    fit_rows = fit_rows_of(stages) if args.fit_rows is None else [p for p in args.fit_rows if p != "none"] or None
    spec.setdefault("fit_rows", fit_rows)
    out_dir = os.path.splitext(args.out)[0]
    train_prompts = training_prompts(recipe, stages)
    if args.fit_rows is None and recipe["calibrate"].get("fit_task"):  # the evaluated model answers the fit questions
        # seen by their own prompts (the fit rows hold chat prompts rendered as text)
        train_prompts += load_task_cached(TaskSpec.from_dict(recipe["calibrate"]["fit_task"]))["prompt"]
        spec["fit_rows"], spec["fit_note"] = answer_fit_task(
            args.model_dir, recipe["calibrate"]["fit_task"], spec.get("max_new_tokens", 64), out_dir,
            spec.get("reward", "task"),
        )  # fmt: skip
    metrics = run_calibration(
        args.model_dir, task, out_dir, train_prompts=train_prompts, train_tasks=training_tasks(stages),
        shifted_task=shifted, quiet=True, **{**spec, "n_boot": args.n_boot},
    )  # fmt: skip
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(metrics, f, indent=2)
    print(summary(metrics))
    print(f"wrote {args.out} and {out_dir}/report.md, {out_dir}/items.jsonl")
    return metrics


if __name__ == "__main__":
    main()
