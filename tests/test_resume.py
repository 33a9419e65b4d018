# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Kill a PCL training run right after a checkpoint, resume it in a new process, and compare with a run that was never
interrupted (same seed). Also: resume-specific broken checkpoints fail with errors that name the problem.

Runs `tests/distributed/train_tiny.py` as a single process (`python train_tiny.py ...`).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from pcl import PCLSFTConfig, PCLSFTTrainer
from pcl.marker import load_pcl_model
from pcl.tiny import build_char_tokenizer


SCRIPT = Path(__file__).resolve().parent / "distributed" / "train_tiny.py"
MAX_STEPS, SAVE_STEPS = 6, 3
CONFIG = {"max_steps": MAX_STEPS, "save_strategy": "steps", "save_steps": SAVE_STEPS}
TIMEOUT = 600

pytestmark = pytest.mark.slow


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "PYTEST_"))}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    return env


def command(trainer: str, out: Path, base: Path, *args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), trainer, str(out), "--base", str(base), "--config", json.dumps(CONFIG), *args]


def run(trainer: str, out: Path, base: Path, *args: str) -> dict:
    proc = subprocess.run(
        command(trainer, out, base, *args), env=child_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    with open(out / "result.json") as f:
        return json.load(f)


def run_and_kill(trainer: str, out: Path, base: Path, *args: str) -> Path:
    """Start a run, SIGKILL it once checkpoint-SAVE_STEPS is complete (its trainer_state.json is written last)."""
    checkpoint = out / f"checkpoint-{SAVE_STEPS}"
    log = out.parent / f"{out.name}.log"  # a file, not a pipe: a full pipe would block the child
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            command(trainer, out, base, "--pause-after-save", str(SAVE_STEPS), *args),
            env=child_env(), stdout=stderr, stderr=stderr,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (checkpoint / "trainer_state.json").exists():
            if proc.poll() is not None:
                pytest.fail(f"The run ended (rc {proc.returncode}) before checkpoint-{SAVE_STEPS}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"No checkpoint-{SAVE_STEPS} after {TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists() and not (out / f"checkpoint-{MAX_STEPS}").exists()
    return checkpoint


def max_abs_diff(dir_a: str, dir_b: str) -> float:
    a, b = load_file(os.path.join(dir_a, "model.safetensors")), load_file(os.path.join(dir_b, "model.safetensors"))
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def metric(result: dict, key: str) -> dict[int, float]:
    return {log["step"]: log[key] for log in result["log_history"] if key in log}


def resume_and_compare(trainer: str, tmp_path: Path, *args: str):
    base = tmp_path / "base"
    straight = run(trainer, tmp_path / "straight", base, *args)
    checkpoint = run_and_kill(trainer, tmp_path / "killed", base, *args)
    resumed = run(trainer, tmp_path / "killed", base, "--resume", *args)

    assert straight["global_step"] == resumed["global_step"] == MAX_STEPS
    # Resumed at the checkpoint's step, with the checkpoint's (non-empty) Adam moments
    opt = resumed["optimizer_at_first_step"]
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    assert opt["global_step"] == SAVE_STEPS and opt["num_tensors"] == len(saved) > 0
    expected = sum(float(s["exp_avg"].abs().sum()) for s in saved.values())
    assert opt["exp_avg_abs_sum"] == pytest.approx(expected, rel=1e-6) and expected > 0
    # The marker keeps its id: the checkpoint's tokenizer, the resumed trainer's and the final model's agree
    _, _, ckpt_tokens = load_pcl_model(str(checkpoint))
    final_model, _, final_tokens = load_pcl_model(resumed["final_dir"])
    assert ckpt_tokens.marker_id == final_tokens.marker_id == resumed["marker_id"] == straight["marker_id"]
    assert final_tokens.marker_id in final_model.generation_config.eos_token_id
    # The log history of the first run comes back with the checkpoint, then continues
    assert sorted(metric(resumed, "self_assessment/nll")) == list(range(1, MAX_STEPS + 1))
    return straight, resumed


def test_sft_resume_matches_uninterrupted_run(tmp_path):
    """PCL-SFT from a base tokenizer without the marker (so the resumed trainer must add it and resize the embeddings
    again before loading the checkpoint). Measured: the resumed run's final weights equal the uninterrupted run's
    (max abs diff 0.0 on this machine); the test allows 1e-5, and per-step metrics to a relative 1e-5."""
    straight, resumed = resume_and_compare("sft", tmp_path, "--no-marker")
    assert resumed["embedding_rows"] == resumed["len_tokenizer"] == straight["embedding_rows"]
    for key in ("loss", "self_assessment/nll"):
        assert metric(resumed, key) == pytest.approx(metric(straight, key), rel=1e-5), key
    assert max_abs_diff(straight["final_dir"], resumed["final_dir"]) < 1e-5


def test_grpo_resume_matches_uninterrupted_run(tmp_path):
    """PCL-GRPO samples its rollouts, but the Trainer checkpoint restores the torch/numpy/python RNG states and the
    sampler skips the consumed batches, so the resumed run samples the same completions. Measured: final weights
    equal to the uninterrupted run's (max abs diff 0.0 on this machine); the test allows 1e-5."""
    straight, resumed = resume_and_compare("grpo", tmp_path)
    for key in ("reward", "self_assessment/nll"):
        assert metric(resumed, key) == pytest.approx(metric(straight, key), rel=1e-5), key
    assert max_abs_diff(straight["final_dir"], resumed["final_dir"]) < 1e-5


class TestBrokenCheckpoints:
    @pytest.fixture(scope="class")
    def checkpoint(self, tmp_path_factory):
        out = tmp_path_factory.mktemp("ckpt")
        run("sft", out, out / "base")
        return out / f"checkpoint-{SAVE_STEPS}"

    def test_intermediate_checkpoint_is_a_pcl_model(self, checkpoint):
        model, tokenizer, tokens = load_pcl_model(str(checkpoint))
        assert tokens.marker_id in model.generation_config.eos_token_id
        assert tokenizer.convert_ids_to_tokens(tokens.marker_id) == model.config.post_completion["marker"]

    def test_checkpoint_without_weights(self, checkpoint, tmp_path):
        broken = tmp_path / f"checkpoint-{SAVE_STEPS}"
        shutil.copytree(checkpoint, broken)
        (broken / "model.safetensors").unlink()
        with pytest.raises(FileNotFoundError, match=r"not a complete checkpoint: missing model weights"):
            load_pcl_model(str(broken))
        # Resuming training from it names the directory
        tokenizer = build_char_tokenizer()
        args = PCLSFTConfig(
            output_dir=str(tmp_path), bf16=False, report_to="none", max_steps=MAX_STEPS, disable_tqdm=True
        )
        trainer = PCLSFTTrainer(
            model=str(checkpoint.parent / "base"), args=args, processing_class=tokenizer,
            train_dataset=Dataset.from_list([{"prompt": "1 + 1 =", "completion": " 2", "reward": 1.0}] * 8),
        )  # fmt: skip
        with pytest.raises(ValueError, match=f"Can't find a valid checkpoint at {broken}"):
            trainer.train(resume_from_checkpoint=str(broken))

    def test_checkpoint_tokenizer_without_marker(self, checkpoint, tmp_path):
        broken = tmp_path / f"checkpoint-{SAVE_STEPS}"
        shutil.copytree(checkpoint, broken)
        for f in broken.glob("tokenizer*"):
            f.unlink()
        build_char_tokenizer(marker=None).save_pretrained(broken)
        with pytest.raises(ValueError, match="lacks the marker '<\\|post_completion\\|>'"):
            load_pcl_model(str(broken))
