# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The overhead benchmark (benchmarks/overhead*.py): exact FLOP counts of PCL against the stock trainers, and the
script's --quick run end to end."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from overhead_flops import CPU_ATTENTION, bench_flops, count_flops, flops_grpo, flops_sft  # noqa: E402
from overhead_harness import PRESETS  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from pcl import PCLGRPOTrainer, PCLSFTTrainer  # noqa: E402
from pcl.segment import SegmentFormat  # noqa: E402
from pcl.tiny import build_tiny_model  # noqa: E402


# Wide enough (hidden 128) that the attention's quadratic term moves the FLOP ratio by < 0.5% from the token floor,
# small enough to count in seconds
SIZES = replace(PRESETS["quick"], hidden=128, layers=1, heads=2, completion_len=32, sft_completion_chars=32)
PROMPT_LEN = len("0 + 0 =")  # every benchmark prompt, one token per character


def comparisons(flops: dict) -> dict:
    return {"grpo": flops["grpo"], **{f"sft.{k}": v for k, v in flops["sft"].items()}}


@pytest.fixture(scope="module")
def flops(tmp_path_factory):
    from pcl.tiny import build_char_tokenizer

    torch.manual_seed(0)
    return bench_flops(SIZES, build_char_tokenizer(), False, str(tmp_path_factory.mktemp("flops")))


def test_flop_ratio_equals_the_token_floor(flops):
    L, C = SIZES.completion_len, SIZES.sft_completion_chars
    # Tokens through the model, PCL / stock, from the row layouts alone: GRPO `prompt completion SCORE EOS` (the
    # rollout already ends at the marker) against `prompt completion`; SFT (a) `prompt completion MARKER EOS` against
    # `prompt completion EOS`, (b) `... MARKER SCORE EOS`, against the rendered rows or the original ones
    expected = {
        "grpo": (PROMPT_LEN + L + 2) / (PROMPT_LEN + L),
        "sft.no_reward": (PROMPT_LEN + C + 2) / (PROMPT_LEN + C + 1),
        "sft.reward": 1.0,
        "sft.reward_vs_unrendered": (PROMPT_LEN + C + 3) / (PROMPT_LEN + C + 1),
    }
    for name, c in comparisons(flops).items():
        assert c["token_floor"] == pytest.approx(expected[name], rel=1e-12), name
        # The deterministic measure: the FLOPs of a PCL step grow exactly like the tokens, to 0.5%
        assert c["flop_ratio"] == pytest.approx(c["token_floor"], rel=0.005), name
        # ... and equal the stock trainer's own FLOPs on PCL's batch: PCL computes nothing beyond the segment's
        # tokens but the score levels' logits (GRPO: a `levels x hidden` product per row)
        assert 1.0 <= c["flop_ratio_over_floor"] < 1.0 + 1e-4, name
    # Exactly: PCL-SFT's reweighting is element-wise (no matrix product), and PCL-GRPO's extra products are the
    # score levels' logits (rows x levels x hidden multiply-adds, no backward) and the stop tokens' logits for the
    # marker's share of the stop mass (rows x [marker, EOS] x hidden, with backward: 3x) (teacher-forced mode)
    for key in ("no_reward", "reward", "reward_vs_unrendered"):
        assert flops["sft"][key]["pcl_flops"] == flops["sft"][key]["stock_on_pcl_batch_flops"], key
    grpo, levels, stops = flops["grpo"], SegmentFormat().levels, 2  # the char tokenizer has one EOS id
    extra = 2 * SIZES.grpo_batch * SIZES.hidden * (levels + 3 * stops)
    assert grpo["pcl_flops"] - grpo["stock_on_pcl_batch_flops"] == extra


def _with_extra_forward(cls, method: str):
    """`cls.method` that also runs the model once more without gradients (e.g. a second pass to read the score)."""
    original = getattr(cls, method)

    def patched(self, model, inputs, *args, **kwargs):
        with torch.no_grad():
            if "completion_ids" in inputs:
                model(input_ids=torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1))
            else:
                model(input_ids=inputs["input_ids"])
        return original(self, model, inputs, *args, **kwargs)

    return patched


