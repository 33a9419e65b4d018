# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Drop-in control: PCL-GRPO (teacher-forced) against plain GRPO on a model that ends its answers at EOS.

A tiny model is first SFT-trained with TRL's plain SFTTrainer to answer one-digit additions and stop at EOS (like any
Instruct model before PCL). From that same model, plain GRPO and PCL-GRPO then run with the same seeds, data and
accuracy reward; `pcl_w0` is PCL-GRPO with `self_assessment_weight=0` (the marker and layout without the segment
loss), which separates the effect of the new stop token from that of the segment term. Reported per run: the mean reward of the first and last steps, the fraction of rollouts that stop at
the marker, the segment NLL, and after training the greedy accuracy and the fraction of answers for which
`pcl.inference.generate(..., self_score=True)` returns a self-score, and how the stop probability after the gold
answer splits between the marker and EOS. `--mean-init` is the control for the marker's initialisation: its new rows
keep transformers' mean init instead of starting as copies of EOS's.

    python benchmarks/drop_in_control.py --quick          # ~1 minute on 1 CPU core
    python benchmarks/drop_in_control.py --steps 60       # writes benchmarks/results/drop_in_control.json
    python benchmarks/drop_in_control.py --steps 60 --mean-init --out benchmarks/results/drop_in_control_mean_init.json
"""

import argparse
import json
import os
import tempfile


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer  # noqa: E402

import pcl.marker  # noqa: E402
from pcl import PCLGRPOConfig, PCLGRPOTrainer  # noqa: E402
from pcl.inference import generate  # noqa: E402
from pcl.tiny import build_char_tokenizer, build_tiny_model  # noqa: E402


PAIRS = [(a, b) for a in range(10) for b in range(10)]
COMMON = dict(bf16=False, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, seed=0)


def accuracy(completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]


def base_model(out: str, sft_steps: int) -> str:
    """A tiny model SFT-trained (plain TRL) to answer and stop at EOS; its tokenizer has no marker."""
    tok = build_char_tokenizer(marker=None)
    model = build_tiny_model(tok, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    rows = [{"prompt": f"{a} + {b} =", "completion": f" {a + b}"} for a, b in PAIRS]
    args = SFTConfig(
        output_dir=os.path.join(out, "sft"), max_steps=sft_steps, learning_rate=3e-3, per_device_train_batch_size=32,
        logging_steps=sft_steps, **COMMON,
    )  # fmt: skip
    SFTTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok).train()
    path = os.path.join(out, "base")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run(kind: str, path: str, out: str, steps: int, lr: float) -> dict:
    tok = build_char_tokenizer(marker=None)  # the trainer adds the marker (PCL) or leaves it out (plain)
    rows = [{"prompt": f"{a} + {b} =", "answer": str(a + b)} for a, b in PAIRS]
    config = dict(
        output_dir=os.path.join(out, kind), max_steps=steps, learning_rate=lr, per_device_train_batch_size=16,
        num_generations=8, max_completion_length=6, logging_steps=1, log_completions=False, **COMMON,
    )  # fmt: skip
    cls, cfg = (GRPOTrainer, GRPOConfig) if kind == "plain" else (PCLGRPOTrainer, PCLGRPOConfig)
    if kind == "pcl_w0":
        config["self_assessment_weight"] = 0.0
    torch.manual_seed(0)
    trainer = cls(path, accuracy, args=cfg(**config), train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "reward" in log]
    k = max(1, len(logs) // 5)
    mean = lambda key, part: sum(log.get(key, float("nan")) for log in part) / len(part)  # noqa: E731
    result = {
        "reward_first": mean("reward", logs[:k]),
        "reward_last": mean("reward", logs[-k:]),
        "terminated_length_last": mean("completions/mean_terminated_length", logs[-k:]),
    }
    if kind != "plain":
        result["frac_with_segment_last"] = mean("self_assessment/frac_with_segment", logs[-k:])
        result["segment_nll_first"] = mean("self_assessment/nll", logs[:k])
        result["segment_nll_last"] = mean("self_assessment/nll", logs[-k:])
    model = trainer.model.eval()
    prompts = [r["prompt"] for r in rows]
    if kind != "plain":
        gens = generate(model, tok, prompts, max_new_tokens=6, show_progress=False, self_score=True)
        result["frac_self_scored"] = sum(g.self_score is not None for g in gens) / len(gens)
        result["frac_stop_marker"] = sum(g.stop == "marker" for g in gens) / len(gens)
        texts = [g.text for g in gens]
    else:
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(ids[:, enc["input_ids"].size(1) :], skip_special_tokens=True)
    if kind != "plain":
        # After the gold answer: how the stop mass splits between the marker and EOS
        marker, eos = trainer.segment_tokens.marker_id, tok.eos_token_id
        enc = tok([f"{r['prompt']} {r['answer']}" for r in rows], return_tensors="pt", padding=True)
        with torch.no_grad():
            probs = model(**enc).logits[:, -1].softmax(-1)
        result["p_marker_at_stop"] = probs[:, marker].mean().item()
        result["p_eos_at_stop"] = probs[:, eos].mean().item()
    result["greedy_accuracy"] = sum(accuracy(texts, [r["answer"] for r in rows])) / len(rows)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 GRPO steps, 150 SFT steps, no result file")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-4, help="GRPO learning rate")
    parser.add_argument(
        "--mean-init", action="store_true", help="control: the new marker rows keep transformers' mean init, not EOS's"
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "drop_in_control.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.mean_init:

        def resize_only(model, tokenizer, tokens):
            if len(tokenizer) <= model.get_input_embeddings().num_embeddings:
                return False
            model.resize_token_embeddings(len(tokenizer))
            return True

        pcl.marker.resize_for_marker = resize_only
    steps, sft_steps = (20, 150) if args.quick else (args.steps, args.sft_steps)
    with tempfile.TemporaryDirectory() as tmp:
        path = base_model(tmp, sft_steps)
        results = {kind: run(kind, path, tmp, steps, args.lr) for kind in ("plain", "pcl_w0", "pcl")}
    keys = sorted({k for r in results.values() for k in r})
    print(f"{'metric':<26}" + "".join(f"{k:>10}" for k in results))  # noqa: T201
    for key in keys:
        print(f"{key:<26}" + "".join(f"{results[k].get(key, float('nan')):>10.3f}" for k in results))  # noqa: T201
    if not args.quick:
        with open(args.out, "w") as f:
            json.dump({"steps": steps, "sft_steps": sft_steps, "lr": args.lr, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
