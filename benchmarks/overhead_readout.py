# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Self-score readout cost against generation for long answers (`pcl.readout.self_scores` vs `pcl.inference.generate`
on the same answers)."""

from overhead_deploy import addition_rows
from overhead_harness import Sizes, base_model, compare, paired

from pcl.inference import generate
from pcl.marker import prepare_model
from pcl.readout import self_scores
from pcl.segment import SegmentFormat


def bench_readout_long(sizes: Sizes, tokenizer, cuda: bool) -> dict:
    """Readout cost against generation for long answers: a random (untrained) model rarely stops, so its greedy
    answers run to about `completion_len` tokens, as reasoning answers do. Timing only: the scores are meaningless."""
    model = base_model(tokenizer, sizes, cuda)
    tokens = prepare_model(model, tokenizer, SegmentFormat())
    if cuda:
        model = model.cuda()
    prompts = [r["prompt"] for r in addition_rows()[: sizes.grpo_batch]]
    out = {}

    def gen():
        out["gens"] = generate(model, tokenizer, prompts, max_new_tokens=sizes.completion_len,
                               batch_size=len(prompts), show_progress=False, tokens=tokens)  # fmt: skip

    def readout():
        self_scores(model, tokenizer, prompts, [g.text for g in out["gens"]], batch_size=len(prompts), tokens=tokens)

    gen()
    times = paired({"generate": gen, "readout": readout}, sizes.inf_reps, 1)
    ratio = compare(times, "readout", "generate")
    return {
        "answers": len(prompts),
        "mean_answer_tokens": sum(g.num_tokens for g in out["gens"]) / len(prompts),
        "self_scores_s": ratio["readout_s"],
        "generate_s": ratio["generate_s"],
        "ratio": ratio["ratio"],
        "ratio_ci95": ratio["ratio_ci95"],
    }
