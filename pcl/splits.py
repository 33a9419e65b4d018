# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Disjoint datasets: the sets a recipe builds (each stage's task, each self-labelled set, the evaluation sets) must
not share questions, or a benchmark measures memory instead of calibration.

Two checks, from cheap to exact:

* index ranges: reasoning-gym builds item ``i`` of a dataset from ``random.Random(seed + i)``, so two datasets of the
  same generator whose ranges ``[seed, seed + size)`` intersect are shifted copies of each other (the same random
  stream, hence the same or correlated questions, whatever their configs). Any intersection is refused.
* prompt text: the distinct prompts two sets share (the only check for JSONL files and `load_dataset` sources, whose
  rows have no generator indices: two slices of one split, or the train and test splits of one dataset, are compared
  by their questions). Small problem spaces repeat questions even from far-apart seeds
  (two 1-digit terms make 200 distinct sums), so a share up to ``tolerance`` of the smaller set is accepted; the
  benchmark still marks such items as seen and reports the unseen subset beside the full set.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import datasets

from .tasks import TaskSpec, prompt_text


__all__ = ["OverlapError", "check_disjoint", "deduplicate", "index_overlap", "prompt_overlap"]

SEED_GAP = 10**6
# Default share of the smaller set's distinct prompts that may also occur in another set (a recipe's
# `overlap_tolerance` overrides it)
DEFAULT_TOLERANCE = 0.01


class OverlapError(ValueError):
    """Two datasets of a recipe share items beyond the tolerance."""


def index_overlap(a: TaskSpec, b: TaskSpec) -> int:
    """Number of reasoning-gym item indices (random streams) two specs share; 0 for JSONL files, datasets or different
    generators."""
    if not (a.is_reasoning_gym and b.is_reasoning_gym) or a.name != b.name:
        return 0
    return max(0, min(a.seed + a.size, b.seed + b.size) - max(a.seed, b.seed))


def prompt_overlap(a: Iterable[Any], b: Iterable[Any]) -> tuple[int, int]:
    """``(distinct prompts in both, distinct prompts in the smaller set)``, comparing whitespace-normalised text."""
    set_a, set_b = {prompt_text(p) for p in a}, {prompt_text(p) for p in b}
    return len(set_a & set_b), min(len(set_a), len(set_b))


def _free_seed(spec: TaskSpec, specs: Sequence[TaskSpec]) -> int:
    """A seed for `spec` whose range clears every other spec of the same generator by at least SEED_GAP."""
    end = max(s.seed + s.size for s in specs if s.name == spec.name)
    return (end // SEED_GAP + 1) * SEED_GAP


def _describe(spec: TaskSpec) -> str:
    if spec.is_dataset:
        config = f" config {spec.dataset_config}" if spec.dataset_config else ""
        return f"{spec.dataset_name}{config} split {spec.dataset_split}"
    return spec.name if spec.is_jsonl else f"{spec.name} seed {spec.seed} size {spec.size}"


def _fix(a: TaskSpec, b: TaskSpec) -> str:
    if a.is_dataset or b.is_dataset:
        return ("take disjoint rows (e.g. dataset_train_split 'train[:4000]' and 'train[4000:]') or drop the repeated "
                "questions from the data")  # fmt: skip
    return f"use seeds at least {SEED_GAP:,} apart or another config"


def check_disjoint(
    sets: dict[str, TaskSpec], tolerance: float = DEFAULT_TOLERANCE, prompts: dict[str, Sequence[Any]] | None = None
) -> list[dict[str, Any]]:
    """Refuse datasets that overlap; return every pair's overlap (for the report).

    Args:
        sets: The datasets by name (a recipe key path such as ``stages.sft.task``, so the fix can name the flag).
        tolerance: The largest share of the smaller set's distinct prompts that may also occur in the other set.
        prompts: Each set's prompts; when given, prompt text is compared too (index ranges always are).

    Raises:
        OverlapError: naming the two sets, the overlap and the fix, for the first pair over the limit.
    """
    if not 0.0 <= tolerance <= 1.0:
        raise ValueError(f"overlap_tolerance must be in [0, 1], got {tolerance!r}")
    names, report = list(sets), []
    # Normalised once per set: the pairwise comparisons then cost one set intersection each
    texts = None if prompts is None else {name: {prompt_text(p) for p in prompts[name]} for name in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared_idx = index_overlap(sets[a], sets[b])
            if shared_idx:
                raise OverlapError(
                    f"`{a}` ({_describe(sets[a])}) and `{b}` ({_describe(sets[b])}) share {shared_idx} reasoning-gym "
                    f"item indices (item i is built from Random(seed + i)): set their seeds at least {SEED_GAP:,} "
                    f"apart and more than the larger size, e.g. `--{b}.seed {_free_seed(sets[b], list(sets.values()))}`."
                )
            entry = {"a": a, "b": b, "shared_indices": 0}
            if texts is not None:
                shared, smaller = len(texts[a] & texts[b]), min(len(texts[a]), len(texts[b]))
                entry.update(shared_prompts=shared, smaller_distinct=smaller)
                if shared > tolerance * smaller:
                    raise OverlapError(
                        f"`{a}` ({_describe(sets[a])}) and `{b}` ({_describe(sets[b])}) share {shared} of "
                        f"{smaller} distinct prompts ({100 * shared / smaller:.1f}%), above overlap_tolerance "
                        f"{tolerance}: {_fix(sets[a], sets[b])}; if the task is too small to avoid repeats, raise the "
                        "recipe's `overlap_tolerance` (seen items are reported apart)."
                    )
            report.append(entry)
    return report


def deduplicate(data: datasets.Dataset) -> tuple[datasets.Dataset, int]:
    """Keep the first row of each distinct (whitespace-normalised) prompt; returns ``(rows, number dropped)``."""
    seen, keep = set(), []
    for i, p in enumerate(data["prompt"]):
        key = prompt_text(p)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return (data if len(keep) == len(data) else data.select(keep)), len(data) - len(keep)
