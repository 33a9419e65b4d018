# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Tasks read from files and from `datasets.load_dataset`: a JSONL file, a Hub dataset, a local dataset directory.

A Hub or local dataset is named as TRL's scripts name it (`ScriptArguments`): ``dataset_name``, ``dataset_config`` and
``dataset_train_split`` (a training set) or ``dataset_test_split`` (a held-out set). A split may be sliced as
`datasets` allows (``"train[:2000]"``, ``"train[2000:4000]"``), which is how two stages take disjoint rows of one
split. ``prompt_column`` and ``answer_column`` say which columns hold the question and the gold answer, and
``answer_extractor`` turns an answer cell into the gold answer the rewards compare against: ``"gsm8k"`` keeps what
follows GSM8K's ``#### `` line, or a ``"module:function"`` of the user's.

Every loader here returns the columns of :func:`pcl.tasks.load_task` (``prompt``, ``answer``, ``task``, ``entry``):
``entry`` holds the source row as JSON (for a dataset: ``{"answer": <gold>, "row": <the whole row>}``), so a reward
function can read any of the row's columns; :func:`encode_entry` / :func:`decode_entry` write and read that JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets

from .rewards import import_callable


if TYPE_CHECKING:
    from .tasks import TaskSpec


__all__ = [
    "COLUMNS",
    "DATASET_KEYS",
    "check_dataset_spec",
    "check_generator_keys",
    "decode_entry",
    "encode_entry",
    "gsm8k_answer",
    "load_dataset_rows",
    "load_jsonl_rows",
]

COLUMNS = ("prompt", "answer", "task", "entry")
# TaskSpec fields that describe a `load_dataset` source
DATASET_KEYS = ("dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split", "prompt_column",
                "answer_column", "answer_extractor")  # fmt: skip
# TaskSpec fields that only a reasoning-gym task reads: given with `dataset_name`, they would be silently ignored
_GENERATOR_KEYS = ("size", "seed", "config", "strip_prefix")
# `load_dataset` needs a builder name for a single data file; a directory or a Hub id is resolved by `datasets`
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
_GSM8K_MARK = "####"
# JSON has no tuples and only string keys, but some verifiers compare metadata against tuples (arc_agi, rearc)
# and some metadata dicts have int keys (graph_color): tag both so entries round-trip exactly.
_TUPLE_TAG = "__tuple__"
_ITEMS_TAG = "__items__"


def encode_entry(entry: dict[str, Any]) -> str:
    """Serialise a reasoning-gym entry to JSON, keeping tuples and non-string dict keys (see :func:`decode_entry`)."""

    def tag(x: Any) -> Any:
        if isinstance(x, tuple):
            return {_TUPLE_TAG: [tag(v) for v in x]}
        if isinstance(x, list):
            return [tag(v) for v in x]
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x):
                return {k: tag(v) for k, v in x.items()}
            return {_ITEMS_TAG: [[tag(k), tag(v)] for k, v in x.items()]}
        return x

    # default=str: an exotic metadata value must not stop training; verifiers read answer/metadata fields.
    return json.dumps(tag(entry), default=str, ensure_ascii=False)


def decode_entry(text: str) -> dict[str, Any]:
    """Inverse of :func:`encode_entry`; plain JSON (e.g. a JSONL row) decodes as usual."""

    def untag(d: dict[str, Any]) -> Any:
        if len(d) == 1 and _TUPLE_TAG in d:
            return tuple(d[_TUPLE_TAG])
        if len(d) == 1 and _ITEMS_TAG in d:
            # Tuple keys arrive as tuples already: object_hook runs on inner objects first.
            return dict(d[_ITEMS_TAG])
        return d

    return json.loads(text, object_hook=untag)


