# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Input checks shared by the trainers: dataset rows and reward values that would otherwise train silently wrong."""

import math
from collections.abc import Callable

from trl.trainer.utils import get_callable_name, is_async_callable


def row_texts(value, field: str, idx: int, name: str) -> list[str]:
    """The texts of a prompt/completion: a non-empty string, or a non-empty list of messages with string contents."""
    where = f"Row {idx} of the {name} dataset"
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{where} has an empty {field}.")
        return [value]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        contents = [m.get("content") for m in value]
        if all(isinstance(c, str) for c in contents):
            return contents
    raise ValueError(
        f"{where}: {field} must be a non-empty string or a list of chat messages "
        f"({{'role': ..., 'content': str}}), got {type(value).__name__} {str(value)[:60]!r}."
    )


def check_no_marker(texts: list[str], marker: str, idx: int, name: str) -> None:
    if any(marker in text for text in texts):
        raise ValueError(
            f"Row {idx} of the {name} dataset already contains the marker {marker!r}; it would be mistaken for a "
            "segment. Choose another `self_assessment_marker` or clean the data."
        )


def _check_rewards(func: Callable, rewards) -> None:
    # What TRL accepts (anything `float()` converts: bools, 0-dim tensors, numpy scalars) passes; strings, lists and
    # infinities do not, since they cannot become a score target
    for i, r in enumerate(rewards):
        if r is None:
            continue
        try:
            value = None if isinstance(r, (str, bytes)) else float(r)
        except (TypeError, ValueError):
            value = None
        if value is None or math.isinf(value):
            raise ValueError(
                f"Reward function {get_callable_name(func)!r} returned {r!r} for sample {i}: rewards must be finite "
                "numbers, or None for 'not applicable'."
            )


def checked_reward_func(func: Callable) -> Callable:
    """Wrap a reward function so a non-numeric reward names the function and the value (TRL's own error does not).

    The wrapper keeps what TRL reads from a reward function: its name (`rewards/<name>` in the logs, a callable
    instance's class name included) and whether calling it returns a coroutine (async functions and instances with an
    async `__call__` stay async). Reward models (`nn.Module`) and non-callables (model names) are returned as they are.
    """
    if not callable(func) or hasattr(func, "forward"):
        return func
    if is_async_callable(func):

        async def wrapper(*args, **kwargs):
            rewards = await func(*args, **kwargs)
            _check_rewards(func, rewards)
            return rewards

    else:

        def wrapper(*args, **kwargs):
            rewards = func(*args, **kwargs)
            _check_rewards(func, rewards)
            return rewards

    wrapper.__name__ = wrapper.__qualname__ = get_callable_name(func)
    wrapper.__doc__ = getattr(func, "__doc__", None)
    wrapper.__wrapped__ = func
    return wrapper


def prompt_strings(prompt) -> list[str]:
    """The texts of a GRPO prompt a marker could hide in: the prompt itself if a string, each message's string
    `content`, and the `text` parts of multimodal content lists. Anything else (`content: None` on tool-call messages,
    images) holds no text; the prompt's shape is TRL's to judge."""
    if isinstance(prompt, str):
        return [prompt]
    texts = []
    for message in prompt if isinstance(prompt, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return texts


def check_prompts(dataset, marker: str, name: str, environment: bool = False) -> None:
    """GRPO datasets: no prompt may contain the marker (it would be read as a segment). Only the marker is looked for.

    A dataset without a `prompt` column is refused unless an `environment_factory` writes the prompts (TRL then reads
    none from the dataset).
    """
    if dataset is None or getattr(dataset, "column_names", None) is None:
        return
    if "prompt" not in dataset.column_names:
        if environment:
            return
        raise ValueError(f"The {name} dataset has no 'prompt' column (columns: {dataset.column_names}).")
    for idx, prompt in enumerate(dataset["prompt"]):
        check_no_marker(prompt_strings(prompt), marker, idx, name)
