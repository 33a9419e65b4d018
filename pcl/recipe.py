# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Multi-stage recipes: `pcl train RECIPE.yaml` runs SFT and GRPO stages, then the calibration benchmark.

A recipe is a YAML mapping:

```yaml
output_dir: outputs/quickstart
model: {tiny: {hidden_size: 128, num_layers: 4}}   # or {name_or_path: Qwen/Qwen2.5-1.5B-Instruct}
<any PCLSFTConfig / PCLGRPOConfig field>: value      # shared by every stage
stages:
  sft:  {trainer: sft,  task: {name: chain_sum, size: 20000, seed: 1}, args: {learning_rate: 3.0e-3}}
  grpo: {trainer: grpo, task: {name: chain_sum, size: 4000, seed: 1000000}, reward: task, args: {beta: 0.0}}
calibrate:
  task: {name: chain_sum, size: 1000, seed: 2000000}
  shifted_task: {name: chain_sum, size: 500, seed: 3000000, config: {min_terms: 7, max_terms: 8}}  # optional, harder
  self_consistency_k: 8  # optional: k-sample self-consistency as a baseline (k times the generation)
  fit_task: {name: chain_sum, size: 4000, seed: 5000000}  # optional: fit the baselines on the evaluated model's answers
  after_stages: [sft, grpo]  # optional: benchmark each of these stages (default: the last), side by side
overlap_tolerance: 0.01  # optional (default 0.01): share of a set's distinct prompts that may repeat in another
```

A task is a reasoning-gym generator (`name`, `size`, `seed`, `config`), a `.jsonl` file (`name: data.jsonl`), or a
dataset `datasets.load_dataset` reads, named with TRL's ScriptArguments keys (see `pcl.data_sources`):
`{dataset_name: openai/gsm8k, dataset_config: main, dataset_train_split: "train[:2000]", prompt_column: question,
answer_column: answer, answer_extractor: gsm8k}`; held-out sets name `dataset_test_split` instead.

Each stage's config is parsed by TRL's `TrlParser`, so every TRL/transformers option is valid as a key, and each
stage starts from the previous stage's output directory. Command-line flags override the recipe: `--key value` sets a
trainer option for every stage that has it, `--a.b.c value` sets a nested recipe key (e.g.
`--stages.sft.args.max_steps 10` or `--calibrate.task.size 200`); `--stages.NAME null` drops a stage and
`--stages.NAME "{trainer: grpo, task: {...}}"` adds one.

An SFT stage with `self_labelled: {task: ..., max_new_tokens: ...}` adds the current model's own greedy answers on
that task, scored by the stage's reward, as rows that train the score only; it saves them as `self_labelled.jsonl` in
its output directory (a resumed run reads them back instead of generating again), and the benchmark fits its baselines
on those same labelled answers (`pcl.fitted_baselines`).

