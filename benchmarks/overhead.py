# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""What PCL costs: training step time and peak memory against the stock TRL trainers, and deploy-mode inference.

Everything is measured side by side in one run: the same model (built locally with `pcl.tiny`, identical weights),
the same data, seed and settings; the variants alternate inside every repetition (A B, then B A, ...) and each number
is the median of the paired repetitions after warm-up. Peak memory is measured in one subprocess per variant.

    python benchmarks/overhead.py                       # full run (CPU: ~4 min on 2 cores; GPU: bf16, larger model)
    python benchmarks/overhead.py --quick --out /tmp/o.json   # CI smoke run (< 60 s): tiny sizes, 1 repetition

Items (JSON keys):
  grpo       PCLGRPOTrainer (teacher-forced segment) vs trl.GRPOTrainer: train step (loss + backward + optimizer on a
             prepared generation batch) and full step (generation + scoring + train step); every rollout is forced to
             exactly `completion_len` tokens ending in its stop token (the marker for PCL, EOS for GRPO).
  sft        PCLSFTTrainer vs trl.SFTTrainer: (a) rows without a reward vs the same rows, (b) rows with a reward vs
             plain SFT on the rendered rows (identical tokens: the cost of the reweighting alone), and (b) vs the
             original rows (what PCL costs over not doing PCL).
  memory     peak memory growth of one training step per variant (CPU: RSS high-water mark; GPU: max allocated).
  inference  a PCL-trained model in deploy mode (marker = stop), with the marker not a stop (segment written), and
             the same architecture trained without PCL: tokens and wall time per answer.
  readout    `pcl.readout.self_scores` time relative to `pcl.inference.generate` on the same answers.

