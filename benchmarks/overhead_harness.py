# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Shared harness of the overhead benchmark: sizes, the paired clock, the benchmark's model and trainer setup, and the
run's metadata. Each measurement lives in its own `overhead_*.py` module; `overhead.py` runs them all."""

import contextlib
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch
import transformers
import trl

from pcl.tiny import build_tiny_model


# ---- sizes ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    # Training benchmarks (GRPO, SFT, memory, FLOPs)
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
    # Inference benchmark (deploy mode, readout): a model trained on one-digit addition
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
    # CI smoke run: proves the script works, the timings mean nothing (the FLOP counts are still exact)
    "quick": Sizes(
        hidden=32, layers=2, heads=2, grpo_batch=4, num_generations=4, completion_len=16, sft_batch=4,
        sft_completion_chars=16, reps=1, warmup=1, mem_steps=1, inf_hidden=64, inf_layers=2, inf_heads=2,
        inf_train_steps=120, inf_lr=1e-2, inf_prompts=20, inf_batch=20, inf_reps=1,
    ),
}  # fmt: skip


# ---- paired clock --------------------------------------------------------------------------------------------------


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


# ---- model and trainer setup ---------------------------------------------------------------------------------------


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


def loss_and_backward(trainer, inputs: dict, num_items=None) -> None:
    """`compute_loss` + `backward` as `Trainer.training_step` does them, on already prepared inputs."""
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(trainer.model, dict(inputs), num_items_in_batch=num_items)
    trainer.accelerator.backward(loss)


def train_step(trainer, inputs: dict, num_items=None) -> None:
    """One optimizer step as `Trainer.training_step` + `optimizer.step` do it, on already prepared inputs."""
    loss_and_backward(trainer, inputs, num_items)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def ready(trainer):
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.create_optimizer()
    return trainer


# ---- run metadata --------------------------------------------------------------------------------------------------


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


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
        "load_average_start": load_average(),  # 1/5/15-min: how shared the machine was
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
    }
