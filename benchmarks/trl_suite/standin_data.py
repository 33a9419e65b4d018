# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Local stand-ins for the Hub datasets TRL's trainer tests load: same repo ids, configs, splits and columns.

`trl-internal-testing/zen` is built from the Zen of Python (the standard library's `this` module) in every dataset
type TRL knows (language modeling, prompt-only, prompt-completion, preference, unpaired preference, stepwise
supervision; standard and conversational), split 90/10 into train/test without shuffling as on the Hub.
`trl-internal-testing/toolcall` holds tool-calling conversations with a JSON `tools` column. Each split is one
parquet file; the test plugin redirects `load_dataset` for these ids to them.
"""

import json
from pathlib import Path

from datasets import Dataset
from transformers.utils import get_json_schema

from .standins import ZEN_LINES


def _split_line(line: str) -> tuple[str, str]:
    """Split an aphorism into a prompt (first half of its words) and a completion (the rest, with its space)."""
    words = line.split(" ")
    cut = max(1, len(words) // 2)
    return " ".join(words[:cut]), " " + " ".join(words[cut:])


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def zen_configs() -> dict[str, dict[str, list]]:
    """Every config of `trl-internal-testing/zen` as column -> values (before the train/test split)."""
    prompts, completions = zip(*(_split_line(line) for line in ZEN_LINES), strict=True)
    prompts, completions = list(prompts), list(completions)
    rejected = completions[1:] + completions[:1]  # another aphorism's ending: a plausible but wrong answer
    labels = [i % 3 != 1 for i in range(len(prompts))]
    questions = [f"Complete: {p}" for p in prompts]
    answers = [c.strip() for c in completions]
    wrong = answers[1:] + answers[:1]
    steps = [[c.strip()[: len(c) // 2], c.strip()[len(c) // 2 :]] for c in completions]
    return {
        "standard_language_modeling": {"text": list(ZEN_LINES)},
        "standard_prompt_only": {"prompt": prompts},
        "standard_prompt_completion": {"prompt": prompts, "completion": completions},
        "standard_preference": {"prompt": prompts, "chosen": completions, "rejected": rejected},
        "standard_implicit_prompt_preference": {
            "chosen": [p + c for p, c in zip(prompts, completions, strict=True)],
            "rejected": [p + r for p, r in zip(prompts, rejected, strict=True)],
        },
        "standard_unpaired_preference": {
            "prompt": prompts,
            "completion": [c if ok else r for c, r, ok in zip(completions, rejected, labels, strict=True)],
            "label": labels,
        },
        "standard_stepwise_supervision": {
            "prompt": prompts,
            "completions": steps,
            "labels": [[True, ok] for ok in labels],
        },
        "conversational_language_modeling": {
            "messages": [_user(q) + _assistant(a) for q, a in zip(questions, answers, strict=True)]
        },
        "conversational_prompt_only": {"prompt": [_user(q) for q in questions]},
        "conversational_prompt_completion": {
            "prompt": [_user(q) for q in questions],
            "completion": [_assistant(a) for a in answers],
        },
        "conversational_preference": {
            "prompt": [_user(q) for q in questions],
            "chosen": [_assistant(a) for a in answers],
            "rejected": [_assistant(w) for w in wrong],
        },
        "conversational_implicit_prompt_preference": {
            "chosen": [_user(q) + _assistant(a) for q, a in zip(questions, answers, strict=True)],
            "rejected": [_user(q) + _assistant(w) for q, w in zip(questions, wrong, strict=True)],
        },
        "conversational_unpaired_preference": {
            "prompt": [_user(q) for q in questions],
            "completion": [_assistant(a if ok else w) for a, w, ok in zip(answers, wrong, labels, strict=True)],
            "label": labels,
        },
    }


def _start_timer(duration: int) -> int:
    """
    Starts a timer.

    Args:
        duration: Duration in seconds.
    """
    return duration


def _get_weather(city: str, unit: str) -> str:
    """
    Returns the current weather in a city.

    Args:
        city: The city.
        unit: The temperature unit, "celsius" or "fahrenheit".
    """
    return "sunny"


def _control_light(room: str, state: str) -> dict:
    """
    Switches the light of a room.

    Args:
        room: The room.
        state: "on" or "off".
    """
    return {"state": state}


def toolcall_configs() -> dict[str, dict[str, list]]:
    """`trl-internal-testing/toolcall`'s `language_modeling` config: tool-call conversations and JSON `tools`."""
    calls = [
        ("Set a timer for 10 minutes.", _start_timer, {"duration": 600}, "600", "Timer set for 10 minutes."),
        ("Weather in Paris, in celsius?", _get_weather, {"city": "Paris", "unit": "celsius"}, "sunny", "Sunny."),
        ("Turn on the kitchen light.", _control_light, {"room": "kitchen", "state": "on"}, "on", "Done."),
        ("Set a 30 second timer.", _start_timer, {"duration": 30}, "30", "Timer set for 30 seconds."),
        ("Weather in Oslo in fahrenheit?", _get_weather, {"city": "Oslo", "unit": "fahrenheit"}, "snow", "Snow."),
        ("Switch off the bedroom light.", _control_light, {"room": "bedroom", "state": "off"}, "off", "Light off."),
        ("Timer for one minute please.", _start_timer, {"duration": 60}, "60", "One minute timer started."),
        ("Is it raining in Lima?", _get_weather, {"city": "Lima", "unit": "celsius"}, "dry", "No, it is dry."),
        ("Lights on in the hall.", _control_light, {"room": "hall", "state": "on"}, "on", "Hall light on."),
        ("Weather in Rome (celsius)?", _get_weather, {"city": "Rome", "unit": "celsius"}, "warm", "Warm."),
    ]
    all_tools = [_start_timer, _get_weather, _control_light]
    messages, tools = [], []
    for i, (question, func, args, result, answer) in enumerate(calls):
        call = {"type": "function", "function": {"name": func.__name__, "arguments": json.dumps(args)}}
        messages.append(
            [
                {"role": "user", "content": question},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": func.__name__, "content": result},
                {"role": "assistant", "content": answer},
            ]
        )
        offered = [func] + [t for t in all_tools if t is not func][: i % 3]
        tools.append(json.dumps([get_json_schema(t) for t in offered]))
    return {"language_modeling": {"messages": messages, "tools": tools}}


DATASETS = {"trl-internal-testing/zen": zen_configs, "trl-internal-testing/toolcall": toolcall_configs}


def build_all(data_dir: Path) -> dict[str, dict[str, dict[str, str]]]:
    """Write every config's train/test splits as parquet; return repo id -> config -> split -> file."""
    index = {}
    for repo_id, make in DATASETS.items():
        index[repo_id] = {}
        for config, columns in make().items():
            splits = Dataset.from_dict(columns).train_test_split(test_size=0.1, shuffle=False)
            folder = data_dir / repo_id.replace("/", "--") / config
            folder.mkdir(parents=True, exist_ok=True)
            index[repo_id][config] = {}
            for split, dataset in splits.items():
                path = folder / f"{split}.parquet"
                dataset.to_parquet(str(path))
                index[repo_id][config][split] = str(path)
    (data_dir / "index.json").write_text(json.dumps(index, indent=1))
    return index