The token floor of a comparison is (tokens PCL computes) / (tokens the stock trainer computes) in the timed batch:
the overhead no implementation can avoid, since the segment's tokens must go through the model.
"""

import argparse
import contextlib
import copy
import ctypes
import gc
import io
import json
import multiprocessing
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout, uninstalled

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from datasets.utils.logging import disable_progress_bar  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer  # noqa: E402

from pcl import PCLGRPOConfig, PCLGRPOTrainer, PCLSFTConfig, PCLSFTTrainer, load_pcl_model  # noqa: E402
from pcl.inference import generate, segment_tokens_of  # noqa: E402
from pcl.marker import prepare_model, segment_tokens  # noqa: E402
from pcl.readout import self_scores  # noqa: E402
from pcl.segment import DEFAULT_MARKER, SegmentFormat  # noqa: E402
from pcl.sft_trainer import render_rows  # noqa: E402
from pcl.tiny import build_char_tokenizer, build_tiny_model  # noqa: E402


# ---- sizes ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    # Training benchmarks (items 1-3)
    hidden: int
    layers: int
    heads: int
    grpo_batch: int  # rows per generation batch (prompts x num_generations)
    num_generations: int
    completion_len: int  # every GRPO rollout is exactly this many tokens, its stop token included
    sft_batch: int
    sft_completion_chars: int  # one character = one token with the char tokenizer
    reps: int
    warmup: int
    mem_steps: int
    # Inference benchmark (items 4-5): a model trained on one-digit addition
    inf_hidden: int
    inf_layers: int
    inf_heads: int
    inf_train_steps: int
    inf_lr: float
    inf_prompts: int
    inf_batch: int
    inf_reps: int
    bf16: bool = False


PRESETS = {
    # ~4.2M parameters: big enough that compute, not Python, dominates a CPU step
    "cpu": Sizes(
        hidden=256, layers=4, heads=4, grpo_batch=16, num_generations=4, completion_len=64, sft_batch=16,
        sft_completion_chars=64, reps=7, warmup=2, mem_steps=2, inf_hidden=128, inf_layers=4, inf_heads=4,
        inf_train_steps=300, inf_lr=1e-3, inf_prompts=100, inf_batch=25, inf_reps=7,
    ),
    # ~100M parameters in bf16 on a GPU
    "cuda": Sizes(
        hidden=1024, layers=8, heads=16, grpo_batch=32, num_generations=8, completion_len=64, sft_batch=32,
        sft_completion_chars=64, reps=7, warmup=2, mem_steps=2, inf_hidden=1024, inf_layers=8, inf_heads=16,
        inf_train_steps=200, inf_lr=3e-4, inf_prompts=100, inf_batch=25, inf_reps=7, bf16=True,
    ),
    # CI smoke run: proves the script works, the numbers mean nothing
    "quick": Sizes(
        hidden=32, layers=2, heads=2, grpo_batch=4, num_generations=4, completion_len=16, sft_batch=4,
        sft_completion_chars=16, reps=1, warmup=1, mem_steps=1, inf_hidden=64, inf_layers=2, inf_heads=2,
        inf_train_steps=120, inf_lr=1e-2, inf_prompts=20, inf_batch=20, inf_reps=1,
    ),
}  # fmt: skip

TARGETS = {
    "grpo_step_ratio": 1.10,  # and within 0.05 of the token floor
    "grpo_floor_gap": 0.05,
    "sft_floor_gap": 0.05,  # SFT ratio <= floor + 0.05
    "memory_ratio": 1.05,
}


# ---- timing --------------------------------------------------------------------------------------------------------


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# Primary clock of every ratio. CPU: this process's CPU time (one intra-op thread), which other jobs on a shared
# machine cannot inflate the way they inflate wall time. GPU: wall time around `torch.cuda.synchronize()`. Both
# clocks are recorded either way.
CLOCK = {"name": "cpu"}


def now() -> float:
    return time.process_time() if CLOCK["name"] == "cpu" else time.perf_counter()


def paired(fns: dict[str, Callable[[], None]], reps: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Time each variant, alternating the order inside every repetition (A B C, C B A, ...): {name: {clock: [s]}}."""
    names = list(fns)
    times = {n: {"cpu": [], "wall": []} for n in names}
    for r in range(warmup + reps):
        for n in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            gc.disable()  # no collector pauses inside a timed call
            try:
                sync()
                w0, c0 = time.perf_counter(), time.process_time()
                fns[n]()
                sync()
                w1, c1 = time.perf_counter(), time.process_time()
            finally:
                gc.enable()
            if r >= warmup:
                times[n]["wall"].append(w1 - w0)
                times[n]["cpu"].append(c1 - c0)
    return times


def primary(times: dict, name: str) -> list[float]:
    return times[name][CLOCK["name"]]


def median_ci(values: list[float], n: int = 2000, seed: int = 0) -> list[float]:
    """Bootstrap 95% interval of the median (percentile method); the full range below 3 values."""
    if len(values) < 3:
        return [min(values), max(values)]
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return [meds[int(0.025 * n)], meds[int(0.975 * n) - 1]]


def compare(times: dict, a: str, b: str) -> dict:
    """Variant `a` against baseline `b` on the primary clock: medians, and the median / range of the per-repetition
    ratios; the other clock's median ratio alongside."""
    out = {}
    for clock in (CLOCK["name"], *({"cpu", "wall"} - {CLOCK["name"]})):
        ta, tb = times[a][clock], times[b][clock]
        ratios = [x / y for x, y in zip(ta, tb, strict=True)]
        if clock == CLOCK["name"]:
            out.update({
                "clock": clock, f"{a}_s": statistics.median(ta), f"{b}_s": statistics.median(tb),
                "ratio": statistics.median(ratios), "ratio_ci95": median_ci(ratios), "ratio_min": min(ratios),
                "ratio_max": max(ratios), f"{a}_all_s": ta, f"{b}_all_s": tb,
            })  # fmt: skip
        else:
            out.update({f"{clock}_ratio": statistics.median(ratios), f"{a}_{clock}_s": statistics.median(ta),
                        f"{b}_{clock}_s": statistics.median(tb)})  # fmt: skip
    return out