def gsm8k_answer(text: str) -> str:
    """GSM8K's gold answer: what follows the last ``####`` of a rationale, without thousands separators."""
    _, mark, final = str(text).rpartition(_GSM8K_MARK)
    if not mark or not final.strip():
        raise ValueError(f"no final answer after {_GSM8K_MARK!r} in {str(text)[-120:]!r}")
    return final.strip().replace(",", "")


_EXTRACTORS: dict[str, Callable[[str], str]] = {"gsm8k": gsm8k_answer}


def _extractor(spec: TaskSpec) -> Callable[[Any], str]:
    name = spec.answer_extractor
    if name is None:
        return str
    if name in _EXTRACTORS:
        return _EXTRACTORS[name]
    return import_callable(name)


def check_generator_keys(keys: Any) -> None:
    """Refuse reasoning-gym-only keys (``size``, ``seed``, ...) beside ``dataset_name``: they would be ignored."""
    ignored = sorted(set(keys) & set(_GENERATOR_KEYS))
    if ignored:
        raise ValueError(
            f"task keys {ignored} apply to reasoning-gym tasks only, not to a `dataset_name` task: choose a dataset's "
            "rows with a split slice instead, e.g. dataset_train_split: 'train[:1000]'"
        )


def check_dataset_spec(spec: TaskSpec) -> None:
    """Validate a dataset source at construction: one split named and parseable, the extractor importable."""
    where = f"task with dataset_name={spec.dataset_name!r}"
    if not isinstance(spec.dataset_name, str) or not spec.dataset_name.strip():
        raise ValueError(f"dataset_name must be a Hub dataset id or a local path, got {spec.dataset_name!r}")
    if spec.name:
        raise ValueError(
            f"{where} also has name={spec.name!r}: give `name` (a reasoning-gym task or a .jsonl file) or "
            "`dataset_name` (a Hub dataset or a local dataset path), not both"
        )
    splits = [s for s in (spec.dataset_train_split, spec.dataset_test_split) if s is not None]
    if len(splits) != 1:
        raise ValueError(
            f"{where} needs exactly one split: `dataset_train_split` for a training set (e.g. 'train' or "
            f"'train[:2000]') or `dataset_test_split` for a held-out set (e.g. 'test'); got {len(splits)}"
        )
    try:
        datasets.ReadInstruction.from_spec(splits[0])
    except (AssertionError, ValueError) as e:
        raise ValueError(
            f"{where}: bad split {splits[0]!r} ({e}); write e.g. 'train', 'train[:1000]' or 'test[50%:]'"
        ) from e
    for key in ("prompt_column", "answer_column"):
        if not isinstance(getattr(spec, key), str) or not getattr(spec, key):
            raise ValueError(f"{where}: {key} must be a column name, got {getattr(spec, key)!r}")
    # Keys given to `TaskSpec(...)` directly (`from_dict` refuses them by name): non-default values would be ignored
    fields = {f.name: f for f in dataclasses.fields(spec)}
    default = {k: fields[k].default_factory() if fields[k].default is dataclasses.MISSING else fields[k].default
               for k in _GENERATOR_KEYS}  # fmt: skip
    check_generator_keys([k for k in _GENERATOR_KEYS if getattr(spec, k) != default[k]])
    _extractor(spec)  # an unknown extractor fails now, not after the first stage trained


def _load_local(name: str, config: str | None, split: str, **kwargs: Any) -> datasets.Dataset:
    if os.path.isfile(name):  # one data file: `load_dataset` wants its builder, and names its one split 'train'
        builder = _FILE_BUILDERS.get(Path(name).suffix.lower())
        if builder is None:
            raise ValueError(f"unknown file type; use one of {sorted(_FILE_BUILDERS)} or a dataset directory")
        return datasets.load_dataset(builder, data_files=name, split=split, **kwargs)
    return datasets.load_dataset(name, config, split=split, **kwargs)


