# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Deploy-mode inference and the self-score readout on short answers.

A PCL model trained with `PCLSFTTrainer` on one-digit additions with a reward, and the same architecture trained with
`SFTTrainer` on the same rows without it, both saved and loaded back as deployed. Greedy generation of every answer in
(a) deploy mode (marker = stop), (b) with the marker not a stop (the segment is written), (c) the non-PCL model, run
twice for the A/A noise; and `pcl.readout.self_scores` on the deploy answers, timed against the generation."""

import contextlib
import io
import statistics
import time

import torch
from datasets import Dataset
from overhead_harness import CLOCK, Sizes, base_model, compare, paired, primary, run_args
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from pcl import PCLSFTConfig, PCLSFTTrainer, load_pcl_model
from pcl.inference import generate, segment_tokens_of
from pcl.marker import segment_tokens
from pcl.readout import self_scores
from pcl.segment import SegmentFormat


def addition_rows(reward: bool = True) -> list[dict]:
    # Two-digit answers (" 07"): every answer has the same length whether it is right or not, so the two models'
    # token counts and times compare the stop mechanism, not their accuracy
    rows = [
        {"prompt": f"{a} + {b} =", "completion": f" {a + b:02d}", "reward": float(a < 5)}
        for a in range(10)
        for b in range(10)
    ]
    if not reward:
        for r in rows:
            del r["reward"]
    return rows


def train_inference_models(sizes: Sizes, tokenizer, cuda: bool, tmp: str):
    """A PCL model (rows with rewards: `answer MARKER SCORE EOS`) and the same architecture trained without PCL, each
    saved and loaded back as it would be deployed (no trainer hooks left on the model)."""
    common = dict(
        per_device_train_batch_size=20, max_steps=sizes.inf_train_steps, learning_rate=sizes.inf_lr,
        lr_scheduler_type="constant_with_warmup", warmup_steps=10, **run_args(sizes, cuda),
    )  # fmt: skip
    t0 = time.perf_counter()
    pcl = PCLSFTTrainer(
        model=base_model(tokenizer, sizes, cuda, inference=True), args=PCLSFTConfig(output_dir=f"{tmp}/inf_pcl", **common),
        train_dataset=Dataset.from_list(addition_rows()[: sizes.inf_prompts]), processing_class=tokenizer,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        pcl.train()
    plain = SFTTrainer(
        model=base_model(tokenizer, sizes, cuda, inference=True), args=SFTConfig(output_dir=f"{tmp}/inf_plain", **common),
        train_dataset=Dataset.from_list(addition_rows(reward=False)[: sizes.inf_prompts]), processing_class=tokenizer,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        plain.train()
    train_s = time.perf_counter() - t0
    pcl.save_model(f"{tmp}/inf_pcl/final")
    plain.save_model(f"{tmp}/inf_plain/final")
    kwargs = {"dtype": torch.bfloat16} if sizes.bf16 and cuda else {}
    pcl_model = load_pcl_model(f"{tmp}/inf_pcl/final", **kwargs)[0]
    plain_model = AutoModelForCausalLM.from_pretrained(f"{tmp}/inf_plain/final", **kwargs)
    device = "cuda" if cuda else "cpu"
    return pcl_model.to(device), plain_model.to(device), train_s


def bench_inference(sizes: Sizes, tokenizer, cuda: bool, tmp: str) -> tuple[dict, dict]:
    pcl_model, plain_model, train_s = train_inference_models(sizes, tokenizer, cuda, tmp)
    rows = addition_rows()[: sizes.inf_prompts]
    prompts = [r["prompt"] for r in rows]
    # Every variant gets its segment ids resolved once, up front: the timed calls differ only in their stop ids.
    # What resolving them from the checkpoint costs per `generate` call (tokens=None) is timed apart below.
    t0 = time.perf_counter()
    pcl_tokens = segment_tokens_of(pcl_model, tokenizer)
    resolve_s = time.perf_counter() - t0
    plain_tokens = segment_tokens(tokenizer, SegmentFormat(), plain_model)
    gen = dict(max_new_tokens=8, batch_size=sizes.inf_batch, show_progress=False)
    outputs = {}

    def run(name, model, **kw):
        outputs[name] = generate(model, tokenizer, prompts, **gen, **kw)

    def readout():
        outputs["self_scores"] = self_scores(pcl_model, tokenizer, prompts, [g.text for g in outputs["deploy"]],
                                             batch_size=sizes.inf_batch, tokens=pcl_tokens)  # fmt: skip

    # Same code path for every variant: only the stop ids differ. (c) runs twice, to measure the noise (A/A).
    fns = {
        "deploy": lambda: run("deploy", pcl_model, tokens=pcl_tokens),
        "no_stop": lambda: run("no_stop", pcl_model, stop_at_marker=False, tokens=pcl_tokens),
        "plain": lambda: run("plain", plain_model, stop_at_marker=False, tokens=plain_tokens),
        "plain_again": lambda: run("plain_again", plain_model, stop_at_marker=False, tokens=plain_tokens),
    }
    fns["deploy"]()  # the readout needs the deploy answers before it is first timed
    fns["readout"] = readout
    times = paired(fns, sizes.inf_reps, 1)

    n = len(prompts)
    dep, nos, pla = outputs["deploy"], outputs["no_stop"], outputs["plain"]
    gold = [r["completion"].strip() for r in rows]

    def stats(name, gens):
        ts = primary(times, name)
        return {
            "tokens_per_answer": sum(g.num_tokens for g in gens) / n,
            "s_per_answer": statistics.median(ts) / n,  # primary clock
            "spread": (max(ts) - min(ts)) / statistics.median(ts),  # (max - min) / median over repetitions
            "wall_s_per_answer": statistics.median(times[name]["wall"]) / n,
            "cpu_s_per_answer": statistics.median(times[name]["cpu"]) / n,
            "stops": {s: sum(g.stop == s for g in gens) for s in ("marker", "eos", "length")},
            "tokens_after_marker": sum(g.tokens_after_marker for g in gens),
            "accuracy": sum(g.text.strip() == a for g, a in zip(gens, gold, strict=True)) / n,
        }

    # Extra tokens of deploy mode over the non-PCL model, for the same answer (both stopped, same text)
    matched = [
        (d, p) for d, p in zip(dep, pla, strict=True) if d.text == p.text and d.stop == "marker" and p.stop == "eos"
    ]
    extra = [d.num_tokens - p.num_tokens for d, p in matched]
    aa = [x / y for x, y in zip(primary(times, "plain_again"), primary(times, "plain"), strict=True)]
    wall = compare(times, "deploy", "plain")
    noise = max(abs(r - 1) for r in aa)
    inference = {
        "train_s": train_s,
        "prompts": n,
        "segment_tokens_resolve_s": resolve_s,  # per call of generate/self_scores when `tokens` is not passed
        "deploy": stats("deploy", dep),
        "no_stop": stats("no_stop", nos),
        "plain": stats("plain", pla),
        "matched_answers": len(matched),
        "deploy_extra_tokens": max(extra, key=abs) if extra else None,  # worst case over matched answers
        "deploy_extra_tokens_mean_all": (sum(g.num_tokens for g in dep) - sum(g.num_tokens for g in pla)) / n,
        "deploy_tokens_after_marker": sum(g.tokens_after_marker for g in dep),
        "no_stop_extra_tokens_per_answer": (sum(g.num_tokens for g in nos) - sum(g.num_tokens for g in dep)) / n,
        "clock": CLOCK["name"],
        "time_ratio_deploy_vs_plain": wall["ratio"],  # primary clock, like every ratio here
        "time_ratio_ci95": wall["ratio_ci95"],
        "time_ratio_min": wall["ratio_min"],
        "time_ratio_max": wall["ratio_max"],
        "time_ratio_no_stop_vs_plain": compare(times, "no_stop", "plain")["ratio"],
        "aa_ratio_noise": noise,  # max |plain_again / plain - 1| over repetitions: what "within noise" means here
        "time_within_noise": abs(wall["ratio"] - 1) <= noise,
    }
    ratio = compare(times, "readout", "deploy")
    readout_result = {
        "self_scores_s": ratio["readout_s"],
        "generate_s": ratio["deploy_s"],
        "ratio": ratio["ratio"],
        "ratio_ci95": ratio["ratio_ci95"],
        "mean_self_score": sum(outputs["self_scores"]) / n,
    }
    return inference, readout_result
