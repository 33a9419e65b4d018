# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Reward functions named by reference, as recipes and `pcl calibrate --reward` name them, and PCL's own.

A reference is what `trl grpo --reward_funcs` takes: one of TRL's reward names (`accuracy_reward`, ...) or a dotted
import path (`my_pkg.rewards.fn`), and also `my_pkg.rewards:fn` (whose function part may be dotted: `mod:Class.fn`).
Like `trl grpo`, the working directory is importable, so a `rewards.py` beside the recipe is found.
"""

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any


__all__ = [
    "GRPO_REWARD_INPUTS",
    "REWARD_INPUTS",
    "check_reward_inputs",
    "import_callable",
    "math_verify_accuracy",
    "resolve_reward_func",
    "trl_reward_funcs",
]

# What a reward gets from PCL: `prompts`, `completions` and a task's columns (`answer`, `task`, `entry`), wherever it
# is called (self-labelling and the benchmark through `pcl.tasks.score_completions`); GRPOTrainer adds these four
REWARD_INPUTS = ("prompts", "completions", "answer", "task", "entry")
GRPO_REWARD_INPUTS = (*REWARD_INPUTS, "completion_ids", "trainer_state", "log_extra", "log_metric")


def trl_reward_funcs() -> dict[str, Callable]:
    """The reward names `trl grpo --reward_funcs` accepts, with the arguments its script gives them."""
    from trl.rewards import (
        accuracy_reward,
        get_soft_overlong_punishment,
        reasoning_accuracy_reward,
        think_format_reward,
    )

    return {
        "accuracy_reward": accuracy_reward,
        "reasoning_accuracy_reward": reasoning_accuracy_reward,
        "think_format_reward": think_format_reward,
        "get_soft_overlong_punishment": get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256),
    }


def import_callable(ref: str) -> Callable:
    """Import ``"module.path:function"`` (``function`` may be dotted) or TRL's ``"module.path.function"``."""
    text = ref if isinstance(ref, str) else ""
    module_name, sep, attr_path = text.partition(":") if ":" in text else text.rpartition(".")
    parts = attr_path.split(".")
    if (
        not sep
        or ":" in attr_path
        or not all(p.isidentifier() for p in module_name.split("."))
        or not all(p.isidentifier() for p in parts)
    ):
        raise ValueError(
            f"reward function reference must look like 'module.path:function' or 'module.path.function' (or be one "
            f"of TRL's reward names {sorted(trl_reward_funcs())}), got {ref!r}"
        )
    if os.getcwd() not in sys.path:  # as `trl grpo` does: modules in the working directory are importable
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ImportError(f"cannot import module {module_name!r} for reward function {ref!r}: {e}") from e
    for part in parts:
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise AttributeError(f"module {module_name!r} has no function {attr_path!r} (from {ref!r})") from e
    if not callable(obj):
        raise TypeError(f"{ref!r} resolves to a {type(obj).__name__}, not a callable")
    return obj


def resolve_reward_func(ref: str) -> Callable:
    """A reward function by reference: one of TRL's reward names, else :func:`import_callable`."""
    registry = trl_reward_funcs() if isinstance(ref, str) and ":" not in ref and "." not in ref else {}
    return registry[ref] if ref in registry else import_callable(ref)


def check_reward_inputs(func: Callable, available: Sequence[str], where: str) -> None:
    """Refuse a reward whose required arguments are not among `available` (what the caller passes it): it would fail
    only when first called, after a stage's generation. TRL's `accuracy_reward` and `reasoning_accuracy_reward` read
    the gold answer from a `solution` column, which PCL's tasks do not have (they name it `answer`)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [p.name for p in params if p.kind in kinds and p.default is p.empty and p.name not in available]
    if missing:
        name = getattr(func, "__name__", type(func).__name__)
        raise ValueError(
            f"{where}: reward {name!r} needs {missing}, which it would not get: a reward gets {list(available)} "
            "(`answer` is the task's gold answer, `entry` its source row as JSON). For math answers use "
            "`pcl.rewards.math_verify_accuracy` (TRL's accuracy_reward on `answer`), or a reward of your own that "
            "reads `answer` or `entry`."
        )


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def math_verify_accuracy(completions: Sequence, answer: Sequence[str], **kwargs) -> list[float | None]:
    """1.0 when math-verify finds the gold `answer` in the completion (boxed or last number), else 0.0.

    Gold answers that math-verify cannot parse give `None` (no reward, so no self-assessment target either). As TRL's
    `accuracy_reward`: parsing and comparing are time-limited on the main thread (an answer such as `9^9^9^9` would
    otherwise be evaluated for ever, stopping training); math-verify's timeouts use signals, which work only there,
    so on another thread they are off.
    """
    import threading

    from math_verify import parse, verify

    main = threading.current_thread() is threading.main_thread()
    parsing_timeout, verify_timeout = (10, 5) if main else (None, None)
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        parsed_gold = parse(str(gold), parsing_timeout=parsing_timeout)
        if not parsed_gold:
            rewards.append(None)
            continue
        parsed = parse(_text(completion), parsing_timeout=parsing_timeout)
        rewards.append(float(verify(parsed_gold, parsed, timeout_seconds=verify_timeout)))
    return rewards