# ---- setup ---------------------------------------------------------------------------------------------------------


def run_args(sizes: Sizes, cuda: bool) -> dict:
    return dict(
        bf16=sizes.bf16 and cuda,
        use_cpu=not cuda,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )


def base_model(tokenizer, sizes: Sizes, cuda: bool, inference: bool = False):
    """The benchmark's model: identical weights every time it is built (fixed seed)."""
    h, n, heads = (
        (sizes.inf_hidden, sizes.inf_layers, sizes.inf_heads)
        if inference
        else (sizes.hidden, sizes.layers, sizes.heads)
    )
    model = build_tiny_model(tokenizer, hidden_size=h, num_layers=n, num_heads=heads, seed=0)
    if sizes.bf16 and cuda:
        model = model.to(torch.bfloat16)
    return model


def train_step(trainer, inputs: dict, num_items=None) -> None:
    """One optimizer step as `Trainer.training_step` + `optimizer.step` do it, on already prepared inputs."""
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(trainer.model, dict(inputs), num_items_in_batch=num_items)
    trainer.accelerator.backward(loss)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def ready(trainer):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.create_optimizer()
    return trainer


# ---- item 1: GRPO --------------------------------------------------------------------------------------------------


def parity_reward(completions, **kwargs):
    # Deterministic mixed rewards, so advantages are non-zero and segments carry different scores
    return [float(sum(map(ord, c)) % 2) for c in completions]


def grpo_trainer(variant: str, sizes: Sizes, tokenizer, model, out_dir: str, cuda: bool):
    L = sizes.completion_len
    prompts = Dataset.from_list([{"prompt": f"{a} + {b} ="} for a in range(10) for b in range(10)])
    common = dict(
        per_device_train_batch_size=sizes.grpo_batch, num_generations=sizes.num_generations,
        max_completion_length=L, max_steps=1, log_completions=False, **run_args(sizes, cuda),
    )  # fmt: skip
    # Realistic, equal-length rollouts: no stop before token L, and token L is forced to be the stop token
    if variant == "pcl":
        stop = tokenizer.convert_tokens_to_ids(DEFAULT_MARKER)
        args = PCLGRPOConfig(
            output_dir=out_dir, generation_kwargs={"min_new_tokens": L - 1, "forced_eos_token_id": stop}, **common
        )
        cls = PCLGRPOTrainer
    else:
        stop = tokenizer.eos_token_id
        args = GRPOConfig(
            output_dir=out_dir, generation_kwargs={"min_new_tokens": L - 1, "forced_eos_token_id": stop}, **common
        )
        cls = GRPOTrainer
    trainer = cls(
        model=model, reward_funcs=parity_reward, args=args, train_dataset=prompts, processing_class=tokenizer
    )
    return ready(trainer)


def grpo_batch(trainer):
    return next(iter(trainer.get_train_dataloader()))


def grpo_token_counts(trainer, inputs: dict) -> dict:
    mask = inputs["completion_mask"]
    if hasattr(trainer, "_pcl_completion_ids"):
        completion = sum(len(ids) for ids in trainer._pcl_completion_ids)
        with_segment = int((inputs["self_assessment_target"] >= 0).sum())
    else:
        completion, with_segment = int(mask.sum()), 0
    return {
        "rows": int(mask.size(0)),
        "prompt_tokens": int(inputs["prompt_mask"].sum()),
        "completion_tokens": completion,
        "segment_tokens": int(mask.sum()) - completion,
        "rows_with_segment": with_segment,
        "completion_width": int(mask.size(1)),
    }


