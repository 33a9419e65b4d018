# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import json
import os

import pytest

from pcl import PCLGRPOConfig, PCLSFTConfig
from pcl.cli import main
from pcl.recipe import load_recipe, split_overrides


RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes")
PAPER = ["qwen2.5-1.5b-gsm.yaml", "llama-3.2-3b-gsm.yaml"]
# GPU recipes default to bf16 and vLLM, which this CPU machine refuses at config time
CPU = ["--bf16", "false", "--use_vllm", "false"]


def recipe(name):
    return os.path.join(RECIPES, name)


def test_split_overrides():
    flags, nested = split_overrides(["--max_steps", "5", "--stages.sft.args.seed=3", "--output_dir", "x"])
    assert flags == ["--max_steps", "5"]
    assert nested == {"stages.sft.args.seed": 3, "output_dir": "x"}
    with pytest.raises(ValueError, match="needs a value"):
        split_overrides(["--max_steps"])


def test_quickstart_parses():
    config, stages = load_recipe(recipe("quickstart.yaml"), ["--output_dir", "/tmp/qs"])
    assert [s.name for s in stages] == ["sft", "assess"]
    sft, assess = stages
    assert isinstance(sft.args, PCLSFTConfig) and sft.args.output_dir == "/tmp/qs/sft"
    assert sft.args.bf16 is False and sft.args.self_assessment_levels == 10
    assert assess.self_labelled["task"]["seed"] != sft.task.seed
    assert config["calibrate"]["task"]["seed"] >= 10**6  # held out: far from every training seed


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_parse(name):
    _, stages = load_recipe(recipe(name), CPU)
    assess, grpo = stages
    assert isinstance(grpo.args, PCLGRPOConfig)
    assert grpo.args.num_generations == 8 and grpo.args.max_completion_length == 1024
    assert 1e-5 <= grpo.args.learning_rate <= 2e-5
    assert grpo.args.vllm_mode == "colocate" and grpo.args.self_assessment_mode == "teacher_forced"
    assert grpo.reward == ["pcl.rewards:math_verify_accuracy"]
    if "llama" in name:
        assert grpo.args.self_assessment_marker == "<|reserved_special_token_10|>"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--no_such_option", "1"], "Unknown options"),
        (["--stages.sft.bogus", "1"], "unknown keys"),
        (["--stages.sft.trainer", "ppo"], "must be one of"),
        (["--stages.sft.args.no_such_field", "1"], "unknown PCLSFTConfig options"),
    ],
)
def test_bad_recipe_options(argv, match):
    with pytest.raises(ValueError, match=match):
        load_recipe(recipe("quickstart.yaml"), argv)


def test_unknown_task_name():
    with pytest.raises(ValueError, match="chain_summ"):
        config, stages = load_recipe(recipe("quickstart.yaml"), ["--stages.sft.task.name", "chain_summ"])
        from pcl.tasks import load_task

        load_task(stages[0].task)


TINY = "{hidden_size: 32, num_layers: 1, num_heads: 2, max_position_embeddings: 1024}"


@pytest.mark.slow
def test_paper_recipe_cpu_variant_runs(tmp_path):
    """The paper recipe itself, shrunk to a tiny local model and a few steps: both stages and the benchmark run."""
    argv = CPU + [
        "--output_dir", str(tmp_path), "--model.tiny", TINY, "--max_steps", "1", "--gradient_checkpointing", "false",
        "--save_strategy", "no", "--max_length", "1024",
        "--stages.assess.task.size", "8", "--stages.assess.self_labelled.task.size", "8",
        "--stages.assess.self_labelled.max_new_tokens", "4", "--stages.grpo.task.size", "8",
        "--stages.grpo.args.per_device_train_batch_size", "4", "--stages.grpo.args.num_generations", "4",
        "--stages.grpo.args.max_completion_length", "8", "--stages.grpo.args.gradient_accumulation_steps", "1",
        "--calibrate.task.size", "8", "--calibrate.max_new_tokens", "4", "--calibrate.batch_size", "8",
    ]  # fmt: skip
    assert main(["train", recipe("qwen2.5-1.5b-gsm.yaml"), *argv]) == 0
    with open(tmp_path / "calibration" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["n"] == 8 and metrics["deploy"]["with_tokens_after_marker"] == 0


@pytest.mark.slow
def test_quickstart_shortened_end_to_end(tmp_path):
    """What `./run.sh` runs, with few steps and small sets: trains, calibrates, writes the report and pictures."""
    argv = [
        "--output_dir", str(tmp_path), "--max_steps", "30", "--logging_steps", "10",
        "--stages.sft.task.size", "3000", "--stages.assess.task.size", "500",
        "--stages.assess.self_labelled.task.size", "500", "--calibrate.task.size", "300",
    ]  # fmt: skip
    assert main(["train", recipe("quickstart.yaml"), *argv]) == 0
    out = tmp_path / "calibration"
    for name in ("metrics.json", "report.md", "reliability_pcl.png", "reliability_all.png", "risk_coverage.png"):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["deploy"]["with_tokens_after_marker"] == 0
    assert metrics["n"] == 300 and metrics["n_unseen"] + metrics["n_seen_in_training"] == 300
    assert set(metrics["sources"]["full"]) >= {"pcl_expected", "pcl_written", "mean_token_prob", "sequence_prob"}
    assert "Unseen items only" in (out / "report.md").read_text()

    # The benchmark command on the same checkpoint
    code = main(["calibrate", str(tmp_path / "assess"), "--task", "chain_sum", "--size", "50",
                 "--output_dir", str(tmp_path / "again"), "--max_new_tokens", "8"])  # fmt: skip
    assert code == 0 and (tmp_path / "again" / "metrics.json").exists()


def test_calibrate_refuses_non_pcl_model(tmp_path, tokenizer):
    from pcl.tiny import build_tiny_model

    build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not trained with PCL"):
        main(["calibrate", str(tmp_path), "--task", "chain_sum", "--size", "5"])
