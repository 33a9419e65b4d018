# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Trackers receive PCL's numbers: the `self_assessment/*` training metrics (through TRL's logging) and, at the end of
`pcl train`, the calibration benchmark (`pcl.tracking`). TensorBoard is written locally and read back."""

import importlib.machinery
import json
import logging
import os
import sys
import types

import pytest
from conftest import addition_rows, cpu_args, parity_reward
from datasets import Dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pcl import PCLGRPOConfig, PCLGRPOTrainer, PCLSFTConfig, PCLSFTTrainer
from pcl.tracking import calibration_scalars, log_calibration


def events(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalar(acc: EventAccumulator, tag: str) -> list[float]:
    return [e.value for e in acc.Scalars(tag)]


def assert_logged_as_in_history(acc: EventAccumulator, trainer) -> list[str]:
    """Every `self_assessment/*` value of the trainer's log history is in the event file at its step (float32)."""
    tags = [t for t in acc.Tags()["scalars"] if t.startswith("train/self_assessment/")]
    for tag in tags:
        key = tag.removeprefix("train/")
        expected = {h["step"]: h[key] for h in trainer.state.log_history if key in h}
        assert {e.step: e.value for e in acc.Scalars(tag)} == pytest.approx(expected, rel=1e-6), tag
    return tags


def with_tensorboard(**config) -> dict:
    return {**cpu_args(max_steps=2, logging_steps=1, **config), "report_to": ["tensorboard"]}


def test_sft_self_assessment_metrics_reach_tensorboard(tiny_model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = PCLSFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, **with_tensorboard())
    trainer = PCLSFTTrainer(tiny_model, args, train_dataset=Dataset.from_list(addition_rows(16)),
                            processing_class=tokenizer)  # fmt: skip
    trainer.train()
    tags = assert_logged_as_in_history(events(tmp_path / "tb"), trainer)
    assert {f"train/self_assessment/{name}" for name in ("loss", "nll", "accuracy")} <= set(tags)
    assert len(scalar(events(tmp_path / "tb"), "train/self_assessment/loss")) == 2


def test_grpo_self_assessment_metrics_reach_tensorboard(model_dir, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                         max_completion_length=8, log_completions=False, **with_tensorboard())  # fmt: skip
    prompts = Dataset.from_list([{"prompt": f"{a} + 1 ="} for a in range(8)])
    trainer = PCLGRPOTrainer(model_dir, reward_funcs=parity_reward, args=args, train_dataset=prompts,
                             processing_class=tokenizer)  # fmt: skip
    trainer.train()
    tags = assert_logged_as_in_history(events(tmp_path / "tb"), trainer)
    assert {"train/self_assessment/loss", "train/self_assessment/nll", "train/self_assessment/brier",
            "train/self_assessment/frac_with_segment"} <= set(tags)  # fmt: skip
    assert len(scalar(events(tmp_path / "tb"), "train/self_assessment/loss")) == 2


def sample_metrics() -> dict:
    report = {"ece_10": 0.1, "brier": 0.2, "auroc": 0.75, "aurc": 0.3, "n": 9}
    return {
        "n": 10, "accuracy": 0.6, "accuracy_unseen": None,
        "sources": {"full": {"pcl_expected": report, "sequence_prob": {**report, "auroc": None}}},
        "shifted": {"n": 4, "accuracy": 0.25, "sources": {"unseen": {"pcl_expected": {**report, "ece_10": 0.4}}}},
    }  # fmt: skip


def test_calibration_scalars():
    assert calibration_scalars(sample_metrics()) == {
        "calibration/heldout/accuracy": 0.6,
        "calibration/heldout/n": 10.0,
        "calibration/heldout/full/pcl_expected/ece_10": 0.1,
        "calibration/heldout/full/pcl_expected/brier": 0.2,
        "calibration/heldout/full/pcl_expected/auroc": 0.75,
        "calibration/heldout/full/pcl_expected/aurc": 0.3,
        "calibration/heldout/full/sequence_prob/ece_10": 0.1,  # an undefined AUROC is left out
        "calibration/heldout/full/sequence_prob/brier": 0.2,
        "calibration/heldout/full/sequence_prob/aurc": 0.3,
        "calibration/shifted/accuracy": 0.25,
        "calibration/shifted/n": 4.0,
        "calibration/shifted/unseen/pcl_expected/ece_10": 0.4,
        "calibration/shifted/unseen/pcl_expected/brier": 0.2,
        "calibration/shifted/unseen/pcl_expected/auroc": 0.75,
        "calibration/shifted/unseen/pcl_expected/aurc": 0.3,
    }


