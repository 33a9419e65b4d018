# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Reward functions for recipes that name them (`reward: pcl.rewards:math_verify_accuracy`)."""

from collections.abc import Sequence


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def math_verify_accuracy(completions: Sequence, answer: Sequence[str], **kwargs) -> list[float | None]:
    """1.0 when math-verify finds the gold `answer` in the completion (boxed or last number), else 0.0.

    Gold answers that math-verify cannot parse give `None` (no reward, so no self-assessment target either).
    """
    from math_verify import parse, verify

    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        parsed_gold = parse(str(gold), parsing_timeout=None)
        if not parsed_gold:
            rewards.append(None)
            continue
        # Timeouts use signals, which only work on the main thread; TRL may call rewards from a worker thread
        rewards.append(
            float(verify(parsed_gold, parse(_text(completion), parsing_timeout=None), timeout_seconds=None))
        )
    return rewards
