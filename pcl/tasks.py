# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Training/evaluation tasks and their reward functions, looked up by name.

A task is a reasoning-gym dataset (``"chain_sum"``, ``"composite"``, ...; :mod:`pcl.reasoning_gym_source`), a
``.jsonl`` file of ``{"prompt": ..., "answer": ...}`` rows, or a Hub / local dataset read with
``datasets.load_dataset`` (:mod:`pcl.data_sources`). :func:`load_task` turns a :class:`TaskSpec` into a
``datasets.Dataset`` with the columns ``prompt``, ``answer``, ``task`` and ``entry``;
:func:`make_reward_func` returns a TRL reward function that re-runs the task's verifier on each completion,
using the ``entry`` column that TRL passes through as a keyword argument.

reasoning-gym derives item ``idx`` from ``random.Random(seed + idx)``, so datasets whose seeds are close are
shifted copies of each other. Keep train and eval seeds at least ``10**6`` apart and use :func:`held_out` to
drop the few eval prompts that still occur in the training set.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from .data_sources import COLUMNS as _COLUMNS
from .data_sources import (
    DATASET_KEYS,
    check_dataset_spec,
    check_generator_keys,
    decode_entry,
    encode_entry,
    load_dataset_rows,
    load_jsonl_rows,
)
from .reasoning_gym_source import create_dataset, load_reasoning_gym_rows
from .rewards import resolve_reward_func


__all__ = [
    "TaskSpec",
    "decode_entry",
    "encode_entry",
    "held_out",
    "load_task",
    "load_task_cached",
    "make_reward_func",
    "prompt_text",
    "resolve_reward_func",
    "score_completions",
]