def test_flop_check_fails_on_an_extra_forward_pass(monkeypatch, tmp_path):
    """The assertions above can fail: a PCL that ran one more forward pass (no backward) is caught by both."""
    from pcl.tiny import build_char_tokenizer

    monkeypatch.setattr(PCLGRPOTrainer, "_compute_loss", _with_extra_forward(PCLGRPOTrainer, "_compute_loss"))
    monkeypatch.setattr(PCLSFTTrainer, "compute_loss", _with_extra_forward(PCLSFTTrainer, "compute_loss"))
    tokenizer = build_char_tokenizer()
    grpo = flops_grpo(SIZES, tokenizer, False, str(tmp_path))
    sft = flops_sft(SIZES, tokenizer, False, str(tmp_path))
    for c in (grpo, sft["no_reward"], sft["reward"]):
        assert c["flop_ratio"] > c["token_floor"] * 1.2  # a forward is about 1/3 of forward + backward
        assert c["flop_ratio_over_floor"] > 1.2


def test_cpu_attention_is_counted(tokenizer):
    """torch's counter has no formula for the CPU flash-attention kernel; with the benchmark's mapping the count of a
    forward pass is the textbook one: 2 x params x tokens for every linear layer, 4 x T^2 x hidden per layer for
    `QK^T` and `AV` (the full square: the count ignores the causal mask, as torch's GPU formulas do)."""
    h, n_layers, B, T = 64, 2, 3, 10
    model = build_tiny_model(tokenizer, hidden_size=h, num_layers=n_layers, num_heads=2, seed=0)
    x = torch.randint(0, 50, (B, T))
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        model(x)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 4 * T * T * h * n_layers
    assert counter.get_total_flops() == B * (2 * T * linear + attention)
    with torch.no_grad(), FlopCounterMode(display=False) as bare:
        model(x)
    assert bare.get_total_flops() == B * 2 * T * linear  # what torch counts on its own here: no attention


def test_count_flops_includes_the_backward(tokenizer, tmp_path):
    """A step's count is forward + backward: about 3x the forward alone (2x for every linear layer's backward)."""
    from overhead_sft import sft_setup

    trainers, batches = sft_setup(SIZES, tokenizer, False, str(tmp_path), ("plain",))
    trainer, (batch, n) = trainers["plain"], batches["plain"]
    step = count_flops(trainer, batch, n)["total"]
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        trainer.model(**{k: batch[k] for k in ("input_ids", "attention_mask")})
    # The fused LM head projects only labelled positions; the plain forward projects all, so the ratio is a bit < 3
    assert 2.7 < step / counter.get_total_flops() < 3.3


@pytest.mark.slow
def test_overhead_quick(tmp_path):
    out = tmp_path / "overhead.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())

    assert {
        "meta",
        "grpo",
        "sft",
        "flops",
        "memory",
        "inference",
        "readout",
        "readout_long",
        "targets",
    } <= result.keys()
    assert result["meta"]["threads"] == 1 and result["meta"]["preset"] == "quick"
    grpo = result["grpo"]
    for step in ("train_step", "full_step"):
        c = grpo[step]
        assert len(c["pcl_all_s"]) == len(c["plain_all_s"]) == result["meta"]["sizes"]["reps"]
        assert c["ratio_min"] <= c["ratio"] <= c["ratio_max"]
    # Every rollout got its segment: `SCORE EOS` after the stopping marker, two tokens a row
    tokens = grpo["tokens"]["pcl"]
    assert tokens["rows_with_segment"] == tokens["rows"] and tokens["segment_tokens"] == 2 * tokens["rows"]
    assert grpo["token_floor"] == pytest.approx(1 + 2 / result["meta"]["sizes"]["completion_len"])
    assert result["sft"]["reward"]["token_floor"] == 1.0  # identical token work, only the reweighting differs
    assert result["sft"]["no_reward"]["token_floor"] > 1.0
    # Deterministic, so exact even at these sizes: PCL's FLOPs are the stock trainer's on PCL's batch
    for name, c in comparisons(result["flops"]).items():
        assert 1.0 <= c["flop_ratio_over_floor"] < 1.001, name
    assert set(result["memory"]) == {"grpo", "sft_no_reward", "sft_reward"}
    for item in result["memory"].values():
        assert item["pcl"]["growth_mib"] > 0 and item["plain"]["growth_mib"] > 0

    inference = result["inference"]
    assert inference["matched_answers"] > 0
    assert inference["deploy_extra_tokens"] == 0  # deploy mode: not one token more than the non-PCL model
    assert inference["deploy_tokens_after_marker"] == 0
    assert inference["deploy"]["stops"]["marker"] > 0
    assert inference["no_stop"]["stops"]["marker"] == 0  # with the marker not a stop, the segment is written
    assert inference["no_stop_extra_tokens_per_answer"] > 0
    names = {t["name"] for t in result["targets"]}
    assert {"inference.deploy_extra_tokens", "readout_long.ratio", "flops.grpo.ratio / token_floor - 1"} <= names