def bench_grpo(sizes: Sizes, tokenizer, cuda: bool, tmp: str) -> dict:
    model = base_model(tokenizer, sizes, cuda)
    trainers = {
        v: grpo_trainer(v, sizes, tokenizer, copy.deepcopy(model), f"{tmp}/grpo_{v}", cuda) for v in ("pcl", "plain")
    }
    batch = grpo_batch(trainers["pcl"])
    inputs = {}
    for v, t in trainers.items():
        torch.manual_seed(0)
        inputs[v] = t._generate_and_score_completions(batch)
    counts = {v: grpo_token_counts(trainers[v], inputs[v]) for v in trainers}
    p, q = counts["pcl"], counts["plain"]
    L = sizes.completion_len
    if p["completion_tokens"] != q["completion_tokens"] or q["completion_tokens"] != L * q["rows"]:
        raise RuntimeError(f"Rollouts are not all {L} tokens long: {counts}")
    if p["rows_with_segment"] != p["rows"]:
        raise RuntimeError(f"Some PCL rollouts got no segment: {counts}")
    token_floor = (p["completion_tokens"] + p["segment_tokens"]) / q["completion_tokens"]
    sequence_floor = (p["prompt_tokens"] + p["completion_tokens"] + p["segment_tokens"]) / (
        q["prompt_tokens"] + q["completion_tokens"]
    )

    train = paired(
        {v: (lambda t=trainers[v], x=inputs[v]: train_step(t, x)) for v in ("pcl", "plain")},
        sizes.reps, sizes.warmup,
    )  # fmt: skip

    gen_times = {"pcl": [], "plain": []}
    seeds = {"pcl": 0, "plain": 0}

    def full(v):
        # One real GRPO step (steps_per_generation = num_iterations = 1): generate + score, then train on it
        seeds[v] += 1
        torch.manual_seed(seeds[v])  # both variants sample from the same RNG stream in each repetition
        t0 = now()
        new = trainers[v]._generate_and_score_completions(batch)
        sync()
        gen_times[v].append(now() - t0)
        train_step(trainers[v], new)

    full_times = paired({v: (lambda v=v: full(v)) for v in ("pcl", "plain")}, sizes.reps, sizes.warmup)
    gen = {v: statistics.median(ts[sizes.warmup :]) for v, ts in gen_times.items()}
    full_cmp = compare(full_times, "pcl", "plain")
    full_cmp["generation_pcl_s"], full_cmp["generation_plain_s"] = gen["pcl"], gen["plain"]
    return {
        "tokens": counts,
        "token_floor": token_floor,
        "sequence_floor": sequence_floor,
        "train_step": compare(train, "pcl", "plain"),
        "full_step": full_cmp,
    }


# ---- item 2: SFT ---------------------------------------------------------------------------------------------------


