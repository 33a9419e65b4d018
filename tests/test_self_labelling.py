# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Self-labelling in one process: length-sorted batches, answers back in the task's order, a progress bar only where
asked. Sharding across ranks and the cache under a launch: tests/distributed/test_distributed_self_labelling.py; the
cache on resume: tests/test_recipe.py."""

import pcl.inference
from pcl.inference import encode_prompt
from pcl.marker import prepare_model
from pcl.segment import SegmentFormat
from pcl.self_labelling import generate_sharded


PROMPTS = ["1 + 2 =", "10 + 24 - 32 =", "5 =", "17 - 11 + 48 + 87 =", "3 + 4 =", "99 - 1 ="]


def test_batches_by_length_and_restores_order(tiny_model, tokenizer, monkeypatch):
    prepare_model(tiny_model, tokenizer, SegmentFormat())
    seen, real = [], pcl.inference.generate
    monkeypatch.setattr(pcl.inference, "generate", lambda m, t, prompts, **kw: seen.append((prompts, kw)) or real(
        m, t, prompts, **kw))  # fmt: skip
    gens = generate_sharded(tiny_model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=1)
    ((asked, kwargs),) = seen
    lengths = [len(encode_prompt(tokenizer, p)) for p in asked]
    assert sorted(asked) == sorted(PROMPTS) and lengths == sorted(lengths, reverse=True)  # longest batch first
    assert kwargs["show_progress"] is True  # the main process shows the bar
    expected = real(tiny_model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=1, show_progress=False)
    assert [g.token_ids for g in gens] == [g.token_ids for g in expected]
    assert len({tuple(g.token_ids) for g in gens}) > 1  # distinct answers: a wrong order would show