Every dataset the recipe builds (each stage's task, each self-labelled set, the calibration sets) must be disjoint from
the others: `load_recipe` refuses reasoning-gym sets whose index ranges `[seed, seed + size)` intersect, and
`run_recipe` also compares their prompts before training (see `pcl.splits`).
"""

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml
from trl import TrlParser

from .grpo_config import PCLGRPOConfig
from .rewards import GRPO_REWARD_INPUTS, REWARD_INPUTS, check_reward_inputs
from .self_labelling import self_labelled_path
from .sft_config import PCLSFTConfig
from .splits import DEFAULT_TOLERANCE, check_disjoint
from .stage_training import DONE_FILE as DONE_FILE  # a completed stage's file, importable from here as before
from .stage_training import run_stage
from .tasks import TaskSpec, load_task_cached, resolve_reward_func


logger = logging.getLogger(__name__)

TRAINERS = {"sft": PCLSFTConfig, "grpo": PCLGRPOConfig}
RECIPE_KEYS = {"model", "stages", "calibrate", "output_dir", "overlap_tolerance"}
STAGE_KEYS = {"trainer", "task", "reward", "args", "self_labelled"}


@dataclass
class Stage:
    name: str
    trainer: str
    task: TaskSpec
    args: PCLSFTConfig | PCLGRPOConfig
    reward: list[str] = field(default_factory=lambda: ["task"])
    # SFT only: add the current model's own greedy answers on this task, scored by the reward, as assessment-only rows
    self_labelled: dict | None = None


@contextmanager
def _plain_loading():
    """Load models for inference only (self-labelling, the benchmark) unpartitioned, even inside a ZeRO-3 launch.

    Under ZeRO-3, transformers partitions every `from_pretrained` while the trainer's DeepSpeed config is registered;
    a model used outside the engine would then have empty weights.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def _set_nested(recipe: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = recipe
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"Cannot set `--{dotted}`: `{key}` is not a mapping in the recipe.")
    node[keys[-1]] = value


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Separate trainer flags (`--key value`, for TrlParser) from nested recipe overrides (`--a.b value`)."""
    flags, nested, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"Unexpected argument {arg!r}: options are `--key value` or `--a.b.c value`.")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ValueError(f"Option `{arg}` needs a value.")
            value, i = argv[i + 1], i + 1
        if "." in key or key in RECIPE_KEYS:  # recipe keys (`--calibrate null` drops it), not trainer options
            nested[key] = yaml.safe_load(value)
        else:
            flags += [f"--{key}", value]
        i += 1
    return flags, nested


def load_recipe(path: str, argv: list[str] | None = None) -> tuple[dict, list[Stage]]:
    """Read a recipe, apply command-line overrides, and build each stage's validated config."""
    with open(path) as f:
        recipe = yaml.safe_load(f)
    if not isinstance(recipe, dict) or "stages" not in recipe:
        raise ValueError(f"Recipe {path!r} must be a YAML mapping with a `stages` section.")
    flags, nested = split_overrides(list(argv or []))
    for key, value in nested.items():
        _set_nested(recipe, key, value)
    output_dir = recipe.get("output_dir", "outputs/" + os.path.splitext(os.path.basename(path))[0])
    recipe["output_dir"] = output_dir
    shared = {k: v for k, v in recipe.items() if k not in RECIPE_KEYS}

    stages, used_flags = [], set()
    for name, spec in recipe["stages"].items():
        if spec is None:  # `--stages.NAME null` drops a stage
            continue
        unknown = set(spec) - STAGE_KEYS
        if unknown:
            raise ValueError(f"Stage {name!r} has unknown keys {sorted(unknown)}; valid keys: {sorted(STAGE_KEYS)}.")
        kind = spec.get("trainer")
        if kind not in TRAINERS:
            raise ValueError(f"Stage {name!r}: `trainer` must be one of {sorted(TRAINERS)}, got {kind!r}.")
        parser = TrlParser((TRAINERS[kind],))
        defaults = {**shared, **(spec.get("args") or {}), "output_dir": os.path.join(output_dir, name)}
        unknown = parser.set_defaults_with_config(**defaults)
        if unknown:
            raise ValueError(f"Stage {name!r}: unknown {TRAINERS[kind].__name__} options {unknown[::2]}.")
        args, remaining = parser.parse_args_into_dataclasses(args=flags, return_remaining_strings=True)
        used_flags |= {f for f in flags[::2] if f not in remaining}
        if "task" not in spec:
            raise ValueError(f"Stage {name!r} needs a `task` (e.g. {{name: chain_sum, size: 1000, seed: 1}}).")
        reward = spec.get("reward", "task")
        labelled = spec.get("self_labelled")
        if labelled is not None and kind != "sft":
            raise ValueError(f"Stage {name!r}: `self_labelled` applies to SFT stages (GRPO labels its own rollouts).")
        stages.append(
            Stage(
                name, kind, TaskSpec.from_dict(spec["task"]), args, reward if isinstance(reward, list) else [reward],
                labelled,
            )
        )  # fmt: skip
    unused = [f for f in flags[::2] if f not in used_flags]
    if unused:
        raise ValueError(f"Unknown options {unused}: not a field of any stage's config.")
    if not stages:
        raise ValueError(f"Recipe {path!r} has no stages.")
    for key, spec in recipe_datasets(recipe, stages, training_only=True).items():
        if spec.dataset_test_split is not None:  # the held-out split is for `calibrate`; training on it leaks
            raise ValueError(
                f"`{key}` trains on a test split ({spec.dataset_test_split!r}): use `dataset_train_split`."
            )
    check_disjoint(
        recipe_datasets(recipe, stages), recipe.get("overlap_tolerance", DEFAULT_TOLERANCE)
    )  # index ranges: cheap
    _check_rewards(recipe, stages)
    if recipe.get("calibrate"):
        from .stage_calibration import check_calibrate

        check_calibrate(recipe["calibrate"], [s.name for s in stages])  # refused now, not after the training
    return recipe, stages


def _check_rewards(recipe: dict, stages: list[Stage]) -> None:
    """Resolve every reward the recipe calls and check it gets the arguments it needs, before anything is trained (an
    SFT stage calls its reward only to score self-labelled answers)."""
    named = [(f"stages.{s.name}.reward", r, GRPO_REWARD_INPUTS if s.trainer == "grpo" else REWARD_INPUTS)
             for s in stages if s.trainer == "grpo" or s.self_labelled is not None for r in s.reward]  # fmt: skip
    if recipe.get("calibrate"):
        named.append(("calibrate.reward", recipe["calibrate"].get("reward", "task"), REWARD_INPUTS))
    for key, ref, available in named:
        if ref != "task":
            check_reward_inputs(resolve_reward_func(ref), available, f"`{key}` ({ref})")


def recipe_datasets(recipe: dict, stages: list[Stage], training_only: bool = False) -> dict[str, TaskSpec]:
    """Every dataset the recipe builds, by its key path in the recipe: training sets first, then evaluation sets.

    Self-labelled sets are training data: their correctness labels train the score.
    """
    sets = {}
    for stage in stages:
        sets[f"stages.{stage.name}.task"] = stage.task
        if stage.self_labelled is not None:
            sets[f"stages.{stage.name}.self_labelled.task"] = TaskSpec.from_dict(stage.self_labelled["task"])
    if not training_only:
        for key in ("task", "shifted_task", "fit_task"):
            if (recipe.get("calibrate") or {}).get(key):
                sets[f"calibrate.{key}"] = TaskSpec.from_dict(recipe["calibrate"][key])
    return sets


def training_prompts(recipe: dict, stages: list[Stage]) -> list:
    """Every prompt a training stage saw, self-labelled ones included (the benchmark marks these as seen)."""
    return [p for spec in recipe_datasets(recipe, stages, training_only=True).values()
            for p in load_task_cached(spec)["prompt"]]  # fmt: skip


def training_tasks(stages: list[Stage]) -> list[TaskSpec]:
    """The tasks the answers were trained on (the self-labelled sets train the score only): a shift is stated
    relative to these."""
    return [s.task for s in stages]


def fit_rows_of(stages: list[Stage]) -> list[str] | None:
    """The saved self-labelled rows of every stage that has them (None when no stage self-labels)."""
    paths = [self_labelled_path(s) for s in stages if s.self_labelled is not None]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:  # e.g. a stage completed by an older version, skipped on resume
        logger.warning(f"No saved self-labelled rows in {missing}: the benchmark fits its baselines without them.")
    return [p for p in paths if p not in missing] or None


def check_recipe_overlap(recipe: dict, stages: list[Stage]) -> list[dict]:
    """Compare the prompts of every pair of the recipe's datasets; raises `OverlapError` beyond the tolerance."""
    sets = recipe_datasets(recipe, stages)
    prompts = {name: load_task_cached(spec)["prompt"] for name, spec in sets.items()}
    return check_disjoint(sets, recipe.get("overlap_tolerance", DEFAULT_TOLERANCE), prompts)


def _initial_model(recipe: dict):
    """The first stage's model and tokenizer: a tiny model built locally, or a name/path for `from_pretrained`."""
    spec = recipe.get("model") or {}
    if "tiny" in spec:
        from .tiny import build_char_tokenizer, build_tiny_model

        tokenizer = build_char_tokenizer()
        return build_tiny_model(tokenizer, **(spec["tiny"] or {})), tokenizer
    if "name_or_path" in spec:
        from transformers import AutoTokenizer

        return spec["name_or_path"], AutoTokenizer.from_pretrained(spec["name_or_path"])
    raise ValueError("The recipe's `model` must be {tiny: {...}} or {name_or_path: ...}.")


def run_recipe(path: str, argv: list[str] | None = None) -> dict:
    """`pcl train`: run every stage in order, then the calibration benchmark if the recipe has one."""
    recipe, stages = load_recipe(path, argv)
    for pair in check_recipe_overlap(recipe, stages):  # before any training: refuse sets that share questions
        if pair.get("shared_prompts"):
            logger.warning(f"`{pair['a']}` and `{pair['b']}` share {pair['shared_prompts']} of "
                           f"{pair['smaller_distinct']} distinct prompts (within overlap_tolerance).")  # fmt: skip
    resume = any(s.args.resume_from_checkpoint for s in stages)
    model, tokenizer = _initial_model(recipe)
    for stage in stages:
        out = run_stage(stage, model, tokenizer, resume=resume)
        model = out  # the next stage starts from this one's checkpoint
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(out)
    result = {"model": model, "output_dir": recipe["output_dir"]}
    if recipe.get("calibrate"):
        from accelerate import PartialState

        if PartialState().is_main_process:
            from .evaluation import run_calibration
            from .stage_calibration import run_recipe_calibration

            # From the recipe, not from what the stages loaded: stages skipped on resume loaded nothing. Without a
            # `calibrate.fit_task`, the baselines are fit on the labels PCL-SFT's score was trained on.
            common = {"train_prompts": training_prompts(recipe, stages), "train_tasks": training_tasks(stages),
                      "fit_rows": recipe["calibrate"].get("fit_rows", fit_rows_of(stages))}  # fmt: skip
            with _plain_loading():
                result["calibration"] = run_recipe_calibration(
                    recipe, stages, {s.name: s.args.output_dir for s in stages}, run_calibration, **common
                )
            from .tracking import log_calibration  # the trainers are gone: send the benchmark to their trackers

            cal_dir = os.path.join(recipe["output_dir"], "calibration")
            if recipe["calibrate"].get("after_stages") is not None:  # the last benchmarked stage's own directory
                from .stage_calibration import calibrated_stages

                cal_dir = os.path.join(cal_dir, calibrated_stages(recipe["calibrate"], [s.name for s in stages])[-1])
            trackers = list(dict.fromkeys(t for s in stages for t in s.args.report_to))
            log_calibration(result["calibration"], cal_dir, trackers, recipe["output_dir"])
    return result
