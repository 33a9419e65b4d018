# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Drop-in control: PCL-GRPO (teacher-forced, default options) against plain GRPO on a model that ends at EOS.

For each seed, a tiny model is SFT-trained with TRL's plain SFTTrainer on additions (`a + b =`, a < 100, b < 10)
just long enough to get some right and stop at EOS (like an Instruct model before PCL), and is then trained from that
same checkpoint by GRPO arms with the same seed, data, steps and accuracy reward:

- `plain`: TRL's `GRPOTrainer`;
- `plain_b`: the same with another GRPO seed (data order and sampling): the run-to-run noise yardstick;
- `pcl`: `PCLGRPOTrainer` with its defaults (the README's class-name swap);
- `pcl_w0`: `PCLGRPOTrainer` with `self_assessment_weight=0` (the marker and layout without the segment loss);
- `pcl_body`: `PCLGRPOTrainer` with `self_assessment_backbone_grad=1` (the segment also trains the model body).

Training and held-out prompts are disjoint. Held-out correctness is measured per item, greedy (0/1) and expected (the
exact probability that an answer sampled at the rollouts' temperature 1 is the right sum followed by a stop token, with
no sampling noise), for the SFT base and every arm; each
arm is compared with `plain` (and `plain` with the base) by a paired bootstrap 95% interval of the accuracy
difference, per seed and pooled over seeds (items resampled within each seed). The PCL arms also report the fraction
of held-out answers that `pcl.inference.generate(..., self_score=True)` scores and its AUROC, the stop split (marker /
EOS / length) of greedy answers, the stop probability after the gold answer split between marker and EOS, and the
segment NLL of the first and last fifth of steps.

    python benchmarks/drop_in_control.py --quick          # < 1 minute on 1 CPU core, no result file
    python benchmarks/drop_in_control.py                  # 6 seeds, ~11 min on 1 core; writes benchmarks/results/drop_in_control.json
"""

import argparse
import json
import os
import random
import tempfile
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, PrinterCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer  # noqa: E402

from pcl import PCLGRPOConfig, PCLGRPOTrainer  # noqa: E402
from pcl.calibration import auroc  # noqa: E402
from pcl.inference import generate  # noqa: E402
from pcl.marker import id_list  # noqa: E402
from pcl.tiny import build_char_tokenizer, build_tiny_model  # noqa: E402


ARMS = ("plain", "plain_b", "pcl", "pcl_w0", "pcl_body")
COMMON = dict(bf16=False, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)
SPLIT_SEED = 1234  # the held-out/train split is the same for every seed
TASK = (
    "a + b (a < 100, b < 10), exact-match reward; held-out pairs disjoint from training pairs; per-item correctness "
    "greedy (0/1) and expected (exact probability of the right answer, then a stop, sampled at temperature 1)"
)


def split(n_held: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Disjoint held-out and training pairs of additions `a + b`, a < 100, b < 10."""
    pairs = [(a, b) for a in range(100) for b in range(10)]
    random.Random(SPLIT_SEED).shuffle(pairs)
    return pairs[:n_held], pairs[n_held:]


def prompt(a: int, b: int) -> str:
    return f"{a} + {b} ="


def accuracy(completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]


def base_model(out: str, train, sft_steps: int, seed: int) -> str:
    """A tiny model SFT-trained (plain TRL) to answer and stop at EOS; its tokenizer has no marker."""
    tok = build_char_tokenizer(marker=None)
    model = build_tiny_model(tok, hidden_size=64, num_layers=2, num_heads=4, seed=seed)
    rows = [{"prompt": prompt(a, b), "completion": f" {a + b}"} for a, b in train]
    args = SFTConfig(
        output_dir=os.path.join(out, "sft"), max_steps=sft_steps, learning_rate=3e-3, per_device_train_batch_size=32,
        logging_steps=sft_steps, seed=seed, **COMMON,
    )  # fmt: skip
    trainer = SFTTrainer(model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    path = os.path.join(out, f"base{seed}")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def greedy(model, tok, held) -> list[float]:
    """Per-item greedy correctness (0/1) on the held-out pairs (transformers' generate, the model's own stop ids)."""
    enc = tok([prompt(a, b) for a, b in held], return_tensors="pt", padding=True)
    with torch.no_grad():
        ids = model.eval().generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(ids[:, enc["input_ids"].size(1) :], skip_special_tokens=True)
    return [float(t.strip() == str(a + b)) for t, (a, b) in zip(texts, held, strict=True)]


def expected(model, tok, held) -> list[float]:
    """Per-item probability that an answer sampled at temperature 1 is ` {a + b}` followed by one of the model's stop
    ids: the sampled accuracy in expectation, computed exactly from one forward pass. (Estimating it by sampling adds
    noise that pairing cannot remove: models with different vocabulary sizes draw different random streams.)"""
    stops = id_list(model.generation_config.eos_token_id)
    answers = [f" {a + b}" for a, b in held]
    enc = tok(
        [prompt(a, b) + ans for (a, b), ans in zip(held, answers, strict=True)], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        logp = model.eval()(**enc).logits.float().log_softmax(-1)
    ids, length = enc["input_ids"], enc["input_ids"].size(1)  # left-padded: every answer ends at the last position
    out = []
    for i, ans in enumerate(answers):
        n = len(tok(ans, add_special_tokens=False)["input_ids"])
        answer = logp[i, length - n - 1 : length - 1].gather(-1, ids[i, length - n :, None]).sum()
        out.append((answer + logp[i, length - 1, stops].logsumexp(-1)).exp().item())
    return out


def run(kind: str, path: str, out: str, train, held, steps: int, lr: float, seed: int) -> dict:
    tok = build_char_tokenizer(marker=None)  # the PCL trainer adds the marker, as it would to a user's tokenizer
    rows = [{"prompt": prompt(a, b), "answer": str(a + b)} for a, b in train]
    config = dict(
        output_dir=os.path.join(out, kind), max_steps=steps, learning_rate=lr, per_device_train_batch_size=32,
        num_generations=8, max_completion_length=6, logging_steps=1, log_completions=False, seed=seed, **COMMON,
    )  # fmt: skip
    plain = kind.startswith("plain")
    cls, cfg = (GRPOTrainer, GRPOConfig) if plain else (PCLGRPOTrainer, PCLGRPOConfig)
    if kind == "plain_b":  # the noise yardstick: plain GRPO again, another seed (data order and sampling)
        config["seed"] = seed + 1000
    if kind == "pcl_w0":
        config["self_assessment_weight"] = 0.0
    if kind == "pcl_body":  # the segment also trains the body (PCL-SFT's behaviour)
        config["self_assessment_backbone_grad"] = 1.0
    trainer = cls(path, accuracy, args=cfg(**config), train_dataset=Dataset.from_list(rows), processing_class=tok)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "reward" in log]
    k = max(1, len(logs) // 5)
    mean = lambda key, part: sum(log.get(key, float("nan")) for log in part) / len(part)  # noqa: E731
    model = trainer.model.eval()
    result = {"reward_first": mean("reward", logs[:k]), "reward_last": mean("reward", logs[-k:])}
    result["correct"] = greedy(model, tok, held)
    result["greedy_accuracy"] = float(np.mean(result["correct"]))
    result["expected"] = expected(model, tok, held)
    result["expected_accuracy"] = float(np.mean(result["expected"]))
    if plain:
        return result
    result["segment_nll_first"] = mean("self_assessment/nll", logs[:k])
    result["segment_nll_last"] = mean("self_assessment/nll", logs[-k:])
    gens = generate(
        model, tok, [prompt(a, b) for a, b in held], max_new_tokens=6, show_progress=False, self_score=True
    )
    for stop in ("marker", "eos", "length"):
        result[f"frac_stop_{stop}"] = sum(g.stop == stop for g in gens) / len(gens)
    result["frac_self_scored"] = sum(g.self_score is not None for g in gens) / len(gens)
    scored = [(g.self_score, c) for g, c in zip(gens, result["correct"], strict=True) if g.self_score is not None]
    if scored:
        roc = auroc([s for s, _ in scored], [c for _, c in scored])
        result["self_score_auroc"] = float("nan") if roc is None else roc
    # After the gold answer: how the stop mass splits between the marker and EOS
    marker, eos = trainer.segment_tokens.marker_id, tok.eos_token_id
    enc = tok([f"{prompt(a, b)} {a + b}" for a, b in held], return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = model(**enc).logits[:, -1].softmax(-1)
    result["p_marker_at_stop"] = probs[:, marker].mean().item()
    result["p_eos_at_stop"] = probs[:, eos].mean().item()
    return result


def paired_diff(a: list[list[float]], b: list[list[float]], n_boot: int = 2000, seed: int = 0) -> dict:
    """Accuracy of `a` minus `b` on the same items, with a paired percentile-bootstrap 95% interval.

    `a` and `b` hold one correctness list per seed; each resample draws items with replacement within every seed
    (one shared index for both arms), so the interval reflects the difference, not the arms' separate noise.
    """
    a, b = [np.asarray(x, dtype=float) for x in a], [np.asarray(x, dtype=float) for x in b]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = [rng.integers(0, len(x), size=len(x)) for x in a]
        diffs.append(np.mean(np.concatenate([x[i] - y[i] for x, y, i in zip(a, b, idx, strict=True)])))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    diff = float(np.mean(np.concatenate([x - y for x, y in zip(a, b, strict=True)])))
    verdict = "higher" if lo > 0 else "lower" if hi < 0 else "tie"
    return {"diff": diff, "ci": [float(lo), float(hi)], "verdict": verdict}


def comparisons(per_seed: list[dict], key: str) -> dict:
    """Paired differences of held-out correctness (`key`: "correct" greedy, "expected"): each arm against plain
    GRPO, and plain GRPO against its SFT base."""
    arms = [arm for arm in per_seed[0]["arms"] if arm != "plain"]
    pairs = {"plain - base": ("plain", "base"), **{f"{arm} - plain": (arm, "plain") for arm in arms}}
    correct = lambda s, arm: s["base"][key] if arm == "base" else s["arms"][arm][key]  # noqa: E731
    out = {"pooled": {k: paired_diff([correct(s, x) for s in per_seed], [correct(s, y) for s in per_seed])
                      for k, (x, y) in pairs.items()}}  # fmt: skip
    for s in per_seed:
        out[f"seed{s['seed']}"] = {k: paired_diff([correct(s, x)], [correct(s, y)]) for k, (x, y) in pairs.items()}
    return out


def summary(result: dict) -> dict:
    """A run's metrics for the JSON file, with its per-item correctness (held-out order) kept so every comparison can
    be recomputed: greedy as a 0/1 string, expected as probabilities (4 decimals)."""
    out = {k: v for k, v in result.items() if k not in ("correct", "expected")}
    out["greedy_accuracy"] = float(np.mean(result["correct"]))
    out["expected_accuracy"] = float(np.mean(result["expected"]))
    out["correct"] = "".join(str(int(c)) for c in result["correct"])
    out["expected"] = [round(p, 4) for p in result["expected"]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, 150 SFT steps, 8 GRPO steps, 100 held-out items, no result file"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--steps", type=int, default=100, help="GRPO steps per arm")
    parser.add_argument("--sft-steps", type=int, default=350)
    parser.add_argument("--held", type=int, default=400, help="held-out pairs (disjoint from training)")
    parser.add_argument("--lr", type=float, default=1e-4, help="GRPO learning rate")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="arms to run (plain always runs)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "drop_in_control.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.seeds, args.sft_steps, args.steps, args.held = [0], 150, 8, 100
    held, train = split(args.held)
    start = time.time()
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            path = base_model(tmp, train, args.sft_steps, seed)
            tok, model = build_char_tokenizer(marker=None), AutoModelForCausalLM.from_pretrained(path)
            base = {"correct": greedy(model, tok, held), "expected": expected(model, tok, held)}
            kinds = ["plain", *(arm for arm in args.arms if arm != "plain")]
            arms = {kind: run(kind, path, tmp, train, held, args.steps, args.lr, seed) for kind in kinds}
            per_seed.append({"seed": seed, "base": base, "arms": arms})
    stats = {"greedy": comparisons(per_seed, "correct"), "expected": comparisons(per_seed, "expected")}
    for s in per_seed:
        print(  # noqa: T201
            f"seed {s['seed']}: base accuracy greedy {np.mean(s['base']['correct']):.3f}, "
            f"expected {np.mean(s['base']['expected']):.3f}"
        )
        keys = sorted({k for r in s["arms"].values() for k in r if k not in ("correct", "expected")})
        print(f"{'metric':<22}" + "".join(f"{k:>10}" for k in s["arms"]))  # noqa: T201
        for key in keys:
            print(f"{key:<22}" + "".join(f"{r.get(key, float('nan')):>10.3f}" for r in s["arms"].values()))  # noqa: T201
    for measure, groups in stats.items():
        for group, diffs in groups.items():
            for name, d in diffs.items():
                line = f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] {d['verdict']}"
                print(f"{measure:<8} {group:<8} {name:<18} {line}")  # noqa: T201
    print(f"elapsed {time.time() - start:.0f} s")  # noqa: T201
    if not args.quick:
        record = {
            "command": f"python benchmarks/drop_in_control.py --seeds {' '.join(map(str, args.seeds))} "
            f"--steps {args.steps} --sft-steps {args.sft_steps} --held {args.held} --lr {args.lr} "
            f"--arms {' '.join(args.arms)}",
            "task": TASK,
            "n_held": args.held, "n_train": len(train), "seeds": args.seeds, "sft_steps": args.sft_steps,
            "grpo_steps": args.steps, "lr": args.lr, "comparisons": stats,
            "per_seed": [
                {"seed": s["seed"], "base": summary(s["base"]), "arms": {k: summary(r) for k, r in s["arms"].items()}}
                for s in per_seed
            ],
        }  # fmt: skip
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
