# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Peak memory growth of one training step per variant, each variant in its own process.

CPU: the kernel's RSS high-water mark (`VmHWM`, reset through `/proc/self/clear_refs`) minus the RSS before the first
step, with glibc set to `mmap` every block of 64 KiB or more so the RSS follows the live tensors. GPU:
`torch.cuda.max_memory_allocated` in a fresh interpreter per variant."""

import contextlib
import ctypes
import gc
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import traceback

import torch
from overhead_grpo import grpo_batch, grpo_trainer
from overhead_harness import Sizes, base_model, train_step
from overhead_sft import sft_batch, sft_trainer

from pcl.tiny import build_char_tokenizer


PAIRS = {  # item: (PCL variant, stock variant)
    "grpo": ("grpo:pcl", "grpo:plain"),
    "sft_no_reward": ("sft:pcl_no_reward", "sft:plain"),
    "sft_reward": ("sft:pcl_reward", "sft:plain_rendered"),
}
ENTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "overhead.py")  # re-run with --child on a GPU


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
    cmd = [sys.executable, ENTRY, "--child", spec, "--preset", preset,
           "--device", "cuda" if cuda else "cpu", "--threads", str(threads)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"Memory child {spec} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("CHILD_RESULT ") :])


def bench_memory(preset: str, sizes: Sizes, cuda: bool, threads: int) -> dict:
    results = {}
    for item, specs in PAIRS.items():
        pcl, plain = (run_memory_child(s, preset, sizes, cuda, threads) for s in specs)
        results[item] = {
            "pcl": pcl,
            "plain": plain,
            "growth_ratio": pcl["growth_mib"] / plain["growth_mib"] if plain["growth_mib"] > 0 else float("nan"),
            "peak_ratio": pcl["peak_mib"] / plain["peak_mib"],
        }
    return results
