# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""FLOPs per training step (forward + backward of the loss), PCL against the stock TRL trainer on the same batch,
counted with `torch.utils.flop_counter.FlopCounterMode`: deterministic, so it resolves differences of 0.1% that the
clock cannot on a shared machine.

Three numbers per comparison:
  flop_ratio   FLOPs(PCL step) / FLOPs(stock step), each on its own batch.
  flop_floor   FLOPs(stock step on PCL's batch) / FLOPs(stock step): what the stock trainer's own computation costs
               on rows as long as PCL's (GRPO: PCL's generation batch, segment included; SFT: plain `SFTTrainer` on
               PCL's token ids). It includes what makes FLOPs not proportional to tokens: attention grows with the
               square of the row length, and TRL's fused LM head projects only the positions that carry a label.
               `flop_ratio / flop_floor - 1` is then what PCL's own code adds (GRPO: the score-level logits, a
               `levels x hidden` product per row, and the stop tokens' logits for the stop term) -- an extra forward pass would add about 1/3.
  token_floor  tokens through the model (rows x width, padding included), PCL / stock: the linear approximation.

Counted: matrix products (linear layers, LM head, attention; on CPU the flash-attention kernel is added with the
formula torch uses for the GPU kernels). Element-wise work (norms, softmax, PCL's reweighting) is not counted.

    python benchmarks/overhead_flops.py            # the benchmark's CPU model (~1 min)
    python benchmarks/overhead_flops.py --quick    # the CI sizes
"""

import os
import sys


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub (standalone run)
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout, uninstalled

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402

import torch  # noqa: E402
from overhead_grpo import grpo_setup  # noqa: E402
from overhead_harness import PRESETS, Sizes, loss_and_backward, meta  # noqa: E402
from overhead_sft import sft_setup, sft_tokens  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count  # noqa: E402


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch counts the GPU attention kernels but not the CPU one, which SDPA uses here
CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def count_flops(trainer, inputs: dict, num_items=None) -> dict:
    """FLOPs of `compute_loss` + `backward` on `inputs`, in total and by operator; gradients are cleared after."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        loss_and_backward(trainer, inputs, num_items)
    trainer.model.zero_grad(set_to_none=True)
    by_op = {str(op).removeprefix("aten."): n for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": counter.get_total_flops(), "by_op": by_op}


def attention_share(flops: dict) -> float:
    attention = sum(n for op, n in flops["by_op"].items() if "attention" in op)
    return attention / flops["total"]


def comparison(pcl: dict, stock: dict, stock_same_tokens: dict, pcl_tokens: int, stock_tokens: int) -> dict:
    ratio = pcl["total"] / stock["total"]
    floor = stock_same_tokens["total"] / stock["total"]
    return {
        "pcl_flops": pcl["total"],
        "stock_flops": stock["total"],
        "stock_on_pcl_batch_flops": stock_same_tokens["total"],
        "flop_ratio": ratio,
        "flop_floor": floor,
        "flop_ratio_over_floor": ratio / floor,
        "token_floor": pcl_tokens / stock_tokens,
        "pcl_tokens": pcl_tokens,
        "stock_tokens": stock_tokens,
        "attention_share_stock": attention_share(stock),
        "pcl_by_op": pcl["by_op"],
        "stock_by_op": stock["by_op"],
    }


def flops_grpo(sizes: Sizes, tokenizer, cuda: bool, tmp: str) -> dict:
    trainers, _, inputs, counts = grpo_setup(sizes, tokenizer, cuda, tmp)
    # The stock trainer on PCL's generation batch: the same rows, segment included, without PCL's keys
    same = {k: v for k, v in inputs["pcl"].items() if not k.startswith("self_assessment")}
    flops = {
        "pcl": count_flops(trainers["pcl"], inputs["pcl"]),
        "plain": count_flops(trainers["plain"], inputs["plain"]),
        "plain_on_pcl_batch": count_flops(trainers["plain"], same),
    }

    def positions(x):  # rows x (prompt width + completion width): what the backbone runs through
        return x["prompt_ids"].numel() + x["completion_ids"].numel()

    out = comparison(
        flops["pcl"], flops["plain"], flops["plain_on_pcl_batch"], positions(inputs["pcl"]), positions(inputs["plain"])
    )
    out["tokens"] = counts
    return out


def flops_sft(sizes: Sizes, tokenizer, cuda: bool, tmp: str) -> dict:
    variants = ("plain", "plain_marker", "pcl_no_reward", "plain_rendered", "pcl_reward")
    trainers, batches = sft_setup(sizes, tokenizer, cuda, tmp, variants)
    flops = {v: count_flops(trainers[v], *batches[v]) for v in variants}
    tokens = {v: sft_tokens(batches[v][0])["tokens"] for v in variants}

    def item(pcl, stock, same):
        return comparison(flops[pcl], flops[stock], flops[same], tokens[pcl], tokens[stock])

    return {
        "no_reward": item("pcl_no_reward", "plain", "plain_marker"),  # (a) completion MARKER EOS vs completion EOS
        "reward": item("pcl_reward", "plain_rendered", "plain_rendered"),  # (b) identical tokens
        "reward_vs_unrendered": item("pcl_reward", "plain", "plain_rendered"),  # (b) vs not doing PCL
    }


def bench_flops(sizes: Sizes, tokenizer, cuda: bool, tmp: str) -> dict:
    return {"grpo": flops_grpo(sizes, tokenizer, cuda, tmp), "sft": flops_sft(sizes, tokenizer, cuda, tmp)}


ITEMS = (
    ("grpo", None, "GRPO step (loss+backward)"),
    ("sft", "no_reward", "SFT (a) no reward: +MARKER"),
    ("sft", "reward", "SFT (b) reward vs rendered rows (same tokens)"),
    ("sft", "reward_vs_unrendered", "SFT (b) reward vs original rows"),
)


def fmt_flops(flops: dict) -> list[str]:
    lines = [
        f"{'FLOPs per step (fwd+bwd)':<46}{'PCL GFLOP':>10}{'stock':>10}{'ratio':>9}{'floor':>9}"
        f"{'ratio/floor-1':>15}{'token floor':>13}",
    ]
    for group, key, label in ITEMS:
        c = flops[group] if key is None else flops[group][key]
        lines.append(
            f"{label:<46}{c['pcl_flops'] / 1e9:>10.3f}{c['stock_flops'] / 1e9:>10.3f}{c['flop_ratio']:>9.4f}"
            f"{c['flop_floor']:>9.4f}{c['flop_ratio_over_floor'] - 1:>+15.2e}{c['token_floor']:>13.4f}"
        )
    return lines


def main(argv=None) -> int:
    import warnings

    import transformers

    from pcl.tiny import build_char_tokenizer

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI smoke run's sizes")
    parser.add_argument("--out", default=None, help="also write the counts as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    preset = "quick" if args.quick else "cpu"
    tokenizer = build_char_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"meta": meta(preset, PRESETS[preset], False, tokenizer)}
        result["flops"] = bench_flops(PRESETS[preset], tokenizer, False, tmp)
    print("\n".join(fmt_flops(result["flops"])))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