def sft_rows(n: int, completion_chars: int, seed: int = 0) -> list[dict]:
    """Equal-length prompt/completion rows (no padding noise): a question and a worked chain of sums."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        text, total = "", a + b
        while len(text) < completion_chars:
            c = rng.randrange(10)
            text += f" {total}+{c}={total + c};"
            total += c
        rows.append(
            {"prompt": f"{a} + {b} =", "completion": text[:completion_chars], "reward": float(rng.random() < 0.5)}
        )
    return rows


SFT_VARIANTS = ("plain", "pcl_no_reward", "plain_rendered", "pcl_reward")


def sft_trainer(variant: str, sizes: Sizes, tokenizer, model, out_dir: str, cuda: bool):
    rows = Dataset.from_list(sft_rows(max(sizes.sft_batch, 8), sizes.sft_completion_chars))
    no_reward = rows.remove_columns("reward")
    common = dict(
        output_dir=out_dir, per_device_train_batch_size=sizes.sft_batch, max_steps=1, **run_args(sizes, cuda)
    )
    if variant == "plain":
        t = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=no_reward, processing_class=tokenizer)
    elif variant == "plain_rendered":
        rendered = render_rows(rows, SegmentFormat(), "reward")
        t = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=rendered, processing_class=tokenizer)
    else:
        data = rows if variant == "pcl_reward" else no_reward
        t = PCLSFTTrainer(model=model, args=PCLSFTConfig(**common), train_dataset=data, processing_class=tokenizer)
    return ready(t)


def sft_batch(trainer, n: int) -> tuple[dict, torch.Tensor]:
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(n)]))
    return batch, (batch["labels"] != -100).sum()


def sft_tokens(batch: dict) -> dict:
    real = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
    return {
        "tokens": int(real),
        "loss_tokens": int((batch["labels"] != -100).sum()),
        "shape": list(batch["input_ids"].shape),
    }


def bench_sft(sizes: Sizes, tokenizer, cuda: bool, tmp: str) -> dict:
    model = base_model(tokenizer, sizes, cuda)
    trainers = {
        v: sft_trainer(v, sizes, tokenizer, copy.deepcopy(model), f"{tmp}/sft_{v}", cuda) for v in SFT_VARIANTS
    }
    if trainers["pcl_reward"].train_dataset["input_ids"] != trainers["plain_rendered"].train_dataset["input_ids"]:
        raise RuntimeError("PCL-SFT and plain SFT on the rendered rows do not see the same token ids.")
    batches = {v: sft_batch(t, sizes.sft_batch) for v, t in trainers.items()}
    tokens = {v: sft_tokens(b) for v, (b, _) in batches.items()}
    times = paired(
        {v: (lambda t=trainers[v], b=batches[v]: train_step(t, *b)) for v in SFT_VARIANTS}, sizes.reps, sizes.warmup
    )

    def item(a, b):
        # Floor: tokens through the model (B x T; rows are equal-length, so no padding is involved)
        return {"token_floor": tokens[a]["tokens"] / tokens[b]["tokens"], **compare(times, a, b)}

    return {
        "tokens": tokens,
        "no_reward": item("pcl_no_reward", "plain"),  # (a) completion MARKER EOS vs completion EOS
        "reward": item("pcl_reward", "plain_rendered"),  # (b) identical tokens: the reweighting alone
        "reward_vs_unrendered": item("pcl_reward", "plain"),  # (b) vs not doing PCL at all
    }


# ---- item 3: peak memory (one subprocess per variant) --------------------------------------------------------------

MEMORY_PAIRS = {  # item: (PCL variant, stock variant)
    "grpo": ("grpo:pcl", "grpo:plain"),
    "sft_no_reward": ("sft:pcl_no_reward", "sft:plain"),
    "sft_reward": ("sft:pcl_reward", "sft:plain_rendered"),
}


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages, so setup memory is not reused silently


def _exact_malloc() -> None:
    """glibc: serve every block >= 64 KiB with mmap and unmap it on free (no dynamic threshold, no cached arenas), so
    the RSS follows the live tensors and its high-water mark is their peak, not an artefact of allocator history."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD


def memory_child(spec: str, sizes: Sizes, cuda: bool) -> dict:
    """Build one variant, then measure the peak memory growth of `mem_steps` training steps on a prepared batch."""
    task, variant = spec.split(":")
    if not cuda:
        _exact_malloc()
    tokenizer = build_char_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        model = base_model(tokenizer, sizes, cuda)
        if task == "grpo":
            trainer = grpo_trainer(variant, sizes, tokenizer, model, tmp, cuda)
            torch.manual_seed(0)
            inputs = trainer._generate_and_score_completions(grpo_batch(trainer))

            def step():
                train_step(trainer, inputs)
        else:
            trainer = sft_trainer(variant, sizes, tokenizer, model, tmp, cuda)
            batch, n = sft_batch(trainer, sizes.sft_batch)

            def step():
                train_step(trainer, batch, n)

        _trim_heap()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(sizes.mem_steps):
                step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            return {"metric": "cuda_max_memory_allocated", "base_mib": base / 2**20, "peak_mib": peak / 2**20,
                    "growth_mib": (peak - base) / 2**20}  # fmt: skip
        base = _status_kib("VmRSS")
        reset = _reset_peak_rss()
        for _ in range(sizes.mem_steps):
            step()
        peak = _status_kib("VmHWM") if reset else None
        metric = "rss_high_water_mark"
        if peak is None or base is None:  # no /proc: ru_maxrss is the lifetime peak (KiB on Linux)
            metric, base = "ru_maxrss_lifetime", base or 0
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"metric": metric, "base_mib": base / 1024, "peak_mib": peak / 1024, "growth_mib": (peak - base) / 1024}