def _load(spec: TaskSpec) -> datasets.Dataset:
    name, split = spec.dataset_name, spec.dataset_split
    what = f"dataset {name!r} (config {spec.dataset_config!r}, split {split!r})"
    try:
        if not os.path.exists(name):
            return datasets.load_dataset(name, spec.dataset_config, split=split)
        # Local data is read into memory through a cache of its own, removed after: the shared `datasets` cache keys
        # a local directory so that a rewritten one of the same name can get the old rows (seen with datasets 5.2),
        # and ranks of a distributed launch would all write the same cache entry
        with tempfile.TemporaryDirectory(prefix="pcl-dataset-") as cache:
            return _load_local(name, spec.dataset_config, split, cache_dir=cache, keep_in_memory=True)
    except Exception as e:
        # `datasets` says what failed, not which recipe key fixes it
        raise ValueError(
            f"could not load {what}: {e}. A Hub id needs network access (or the `datasets` cache with "
            "HF_HUB_OFFLINE=1); a local path is a directory `load_dataset` reads (data files, a Hub-style repo or "
            "one saved with `save_to_disk`) or one data file, whose only split is 'train'."
        ) from e


def load_dataset_rows(spec: TaskSpec) -> dict[str, list]:
    """Load a `load_dataset` source as the task columns; the prompt keeps its type (text, or a list of messages)."""
    data = _load(spec)
    missing = [c for c in (spec.prompt_column, spec.answer_column) if c not in data.column_names]
    if missing:
        raise ValueError(
            f"dataset {spec.dataset_name!r} has no column {missing}; its columns are {data.column_names}: set "
            "`prompt_column` and `answer_column` to the question's and the gold answer's columns"
        )
    extract = _extractor(spec)
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    for i, row in enumerate(data):
        where = f"dataset {spec.dataset_name!r}, split {spec.dataset_split!r}, row {i}"
        prompt, answer = row[spec.prompt_column], row[spec.answer_column]
        is_chat = isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)
        if not (is_chat or isinstance(prompt, str)) or not prompt:
            raise ValueError(f"{where}: {spec.prompt_column!r} must be non-empty text or a list of chat messages, "
                             f"got {prompt!r}")  # fmt: skip
        if answer is None:
            raise ValueError(f"{where}: {spec.answer_column!r} is empty; drop such rows before training")
        try:
            gold = str(extract(answer))
        except Exception as e:
            raise ValueError(f"{where}: answer_extractor {spec.answer_extractor!r} failed: {e}") from e
        rows["prompt"].append(prompt)
        rows["answer"].append(gold)
        rows["task"].append(spec.task_name)
        # default=str: a cell JSON cannot hold (an image, a date) must not stop training; rewards read the text ones
        rows["entry"].append(json.dumps({"answer": gold, "row": row}, default=str, ensure_ascii=False))
    return rows


def load_jsonl_rows(spec: TaskSpec) -> dict[str, list]:
    """Load a ``.jsonl`` task file of ``{"prompt": ..., "answer": ...}`` rows, checking each line."""
    path = Path(spec.name)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL task file not found: {path}")
    fix = 'each line must be a JSON object like {"prompt": "2 + 2 =", "answer": "4"}'
    rows: dict[str, list] = {c: [] for c in COLUMNS}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg}); {fix}") from e
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}; {fix}")
            for key in ("prompt", "answer"):
                if key not in row:
                    raise ValueError(f"{where}: missing key {key!r}; {fix}")
                if not isinstance(row[key], str):
                    raise ValueError(
                        f"{where}: {key!r} must be a string, got {type(row[key]).__name__} {row[key]!r}; "
                        f'quote it, e.g. "{key}": "{row[key]}"'
                    )
                if not row[key].strip():
                    raise ValueError(f"{where}: {key!r} is empty; give a non-empty {key} or delete the line")
            rows["prompt"].append(row["prompt"])
            rows["answer"].append(row["answer"])
            rows["task"].append(spec.task_name)
            rows["entry"].append(json.dumps(row, ensure_ascii=False))
    return rows
