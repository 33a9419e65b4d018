# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Calibration benchmark of a trained PCL model on a recipe's held-out split.

    .venv/bin/python benchmarks/calibration.py outputs/quickstart/assess \
        --recipe recipes/quickstart.yaml --out benchmarks/results/calibration.json

Uses the recipe's `calibrate` task (held out: its seed is far from the training seeds) and drops the questions that
occur in any of the recipe's training tasks; prints the summary table and writes the full metrics as JSON (plus the
report and PNGs next to it). Same code path as `pcl calibrate` and the end of `pcl train`.
"""

import argparse
import json
import os
import sys


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pcl.evaluation import run_calibration, summary  # noqa: E402
from pcl.recipe import load_recipe  # noqa: E402
from pcl.tasks import TaskSpec, load_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--size", type=int, default=None, help="Override the evaluation set size.")
    parser.add_argument("--out", default="benchmarks/results/calibration.json")
    args = parser.parse_args()

    recipe, stages = load_recipe(args.recipe, ["--bf16", "false"] if "quickstart" not in args.recipe else [])
    spec = dict(recipe["calibrate"])
    task = TaskSpec.from_dict(spec.pop("task"))
    if args.size:
        task.size = args.size
    train_tasks = [s.task for s in stages] + [
        TaskSpec.from_dict(s.self_labelled["task"]) for s in stages if s.self_labelled
    ]
    train_prompts = [p for t in train_tasks for p in load_task(t)["prompt"]]
    out_dir = os.path.splitext(args.out)[0]
    metrics = run_calibration(args.model_dir, task, out_dir, train_prompts=train_prompts, quiet=True, **spec)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(metrics, f, indent=2)
    print(summary(metrics))
    print(f"wrote {args.out} and {out_dir}/report.md")


if __name__ == "__main__":
    main()
