# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import json

from pcl import items
from pcl.items import by_difficulty, difficulty_features
from pcl.tasks import TaskSpec, load_task


def test_difficulty_features_of_chain_sum():
    data = load_task(TaskSpec("chain_sum", size=20, seed=5, config={"min_terms": 2, "max_terms": 4}))
    features = [difficulty_features("chain_sum", e) for e in data["entry"]]
    assert all(set(f) == {"num_terms", "num_digits"} for f in features)
    # the feature is the item's own value: its expression has that many terms
    for f, p in zip(features, data["prompt"], strict=True):
        assert f["num_terms"] == len(p.replace("-", "+").split("+"))
    assert {f["num_terms"] for f in features} == {2, 3, 4}
    assert difficulty_features("x.jsonl", json.dumps({"prompt": "a", "answer": "b"})) == {}


def test_difficulty_hook_for_other_tasks(monkeypatch):
    monkeypatch.setitem(items.DIFFICULTY_FEATURES, "my_task", lambda meta: {"length": len(meta["text"])})
    entry = json.dumps({"question": "q", "metadata": {"text": "abcd"}})
    assert difficulty_features("my_task", entry) == {"length": 4}
    assert difficulty_features("x.jsonl", json.dumps({"prompt": "p", "difficulty": {"level": 3}})) == {"level": 3}


def test_by_difficulty_shows_a_seen_confound():
    rows = [
        {"difficulty": {"terms": 2}, "seen": True, "correct": 1.0, "confidence": {"s": 0.9}},
        {"difficulty": {"terms": 2}, "seen": True, "correct": 1.0, "confidence": {"s": 0.7}},
        {"difficulty": {"terms": 4}, "seen": False, "correct": 0.0, "confidence": {"s": 0.4}},
        {"difficulty": {"terms": 4}, "seen": False, "correct": 1.0, "confidence": {"s": 0.6}},
    ]
    cells = by_difficulty(rows, ["s"])
    assert list(cells) == ["terms=2", "terms=4"]
    assert cells["terms=2"] == {"n": 2, "n_seen": 2, "accuracy": 1.0, "accuracy_unseen": None,
                                "mean_confidence": {"s": 0.8}, "auroc": {"s": None}}  # fmt: skip
    assert cells["terms=4"]["accuracy_unseen"] == 0.5 and cells["terms=4"]["auroc"] == {"s": 1.0}
