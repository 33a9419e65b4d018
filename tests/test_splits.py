# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import pytest
from datasets import Dataset

from pcl.splits import OverlapError, check_disjoint, deduplicate, index_overlap, prompt_overlap
from pcl.tasks import TaskSpec


@pytest.mark.parametrize(
    "a, b, shared",
    [
        (TaskSpec("chain_sum", size=100, seed=1), TaskSpec("chain_sum", size=50, seed=3), 50),  # inside
        (TaskSpec("chain_sum", size=100, seed=1), TaskSpec("chain_sum", size=50, seed=91), 10),  # tail
        (TaskSpec("chain_sum", size=100, seed=1), TaskSpec("chain_sum", size=50, seed=101), 0),  # adjacent
        # the same random streams whatever the config: correlated questions
        (TaskSpec("chain_sum", size=10, seed=0), TaskSpec("chain_sum", size=10, seed=5, config={"max_terms": 7}), 5),
        (TaskSpec("chain_sum", size=100, seed=1), TaskSpec("products", size=100, seed=1), 0),  # other generator
        (TaskSpec("a.jsonl"), TaskSpec("a.jsonl"), 0),  # JSONL: compared by text only
    ],
)
def test_index_overlap(a, b, shared):
    assert index_overlap(a, b) == shared == index_overlap(b, a)


def test_prompt_overlap_counts_distinct_normalised_prompts():
    assert prompt_overlap(["1 + 1 =", "1  + 1 =", "2 + 2 ="], ["1 + 1 =", "3 + 3 =", "4 + 4 =", "5 + 5 ="]) == (1, 2)


def test_check_disjoint_tolerance_boundary():
    sets = {"train": TaskSpec("x.jsonl"), "eval": TaskSpec("y.jsonl")}
    prompts = {
        "train": [f"q{i}" for i in range(100)],
        "eval": ["q0", "q1", "new0", "new1"] + [f"n{i}" for i in range(6)],
    }
    # 2 of the eval set's 10 distinct prompts: exactly 20% is within a 0.2 tolerance, not within 0.19
    (pair,) = check_disjoint(sets, tolerance=0.2, prompts=prompts)
    assert pair == {"a": "train", "b": "eval", "shared_indices": 0, "shared_prompts": 2, "smaller_distinct": 10}
    with pytest.raises(
        OverlapError, match=r"`train` \(x.jsonl\) and `eval` \(y.jsonl\) share 2 of 10 distinct prompts"
    ):
        check_disjoint(sets, tolerance=0.19, prompts=prompts)
    with pytest.raises(ValueError, match="overlap_tolerance"):
        check_disjoint(sets, tolerance=1.5)


def test_check_disjoint_suggests_a_free_seed():
    sets = {"a": TaskSpec("chain_sum", size=10, seed=1), "b": TaskSpec("chain_sum", size=10, seed=5),
            "c": TaskSpec("chain_sum", size=10, seed=1_500_000)}  # fmt: skip
    with pytest.raises(OverlapError, match=r"share 6 reasoning-gym item indices.*`--b.seed 2000000`"):
        check_disjoint(sets)


def test_deduplicate_keeps_first_of_each_prompt():
    data = Dataset.from_dict(
        {"prompt": ["1 + 1 =", "2 + 2 =", "1  + 1 = ", "3 + 3 ="], "answer": ["a", "b", "c", "d"]}
    )
    kept, dropped = deduplicate(data)
    assert dropped == 1 and kept["answer"] == ["a", "b", "d"]
    same, none = deduplicate(kept)
    assert none == 0 and same["answer"] == ["a", "b", "d"]
