# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""PCL-SFT and PCL-GRPO under 2-process DDP, DeepSpeed ZeRO-2 and ZeRO-3 on CPU (gloo), launched with
`accelerate launch` exactly as a user would (see the headers of recipes/accelerate/*_cpu.yaml).

Each run trains the tiny model of `train_tiny.py` for 3 steps; the runs are shared by the tests of this module.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from pcl.marker import load_pcl_model


HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "train_tiny.py"
RECIPES = HERE.parents[1] / "recipes" / "accelerate"
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
TIMEOUT = 600
MAX_STEPS = 3

pytestmark = pytest.mark.distributed


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launcher(mode: str) -> tuple[list[str], dict[str, str]]:
    """Command prefix and extra environment of each way of starting the script."""
    if mode == "single":
        return [sys.executable], {}
    if mode == "ddp":
        # `accelerate launch --cpu` starts one process: two-process DDP on CPU needs --multi_gpu + ACCELERATE_USE_CPU
        flags = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
        flags += ["--dynamo_backend", "no"]
        return [ACCELERATE, "launch", *flags, "--main_process_port", _free_port()], {"ACCELERATE_USE_CPU": "true"}
    # DeepSpeed: ACCELERATE_USE_CPU must stay unset (it would silently turn DeepSpeed off)
    config = RECIPES / f"{mode}_cpu.yaml"
    return [ACCELERATE, "launch", "--config_file", str(config), "--main_process_port", _free_port()], {}


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "PYTEST_"))}
    env.update(
        OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
        **extra,
    )  # fmt: skip
    return env


def run_script(mode: str, trainer: str, output_dir: Path, *args: str, config: dict | None = None) -> dict:
    for attempt in range(2):
        prefix, extra = launcher(mode)
        cmd = [*prefix, str(SCRIPT), trainer, str(output_dir), *args, "--config", json.dumps(config or {})]
        proc = subprocess.run(
            cmd, env=child_env(extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT
        )
        (output_dir / f"launch{attempt}.log").write_text(proc.stdout)
        if proc.returncode == 0:
            with open(output_dir / "result.json") as f:
                return json.load(f)
        # The free port found above may be taken before the launcher binds it: retry once with another one
        if "address already in use" not in proc.stdout.lower():
            break
    pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stdout[-8000:]}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Runs are cached per module: several tests check the same run."""
    cache = {}

    def get(mode, trainer, *args, config=None):
        key = (mode, trainer, args, json.dumps(config, sort_keys=True))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{mode}-{trainer}")
            cache[key] = run_script(mode, trainer, out, *args, config=config)
        return cache[key]

    return get


def nll_per_step(result: dict) -> list[float]:
    return [log["self_assessment/nll"] for log in result["log_history"] if "self_assessment/nll" in log]


CASES = [(mode, trainer) for mode in ("ddp", "zero2", "zero3") for trainer in ("sft", "grpo")]


@pytest.mark.parametrize("mode, trainer", CASES)
def test_trains_and_saves_a_loadable_checkpoint(run, mode, trainer):
    # Under ZeRO-3 the base tokenizer lacks the marker: the trainer adds it and resizes partitioned embeddings
    no_marker = mode == "zero3"
    result = run(mode, trainer, *(["--no-marker"] if no_marker else []))
    assert result["num_processes"] == 2
    assert result["distributed_type"] == ("MULTI_CPU" if mode == "ddp" else "DEEPSPEED")
    assert result["global_step"] == MAX_STEPS
    nll = nll_per_step(result)
    assert len(nll) == MAX_STEPS and all(math.isfinite(x) for x in nll), result["log_history"]

    model, tokenizer, tokens = load_pcl_model(result["final_dir"])
    assert tokens.marker_id == result["marker_id"]
    assert tokens.marker_id in model.generation_config.eos_token_id
    assert model.get_input_embeddings().num_embeddings == result["embedding_rows"] == len(tokenizer)
    base_dir = Path(result["final_dir"]).parent / "base"
    if no_marker:
        base_vocab = len(AutoTokenizer.from_pretrained(base_dir))
        assert len(tokenizer) == base_vocab + 1 and tokens.marker_id == base_vocab
    # The saved weights are the trained ones (ZeRO-3 gathers its partitions on save), not the base model's
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    trained = dict(model.named_parameters())
    changed = [n for n, p in base.named_parameters() if "embed" not in n and not torch.equal(p, trained[n])]
    assert len(changed) > 0.5 * len(trained)


@pytest.mark.parametrize("mode, trainer, no_marker", [("zero2", "sft", True), ("zero3", "grpo", False)])
def test_lora_adapter_under_deepspeed(run, mode, trainer, no_marker):
    """A LoRA adapter trains and saves a loadable PCL adapter: under ZeRO-2 with a new marker (its rows in the adapter),
    under ZeRO-3 with a marker the base model has (PEFT's trainable tokens, which hold a new marker's rows, call CUDA
    under ZeRO-3, so the CPU cannot run them)."""
    peft = pytest.importorskip("peft")
    # An existing marker adds no LM-head copy, so the score's rows are frozen: it learns through the adapter
    config = None if no_marker else {"self_assessment_backbone_grad": 1.0}
    result = run(mode, trainer, "--lora", *(["--no-marker"] if no_marker else []), config=config)
    assert result["num_processes"] == 2 and result["global_step"] == MAX_STEPS
    nll = nll_per_step(result)
    assert len(nll) == MAX_STEPS and all(math.isfinite(x) for x in nll), result["log_history"]
    model, tokenizer, tokens = load_pcl_model(result["final_dir"])
    assert isinstance(model, peft.PeftModel) and tokens.marker_id == result["marker_id"]
    assert tokens.marker_id in model.generation_config.eos_token_id
    config = model.peft_config["default"]
    if no_marker:
        assert config.trainable_token_indices == {"embed_tokens": [tokens.marker_id]}
        assert config.modules_to_save == ["lm_head"]
    else:
        assert config.trainable_token_indices is None and config.modules_to_save is None


def assert_same_run(a: dict, b: dict, keys: tuple[str, ...], rel: float, atol_weights: float) -> None:
    for key in keys:
        x = [log[key] for log in a["log_history"] if key in log]
        y = [log[key] for log in b["log_history"] if key in log]
        assert len(x) == len(y) == MAX_STEPS, key
        assert x == pytest.approx(y, rel=rel), key
    wa, wb = (
        load_file(Path(a["final_dir"]) / "model.safetensors"),
        load_file(Path(b["final_dir"]) / "model.safetensors"),
    )
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < atol_weights


def test_sft_metrics_match_single_process(run):
    """Same global batch (1 process x 8 rows vs 2 DDP processes x 4 rows), same seed and data.

    The seedable sampler gives both runs the same permutation and DDP's ranks take consecutive slices of it, so the
    global batches are identical; only the padding width of each micro-batch differs. Tolerance: every logged `loss`,
    `self_assessment/nll` and `grad_norm` within a relative 1e-5 (measured 2e-7), final weights within 1e-5 (measured
    max abs diff 3e-7).
    """
    ddp = run("ddp", "sft")
    single = run("single", "sft", config={"per_device_train_batch_size": 8})
    assert single["num_processes"] == 1
    assert_same_run(single, ddp, ("loss", "self_assessment/nll", "grad_norm"), rel=1e-5, atol_weights=1e-5)


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
def test_zero2_matches_ddp(run, trainer):
    """ZeRO-2 and DDP runs from the same base, seed and data train the same model (GRPO samples the same rollouts:
    each rank's generator is seeded alike). Tolerance: metrics within a relative 1e-5 (measured <= 1.2e-7, GRPO's
    loss, reward and NLL identical), final weights within 1e-6 (measured max abs diff 1.3e-8)."""
    keys = ("loss", "self_assessment/nll", "grad_norm") + (("reward",) if trainer == "grpo" else ())
    assert_same_run(run("ddp", trainer), run("zero2", trainer), keys, rel=1e-5, atol_weights=1e-6)


@pytest.mark.distributed
def test_pcl_train_recipe_under_zero3(tmp_path):
    """`pcl train` itself under ZeRO-3: several stages (one Accelerator each), self-labelling and the benchmark load
    models outside the engine, the benchmark (main process only) runs no collective, and the final checkpoint is
    complete."""
    prefix, extra = launcher("zero3")
    cmd = [
        *prefix, "-m", "pcl.cli", "train", str(RECIPES.parent / "quickstart.yaml"),
        "--ddp_backend", "gloo", "--use_cpu", "false", "--bf16", "false", "--output_dir", str(tmp_path),
        "--max_steps", "2", "--disable_tqdm", "true", "--stages.sft.task.size", "200",
        "--stages.polish.task.size", "50", "--stages.assess.task.size", "50", "--stages.assess.self_labelled.task.size", "50", "--calibrate.task.size", "30",
        "--stages.grpo.task.size", "64", "--stages.grpo.args.per_device_train_batch_size", "8",
        "--stages.grpo.args.num_generations", "4", "--calibrate.fit_task.size", "30", "--calibrate.shifted_task", "null",
        "--calibrate.self_consistency_k", "0",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=child_env(extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    # every stage benchmarked (`after_stages`), the fit questions answered by the main process alone
    for stage in ("sft", "grpo", "assess"):
        metrics = json.loads((tmp_path / "calibration" / stage / "metrics.json").read_text())
        assert metrics["n"] == 30 and metrics["deploy"]["with_tokens_after_marker"] == 0
        assert len((tmp_path / "calibration" / stage / "fit_rows.jsonl").read_text().splitlines()) == 30
    model, tokenizer, tokens = load_pcl_model(str(tmp_path / "assess"))
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


@pytest.mark.distributed
def test_both_mode_refused_under_zero3(tmp_path):
    prefix, extra = launcher("zero3")
    cmd = [*prefix, str(SCRIPT), "grpo", str(tmp_path), "--config", json.dumps({"self_assessment_mode": "both"})]
    proc = subprocess.run(
        cmd, env=child_env(extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT
    )
    assert (
        proc.returncode != 0 and "`self_assessment_mode='both'` is not supported under DeepSpeed ZeRO-3" in proc.stdout
    )
