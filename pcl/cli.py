# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The `pcl` console command: `pcl train RECIPE.yaml [--key value ...]` and `pcl calibrate MODEL_DIR ...`."""

import argparse
import json
import os
import sys


USAGE = """usage: pcl <command> [options]

commands:
  train RECIPE.yaml [--key value ...]   run a recipe's SFT/GRPO stages, then its calibration benchmark
  calibrate MODEL_DIR --task NAME ...   deploy-mode accuracy and self-score calibration of a saved model

`pcl <command> --help` shows each command's options."""


def _calibrate(argv: list[str]) -> dict:
    from .evaluation import run_calibration
    from .tasks import TaskSpec

    parser = argparse.ArgumentParser(prog="pcl calibrate", description="Calibration benchmark of a PCL checkpoint.")
    parser.add_argument("model_dir", help="A directory saved by a PCL trainer.")
    parser.add_argument("--task", required=True,
                        help="reasoning-gym dataset name, a .jsonl of prompt/answer rows, or a JSON TaskSpec, e.g. "
                             '\'{"dataset_name": "openai/gsm8k", "dataset_config": "main", "dataset_test_split": '
                             '"test", "prompt_column": "question", "answer_extractor": "gsm8k"}\' (--size, --seed and '
                             "--task_config then do not apply).")  # fmt: skip
    parser.add_argument("--size", type=int, default=1000, help="Number of evaluation items (reasoning-gym).")
    parser.add_argument("--seed", type=int, default=10**6, help="Seed of the evaluation set (reasoning-gym).")
    parser.add_argument("--task_config", type=json.loads, default={}, help="JSON kwargs for the task generator.")
    parser.add_argument("--reward", default="task",
                        help="'task' (the task's verifier), 'module:function', or as trl grpo --reward_funcs takes it.")  # fmt: skip
    parser.add_argument("--train_task", type=json.loads, action="append", default=[],
                        help="JSON TaskSpec of a training set, to drop seen questions (repeatable).")  # fmt: skip
    parser.add_argument("--output_dir", default=None, help="Where to write metrics.json, report.md and PNGs.")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--confidence_model", default=None,
                        help="Optional RLCR-style model that writes <confidence>q</confidence>, compared side by side.")  # fmt: skip
    parser.add_argument("--shifted_task", type=json.loads, default=None,
                        help="JSON TaskSpec of a split harder than any trained, reported beside the held-out one.")  # fmt: skip
    parser.add_argument("--n_boot", type=int, default=1000, help="Bootstrap resamples for intervals and verdicts.")
    parser.add_argument("--fit_rows", action="append", default=[],
                        help="JSONL of labelled answers (prompt, completion, reward), e.g. a stage's self_labelled.jsonl: "
                             "fits the baselines given the same labels as PCL's score (repeatable).")  # fmt: skip
    parser.add_argument("--self_consistency_k", type=int, default=0,
                        help="Sampled answers per item for the self-consistency baseline (k x the generation; 0: off).")  # fmt: skip
    args = parser.parse_args(argv)
    from .splits import check_disjoint
    from .tasks import load_task

    if args.task.lstrip().startswith("{"):  # a whole TaskSpec, e.g. a Hub dataset's test split
        task = TaskSpec.from_dict(json.loads(args.task))
    else:
        task = TaskSpec(args.task, size=args.size, seed=args.seed, config=args.task_config)
    train_tasks = [TaskSpec.from_dict(spec) for spec in args.train_task]
    shifted = TaskSpec.from_dict(args.shifted_task) if args.shifted_task else None
    # Evaluation sets that share reasoning-gym index ranges with a training set are shifted copies of it: refuse.
    # Prompt repeats are allowed here: they are marked seen and reported apart.
    sets = {f"train_task[{i}]": t for i, t in enumerate(train_tasks)} | {"task": task}
    check_disjoint(sets | ({"shifted_task": shifted} if shifted else {}), tolerance=1.0)
    train_prompts = [p for t in train_tasks for p in load_task(t)["prompt"]]
    output_dir = args.output_dir or os.path.join(args.model_dir, "calibration")
    return run_calibration(
        args.model_dir, task, output_dir, train_prompts=train_prompts or None, reward=args.reward,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, confidence_model=args.confidence_model,
        train_tasks=train_tasks or None, shifted_task=shifted, n_boot=args.n_boot, fit_rows=args.fit_rows or None,
        self_consistency_k=args.self_consistency_k,
    )  # fmt: skip


def _refusing_overlap(command: str, run) -> int:
    """Run a command; datasets that overlap are a one-line error (exit 2), not a traceback."""
    from .splits import OverlapError

    try:
        run()
    except OverlapError as e:
        print(f"pcl {command}: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        if not rest or rest[0].startswith("-"):
            from . import recipe

            print(f"usage: pcl train RECIPE.yaml [--key value ...] [--a.b.c value ...]\n\n{recipe.__doc__}")
            return 0 if rest and rest[0] in ("-h", "--help") else 2
        from .recipe import run_recipe

        return _refusing_overlap("train", lambda: run_recipe(rest[0], rest[1:]))
    if command == "calibrate":
        return _refusing_overlap("calibrate", lambda: _calibrate(rest))
    print(f"pcl: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