def _memory_in_fork(spec: str, sizes: Sizes, cuda: bool, conn) -> None:
    try:
        conn.send(("ok", memory_child(spec, sizes, cuda)))
    except BaseException:  # noqa: B036 -- report anything to the parent instead of hanging it
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_memory_child(spec: str, preset: str, sizes: Sizes, cuda: bool, threads: int) -> dict:
    """One variant in its own process. CPU: a fork of this one (no re-import, the child's own RSS high-water mark);
    CUDA: a fresh interpreter (a CUDA context does not survive fork)."""
    if not cuda and "fork" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_memory_in_fork, args=(spec, sizes, cuda, child))
        proc.start()
        child.close()
        try:
            status, payload = parent.recv()
        except EOFError:
            status, payload = "error", f"exit code {proc.join() or proc.exitcode}"
        proc.join()
        if status != "ok":
            raise RuntimeError(f"Memory child {spec} failed:\n{payload}")
        return payload
    cmd = [sys.executable, os.path.abspath(__file__), "--child", spec, "--preset", preset,
           "--device", "cuda" if cuda else "cpu", "--threads", str(threads)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"Memory child {spec} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("CHILD_RESULT ") :])


def bench_memory(preset: str, sizes: Sizes, cuda: bool, threads: int) -> dict:
    results = {}
    for item, specs in MEMORY_PAIRS.items():
        pcl, plain = (run_memory_child(s, preset, sizes, cuda, threads) for s in specs)
        results[item] = {
            "pcl": pcl,
            "plain": plain,
            "growth_ratio": pcl["growth_mib"] / plain["growth_mib"] if plain["growth_mib"] > 0 else float("nan"),
            "peak_ratio": pcl["peak_mib"] / plain["peak_mib"],
        }
    return results


# ---- items 4-5: inference and readout ------------------------------------------------------------------------------


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


# ---- report --------------------------------------------------------------------------------------------------------


def check_targets(r: dict) -> list[dict]:
    out = []

    def add(name, value, target, met):
        out.append({"name": name, "value": value, "target": target, "met": bool(met)})

    g = r["grpo"]
    for key in ("train_step", "full_step"):
        ratio = g[key]["ratio"]
        add(f"grpo.{key}.ratio", ratio, f"<= {TARGETS['grpo_step_ratio']}", ratio <= TARGETS["grpo_step_ratio"])
        add(f"grpo.{key}.ratio - token_floor", ratio - g["token_floor"], f"<= {TARGETS['grpo_floor_gap']}",
            ratio - g["token_floor"] <= TARGETS["grpo_floor_gap"])  # fmt: skip
    for key in ("no_reward", "reward"):
        s = r["sft"][key]
        add(f"sft.{key}.ratio", s["ratio"], f"<= token_floor + {TARGETS['sft_floor_gap']} = "
            f"{s['token_floor'] + TARGETS['sft_floor_gap']:.3f}", s["ratio"] <= s["token_floor"] + TARGETS["sft_floor_gap"])  # fmt: skip
    for key, m in r["memory"].items():
        add(f"memory.{key}.growth_ratio", m["growth_ratio"], f"<= {TARGETS['memory_ratio']}",
            m["growth_ratio"] <= TARGETS["memory_ratio"])  # fmt: skip
    i = r["inference"]
    add("inference.deploy_extra_tokens", i["deploy_extra_tokens"], "== 0", i["deploy_extra_tokens"] == 0)
    add(
        "inference.deploy_tokens_after_marker",
        i["deploy_tokens_after_marker"],
        "== 0",
        i["deploy_tokens_after_marker"] == 0,
    )
    add("inference.time_ratio_deploy_vs_plain", i["time_ratio_deploy_vs_plain"], f"|r - 1| <= A/A noise {i['aa_ratio_noise']:.3f}",
        i["time_within_noise"])  # fmt: skip
    return out


def fmt_table(r: dict) -> str:
    g, s, m, i, ro = r["grpo"], r["sft"], r["memory"], r["inference"], r["readout"]
    ms = 1000.0
    lines = [
        f"{'item':<44}{'PCL':>12}{'stock':>12}{'ratio':>9}{'95% CI':>17}{'floor':>8}",
        "-" * 102,
    ]

    def row(name, a, b, ratio, ci=None, floor=None, unit="ms"):
        rng = f"{ci[0]:.3f}-{ci[1]:.3f}" if ci is not None else ""
        fl = f"{floor:.3f}" if floor is not None else ""
        lines.append(f"{name:<44}{a:>10.1f}{unit:>2}{b:>10.1f}{unit:>2}{ratio:>9.3f}{rng:>17}{fl:>8}")

    for key, label in (
        ("train_step", "GRPO train step (loss+backward+optim)"),
        ("full_step", "GRPO full step (generate+score+train)"),
    ):
        c = g[key]
        row(label, c["pcl_s"] * ms, c["plain_s"] * ms, c["ratio"], c["ratio_ci95"], g["token_floor"])
    c = g["full_step"]
    lines.append(
        f"{'  of which generation+scoring':<44}{c['generation_pcl_s'] * ms:>10.1f}ms{c['generation_plain_s'] * ms:>10.1f}ms"
    )
    for key, label, base in (
        ("no_reward", "SFT (a) no reward: +MARKER", "plain"),
        ("reward", "SFT (b) reward vs rendered rows (same tokens)", "plain_rendered"),
        ("reward_vs_unrendered", "SFT (b) reward vs original rows", "plain"),
    ):
        c = s[key]
        row(label, c[f"pcl_{key if key != 'reward_vs_unrendered' else 'reward'}_s"] * ms, c[f"{base}_s"] * ms,
            c["ratio"], c["ratio_ci95"], c["token_floor"])  # fmt: skip
    for key, label in (("grpo", "peak memory growth, GRPO step"), ("sft_no_reward", "peak memory growth, SFT (a)"),
                       ("sft_reward", "peak memory growth, SFT (b)")):  # fmt: skip
        if key not in m:
            continue
        c = m[key]
        row(label, c["pcl"]["growth_mib"], c["plain"]["growth_mib"], c["growth_ratio"], unit="MB")
    lines.append("-" * 102)
    lines.append(
        f"{'inference (per answer)':<44}{'tokens':>10}{i['clock'] + ' ms':>12}{'spread':>9}{'accuracy':>10}{'stops m/e/l':>14}"
    )
    for key, label in (("deploy", "(a) PCL, deploy (marker = stop)"), ("no_stop", "(b) PCL, marker not a stop"),
                       ("plain", "(c) same arch. trained without PCL")):  # fmt: skip
        c = i[key]
        st = c["stops"]
        lines.append(
            f"{label:<44}{c['tokens_per_answer']:>10.2f}{c['s_per_answer'] * ms:>12.3f}{c['spread']:>9.3f}"
            f"{c['accuracy']:>10.2f}{st['marker']:>6}/{st['eos']}/{st['length']}"
        )
    lines.append(
        f"deploy extra tokens vs (c), same answers: {i['deploy_extra_tokens']} (over {i['matched_answers']} answers); "
        f"tokens after marker: {i['deploy_tokens_after_marker']}; mean over all answers: {i['deploy_extra_tokens_mean_all']:+.2f}"
    )
    lines.append(
        f"{i['clock']} time ratio deploy/(c): {i['time_ratio_deploy_vs_plain']:.3f} (95% CI {i['time_ratio_ci95'][0]:.3f}-"
        f"{i['time_ratio_ci95'][1]:.3f}; A/A noise +-{i['aa_ratio_noise']:.3f}); (b)/(c): {i['time_ratio_no_stop_vs_plain']:.3f}"
    )
    lines.append(
        f"self-score readout / deploy generate: {ro['ratio']:.3f} ({ro['self_scores_s'] * ms:.1f} ms vs "
        f"{ro['generate_s'] * ms:.1f} ms for {i['prompts']} answers)"
    )
    if "readout_long" in r:
        rl = r["readout_long"]
        lines.append(
            f"self-score readout / generate, {rl['mean_answer_tokens']:.1f}-token answers: {rl['ratio']:.3f} "
            f"({rl['self_scores_s'] * ms:.1f} ms vs {rl['generate_s'] * ms:.1f} ms for {rl['answers']} answers)"
        )
    lines.append("-" * 102)
    for t in r["targets"]:
        v = t["value"]
        v = f"{v:.3f}" if isinstance(v, float) else str(v)
        lines.append(f"{'MET ' if t['met'] else 'MISS'} {t['name']:<48}{v:>10}  target {t['target']}")
    return "\n".join(lines)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def meta(preset: str, sizes: Sizes, cuda: bool, tokenizer) -> dict:
    with torch.device("meta"):  # shapes only, no memory
        n_params = sum(
            p.numel() for p in build_tiny_model(tokenizer, sizes.hidden, sizes.layers, sizes.heads).parameters()
        )
        n_inf = sum(
            p.numel()
            for p in build_tiny_model(tokenizer, sizes.inf_hidden, sizes.inf_layers, sizes.inf_heads).parameters()
        )
    return {
        "preset": preset,
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu: {cpu_name()}",
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "clock": CLOCK["name"],
        "dtype": "bfloat16" if sizes.bf16 and cuda else "float32",
        "params": n_params,
        "inference_params": n_inf,
        "sizes": asdict(sizes),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },  # fmt: skip
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (CI smoke run)")
    parser.add_argument("--out", default="benchmarks/results/overhead.json")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable timings on CPU)")
    parser.add_argument("--reps", type=int, default=None, help="override the preset's paired repetitions")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--preset", choices=list(PRESETS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    disable_progress_bar()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    preset = args.preset or ("quick" if args.quick else "cuda" if cuda else "cpu")
    CLOCK["name"] = "wall" if cuda else "cpu"
    sizes = PRESETS[preset]
    if args.reps is not None:
        sizes = replace(sizes, reps=args.reps)

    if args.child:
        print("CHILD_RESULT " + json.dumps(memory_child(args.child, sizes, cuda)), flush=True)
        return 0

    t0 = time.perf_counter()
    tokenizer = build_char_tokenizer()
    result = {"meta": meta(preset, sizes, cuda, tokenizer)}
    with tempfile.TemporaryDirectory() as tmp:
        # Memory first: its children fork from this process, which should hold nothing but the imports yet
        t = time.perf_counter()
        result["memory"] = {} if args.skip_memory else bench_memory(preset, sizes, cuda, args.threads)
        print(f"[memory: {time.perf_counter() - t:.0f} s]", flush=True)
        for name, fn in (("grpo", bench_grpo), ("sft", bench_sft)):
            t = time.perf_counter()
            result[name] = fn(sizes, tokenizer, cuda, tmp)
            print(f"[{name}: {time.perf_counter() - t:.0f} s]", flush=True)
        t = time.perf_counter()
        result["inference"], result["readout"] = bench_inference(sizes, tokenizer, cuda, tmp)
        result["readout_long"] = bench_readout_long(sizes, tokenizer, cuda)
        print(f"[inference: {time.perf_counter() - t:.0f} s]", flush=True)
    result["targets"] = check_targets(result)
    result["meta"]["wall_s"] = time.perf_counter() - t0

    print(fmt_table(result))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"wrote {args.out} ({result['meta']['wall_s']:.0f} s, {result['meta']['threads']} thread(s), {result['meta']['device']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