def stand_in(name: str, calls: list, active: bool = False) -> types.ModuleType:
    """A module with wandb's and trackio's logging API that records its calls (neither library is installed here)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.run = object() if active else None
    module.init = lambda **kw: calls.append(("init", kw))
    module.log = lambda data: calls.append(("log", data))
    module.Image = lambda path: ("image", os.path.basename(path))
    module.finish = lambda: calls.append(("finish",))
    return module


def test_run_api_trackers_and_skips(tmp_path, monkeypatch, caplog):
    (tmp_path / "reliability_pcl.png").write_bytes(b"png")  # only the pictures that exist are sent
    calls, active_calls = [], []
    monkeypatch.setitem(sys.modules, "trackio", stand_in("trackio", calls))
    monkeypatch.setitem(sys.modules, "wandb", stand_in("wandb", active_calls, active=True))
    monkeypatch.setenv("TRACKIO_PROJECT", "pcl-runs")
    with caplog.at_level(logging.WARNING, logger="pcl.tracking"):
        sent = log_calibration(sample_metrics(), str(tmp_path), ["trackio", "wandb", "mlflow"], "outputs/run1")
    assert sent == ["trackio", "wandb"]
    expected = {
        **calibration_scalars(sample_metrics()),
        "calibration/reliability_pcl": ("image", "reliability_pcl.png"),
    }
    assert calls == [("init", {"project": "pcl-runs", "name": "run1-calibration"}), ("log", expected), ("finish",)]
    assert active_calls == [("log", expected)]  # the training's wandb run, still open, gets them; not finished here
    assert "not sent to 'mlflow'" in caplog.text
    assert log_calibration(sample_metrics(), str(tmp_path), [], "x") == []


def test_recipe_logs_calibration_to_tensorboard(tmp_path, monkeypatch):
    """`pcl train` with `report_to: tensorboard`: the benchmark's headline numbers and pictures land beside the stage's
    training curves, equal to `metrics.json`."""
    from pcl.cli import main

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "quickstart.yaml")
    argv = ["--output_dir", str(tmp_path), "--report_to", "tensorboard", "--max_steps", "2", "--logging_steps", "1",
            "--stages.assess", "null", "--stages.polish", "null", "--stages.grpo", "null", "--calibrate.after_stages", "null",
            "--calibrate.fit_task", "null", "--stages.sft.task.size", "200", "--calibrate.task.size", "30",
            "--calibrate.shifted_task", "null", "--calibrate.self_consistency_k", "0", "--calibrate.n_boot", "50",
            "--model.tiny", "{hidden_size: 32, num_layers: 1, num_heads: 2, max_position_embeddings: 64}"]  # fmt: skip
    assert main(["train", recipe, *argv]) == 0
    metrics = json.loads((tmp_path / "calibration" / "metrics.json").read_text())
    acc = events(tmp_path / "runs" / "calibration")
    expected = calibration_scalars(metrics)
    assert "calibration/heldout/full/pcl_expected/brier" in expected
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, value in expected.items():
        assert scalar(acc, tag) == pytest.approx([value], rel=1e-6)
    assert {"calibration/reliability_pcl", "calibration/reliability_all"} <= set(acc.Tags()["images"])
    (image,) = acc.Images("calibration/reliability_pcl")
    assert image.width > 100 and image.height > 100
    # The stage's own curves, self-assessment metrics included, in its output directory
    (stage_runs,) = (tmp_path / "sft" / "runs").iterdir()
    assert len(scalar(events(stage_runs), "train/self_assessment/loss")) == 2


def test_readme_tracking_snippet(model_dir, tmp_path, monkeypatch):
    """README, "Experiment tracking and model cards": the block runs on the tiny model (CPU flags added) and leaves
    TensorBoard curves with the self-assessment metrics and a model card with PCL's section."""
    from conftest import readme_python_block

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    code = readme_python_block("### Experiment tracking and model cards")
    code = code.replace("Qwen/Qwen2.5-0.5B-Instruct", model_dir).replace("outputs/sft", str(tmp_path / "sft"))
    code = code.replace("max_steps=2)", "max_steps=2, use_cpu=True, bf16=False, disable_tqdm=True)")
    namespace = {"dataset": Dataset.from_list(addition_rows(16))}
    exec(code, namespace)
    (runs,) = (tmp_path / "sft" / "runs").iterdir()
    assert len(scalar(events(runs), "train/self_assessment/nll")) == 2
    card = (tmp_path / "sft" / "README.md").read_text()
    assert "trained with PCL-SFT" in card and "| Marker | `<|post_completion|>`" in card