@dataclass
class TaskSpec:
    """What to load: a reasoning-gym dataset name, ``"composite"``, a path to a ``.jsonl`` file, or (with
    ``dataset_name`` instead of ``name``) a dataset for ``datasets.load_dataset``, named with TRL's ScriptArguments
    keys.

    ``size``, ``seed``, ``config`` and ``strip_prefix`` apply to reasoning-gym tasks only; a JSONL file is
    loaded whole, as written; a dataset loads its one split (``dataset_train_split`` for a training set,
    ``dataset_test_split`` for a held-out one; slices such as ``"train[:1000]"`` select rows), with the question from
    ``prompt_column`` and the gold answer from ``answer_column``, passed through ``answer_extractor`` (``"gsm8k"``
    or ``"module:function"``) when given. See :mod:`pcl.data_sources`.
    """

    name: str = ""
    size: int = 1000
    seed: int = 0
    config: dict = field(default_factory=dict)
    strip_prefix: bool = True
    # Conversational prompts for chat models: `[{system}, {user: question}]` instead of a plain string
    chat: bool = False
    system_prompt: str | None = None
    # A dataset for `datasets.load_dataset`: a Hub id, a local directory or a data file (pcl.data_sources)
    dataset_name: str | None = None
    dataset_config: str | None = None
    dataset_train_split: str | None = None
    dataset_test_split: str | None = None
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    answer_extractor: str | None = None

    def __post_init__(self) -> None:
        if self.dataset_name is not None:
            check_dataset_spec(self)
            return
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TaskSpec.name must be a non-empty string, got {self.name!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"TaskSpec.size must be a positive integer, got {self.size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"TaskSpec.seed must be an integer, got {self.seed!r}")
        if not isinstance(self.config, dict):
            raise ValueError(f"TaskSpec.config must be a dict of reasoning-gym config kwargs, got {self.config!r}")
        # Passing these twice to create_dataset would fail with an obscure TypeError.
        clash = sorted({"size", "seed"} & set(self.config))
        if clash:
            raise ValueError(
                f"TaskSpec.config must not contain {clash}: set them as TaskSpec fields (e.g. size=..., seed=...)"
            )

        loose = [k for k in DATASET_KEYS if getattr(self, k) != TaskSpec.__dataclass_fields__[k].default]
        if loose:
            raise ValueError(f"TaskSpec {loose} describe a dataset: give `dataset_name` too (and no `name`)")

    @property
    def is_jsonl(self) -> bool:
        """Whether ``name`` is a path to a JSONL file rather than a reasoning-gym dataset name."""
        return self.name.endswith(".jsonl")

    @property
    def is_dataset(self) -> bool:
        """Whether this is a ``datasets.load_dataset`` source (``dataset_name``) rather than a generator or JSONL."""
        return self.dataset_name is not None

    @property
    def is_reasoning_gym(self) -> bool:
        """Whether the task is generated by reasoning-gym (whose item i comes from ``Random(seed + i)``)."""
        return not (self.is_jsonl or self.is_dataset)

    @property
    def dataset_split(self) -> str | None:
        """The split a dataset source loads (its train or its test split, whichever is named)."""
        return self.dataset_train_split or self.dataset_test_split

    @property
    def task_name(self) -> str:
        """Short name for logs and the ``task`` column: the file stem for JSONL, the dataset's last path part for a
        dataset (``openai/gsm8k`` -> ``gsm8k``), else ``name``."""
        if self.is_dataset:  # a data file's stem; a Hub id's or a directory's last part
            path = Path(self.dataset_name.rstrip("/"))
            return path.stem if path.is_file() else path.name
        return Path(self.name).stem if self.is_jsonl else self.name

    def describe(self) -> dict[str, Any]:
        """What identifies the task in reports (``metrics.json``)."""
        if self.is_dataset:
            return {"dataset_name": self.dataset_name, "dataset_config": self.dataset_config,
                    "split": self.dataset_split, "prompt_column": self.prompt_column,
                    "answer_column": self.answer_column, "answer_extractor": self.answer_extractor}  # fmt: skip
        return {"name": self.name, "size": self.size, "seed": self.seed, "config": self.config}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        """Build a spec from a plain dict (e.g. a YAML recipe section); unknown keys are an error, not ignored."""
        if not isinstance(d, dict):
            raise ValueError(f"task spec must be a mapping, got {type(d).__name__}: {d!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown task spec key(s) {unknown}; valid keys are {known}")
        if "name" not in d and "dataset_name" not in d:
            raise ValueError(
                "task spec needs a 'name' (a reasoning-gym dataset or a .jsonl path) or a 'dataset_name' (a Hub "
                f"dataset or a local dataset path), got {d!r}"
            )
        if "dataset_name" in d:
            check_generator_keys(d)  # only here are the given keys known: a default `size` is not an error
        return cls(**d)


def load_task(spec: TaskSpec) -> datasets.Dataset:
    """Load a task as a ``datasets.Dataset`` with string columns ``prompt``, ``answer``, ``task``, ``entry``.

    ``entry`` is the full reasoning-gym entry (or JSONL row) as JSON, so the verifier can be re-run later;
    decode it with :func:`decode_entry`. For ``composite`` tasks, ``task`` names each row's sub-dataset.
    """
    if spec.is_dataset:
        rows = load_dataset_rows(spec)
    else:
        rows = load_jsonl_rows(spec) if spec.is_jsonl else load_reasoning_gym_rows(spec)
    if not rows["prompt"]:
        raise ValueError(f"task {spec.name or spec.dataset_name!r} is empty: it produced no rows")
    text = all(isinstance(p, str) for p in rows["prompt"])  # a dataset's prompts may be conversational already
    features = datasets.Features({c: datasets.Value("string") for c in _COLUMNS}) if text else None
    data = datasets.Dataset.from_dict(rows, features=features)
    if spec.chat or spec.system_prompt:
        system = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []

        def as_chat(prompt: Any) -> list[dict]:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            return messages if messages[0]["role"] == "system" else [*system, *messages]

        data = data.map(lambda row: {"prompt": as_chat(row["prompt"])})
    return data


_LOADED: dict[str, datasets.Dataset] = {}


def load_task_cached(spec: TaskSpec) -> datasets.Dataset:
    """`load_task`, loaded once per process: the overlap check, the stages and the benchmark read the same sets."""
    key = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
    if key not in _LOADED:
        _LOADED[key] = load_task(spec)
    return _LOADED[key]


def _completion_text(completion: Any) -> str:
    """Text of a completion: a plain string, or the content of the last message of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content", "")
    elif isinstance(completion, (list, tuple)) and completion:
        return _completion_text(completion[-1])
    else:
        return ""
    if isinstance(content, list):
        # Multimodal message format: [{"type": "text", "text": ...}, ...].
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _jsonl_match(answer: str, gold: str) -> bool:
    answer, gold = answer.strip(), gold.strip()
    if answer == gold:
        return True
    try:
        a, g = float(answer), float(gold)
    except ValueError:
        return False
    return math.isfinite(a) and a == g


def make_reward_func(spec: TaskSpec, threshold: float = 1.0) -> Callable[..., list[float | None]]:
    """Return a TRL reward function ``f(prompts, completions, entry, **kwargs) -> list[float | None]``.

    Each completion scores 1.0 if the task's verifier gives it at least ``threshold``, else 0.0, so partial
    credit counts as wrong. A row whose ``task`` column (when TRL passes it) belongs to another task scores
    None, which lets several reward functions share one mixed dataset.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not spec.is_reasoning_gym:  # JSONL and datasets: the answer compared with the gold one
        dataset = None
        own_tasks = {spec.task_name}
    else:
        # Verifiers only read entry['answer'] / entry['metadata'], so one dataset object serves any seed.
        dataset = create_dataset(spec)
        own_tasks = set(dataset.datasets) if spec.name == "composite" else {spec.name}

    def score(text: str, entry_json: str) -> float:
        if dataset is None:
            return 1.0 if _jsonl_match(text, json.loads(entry_json)["answer"]) else 0.0
        try:
            value = dataset.score_answer(text.strip(), entry=decode_entry(entry_json))
        except Exception:
            # A verifier crashing on malformed model output means the answer is wrong, not that training stops.
            return 0.0
        return 1.0 if value is not None and value >= threshold else 0.0

    def reward_func(
        prompts: list[Any], completions: list[Any], entry: list[str] | None = None, **kwargs: Any
    ) -> list[float | None]:
        if entry is None:
            raise ValueError(
                f"{reward_func.__name__} needs the dataset's 'entry' column; keep it (do not remove unused columns)"
            )
        tasks = kwargs.get("task")
        rewards: list[float | None] = []
        for i, (completion, entry_json) in enumerate(zip(completions, entry, strict=True)):
            if tasks is not None and tasks[i] not in own_tasks:
                rewards.append(None)
            else:
                rewards.append(score(_completion_text(completion), entry_json))
        return rewards

    reward_func.__name__ = reward_func.__qualname__ = f"{spec.task_name}_accuracy"
    return reward_func


def score_completions(reward_func: Callable, data: datasets.Dataset, completions: list) -> list[float | None]:
    """Call a TRL-style reward function on answers to `data`'s prompts, with the dataset columns as keyword
    arguments (as GRPOTrainer does), and check it returned one reward per answer.

    As in GRPOTrainer, answers to conversational prompts are passed as conversations
    (`[{"role": "assistant", "content": text}]`), which rewards written for TRL's chat datasets index."""
    columns = {k: data[k] for k in data.column_names if k != "prompt"}
    if len(data) and not isinstance(data[0]["prompt"], str):
        completions = [[{"role": "assistant", "content": c}] if isinstance(c, str) else c for c in completions]
    rewards = reward_func(prompts=data["prompt"], completions=list(completions), **columns)
    if len(rewards) != len(completions):
        raise ValueError(
            f"Reward function {getattr(reward_func, '__name__', reward_func)!r} returned {len(rewards)} rewards for "
            f"{len(completions)} answers."
        )
    return list(rewards)


def prompt_text(prompt: Any) -> str:
    """Whitespace-normalised prompt text; conversational prompts are joined message contents, system messages left
    out: the question is what a model can memorise, so the same question under another system prompt (or as plain
    text) is the same prompt for the overlap check and the benchmark's seen marks."""
    if not isinstance(prompt, str):
        if isinstance(prompt, dict):
            prompt = [prompt]
        prompt = "\n".join(
            _completion_text([m]) for m in prompt if not (isinstance(m, dict) and m.get("role") == "system")
        )
    return " ".join(prompt.split())


def held_out(
    eval_ds: datasets.Dataset, train_prompts: Iterable[str]
) -> tuple[datasets.Dataset, datasets.Dataset, int]:
    """Mark eval prompts that also occur in training and split them off.

    Returns ``(eval_ds with a boolean 'seen' column, the unseen rows, number of seen rows)``. Prompts are
    compared after collapsing whitespace.
    """
    train = {prompt_text(p) for p in train_prompts}
    seen = [prompt_text(p) in train for p in eval_ds["prompt"]]
    if "seen" in eval_ds.column_names:
        eval_ds = eval_ds.remove_columns("seen")
    marked = eval_ds.add_column("seen", seen)
    unseen = marked.select([i for i, s in enumerate(seen) if not s])
    return marked, unseen, sum(seen)
