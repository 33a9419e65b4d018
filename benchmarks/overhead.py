# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""What PCL costs: training step time, FLOPs and peak memory against the stock TRL trainers, and deploy-mode inference.

Everything is measured side by side in one run: the same model (built locally with `pcl.tiny`, identical weights),
the same data, seed and settings; the variants alternate inside every repetition (A B, then B A, ...) and each number
is the median of the paired repetitions after warm-up. Peak memory is measured in one subprocess per variant.

    python benchmarks/overhead.py                       # full run (CPU: ~3 min on 2 cores; GPU: bf16, larger model)
    python benchmarks/overhead.py --quick --out /tmp/o.json   # CI smoke run (< 60 s): tiny sizes, 1 repetition

Items (JSON keys), one module each:
  grpo          overhead_grpo.py      PCLGRPOTrainer (teacher-forced segment) vs trl.GRPOTrainer: train step and full
                                      step (generation + scoring + train step) on equal-length rollouts.
  sft           overhead_sft.py       PCLSFTTrainer vs trl.SFTTrainer: (a) rows without a reward, (b) rows with a
                                      reward vs the rendered rows (identical tokens) and vs the original rows.
  flops         overhead_flops.py     FLOPs per step (forward + backward), the same comparisons, counted exactly.
  memory        overhead_memory.py    peak memory growth of one training step per variant.
  inference     overhead_deploy.py    a PCL-trained model in deploy mode (marker = stop), with the marker not a stop,
  readout                             and the same architecture trained without PCL; the readout on its answers.
  readout_long  overhead_readout.py   the readout against generation for 64-token answers.
The shared harness (sizes, paired clock, model and trainer setup) is overhead_harness.py.

The token floor of a comparison is (tokens PCL computes) / (tokens the stock trainer computes) in the timed batch:
the overhead no implementation can avoid, since the segment's tokens must go through the model.
"""

import os
import sys


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout, uninstalled

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from datasets.utils.logging import disable_progress_bar  # noqa: E402
from overhead_deploy import bench_inference  # noqa: E402
from overhead_flops import ITEMS as FLOP_ITEMS  # noqa: E402
from overhead_flops import bench_flops, fmt_flops  # noqa: E402
from overhead_grpo import bench_grpo  # noqa: E402
from overhead_harness import CLOCK, PRESETS, load_average, meta  # noqa: E402
from overhead_memory import bench_memory, memory_child  # noqa: E402
from overhead_readout import bench_readout_long  # noqa: E402
from overhead_sft import bench_sft  # noqa: E402

from pcl.tiny import build_char_tokenizer  # noqa: E402


TARGETS = {
    "grpo_step_ratio": 1.10,  # and within 0.05 of the token floor
    "grpo_floor_gap": 0.05,
    "sft_floor_gap": 0.05,  # SFT ratio <= floor + 0.05
    "memory_ratio": 1.05,
    "flop_token_floor": 0.005,  # |FLOP ratio / token floor - 1|
    "flop_floor": 0.001,  # FLOP ratio / FLOP floor - 1: what PCL's own code adds to the stock computation
}


def check_targets(r: dict) -> list[dict]:
    out = []

    def add(name, value, target, met):
        out.append({"name": name, "value": value, "target": target, "met": bool(met)})

    g = r["grpo"]
    for key in ("train_step", "full_step"):
        ratio = g[key]["ratio"]
        add(f"grpo.{key}.ratio", ratio, f"<= {TARGETS['grpo_step_ratio']}", ratio <= TARGETS["grpo_step_ratio"])
        add(f"grpo.{key}.ratio - token_floor", ratio - g["token_floor"], f"<= {TARGETS['grpo_floor_gap']}",
            ratio - g["token_floor"] <= TARGETS["grpo_floor_gap"])  # fmt: skip
    for key in ("no_reward", "reward"):
        s = r["sft"][key]
        add(f"sft.{key}.ratio", s["ratio"], f"<= token_floor + {TARGETS['sft_floor_gap']} = "
            f"{s['token_floor'] + TARGETS['sft_floor_gap']:.3f}", s["ratio"] <= s["token_floor"] + TARGETS["sft_floor_gap"])  # fmt: skip
    for key, m in r["memory"].items():
        add(f"memory.{key}.growth_ratio", m["growth_ratio"], f"<= {TARGETS['memory_ratio']}",
            m["growth_ratio"] <= TARGETS["memory_ratio"])  # fmt: skip
    i = r["inference"]
    add("inference.deploy_extra_tokens", i["deploy_extra_tokens"], "== 0", i["deploy_extra_tokens"] == 0)
    add(
        "inference.deploy_tokens_after_marker",
        i["deploy_tokens_after_marker"],
        "== 0",
        i["deploy_tokens_after_marker"] == 0,
    )
    add("inference.time_ratio_deploy_vs_plain", i["time_ratio_deploy_vs_plain"], f"|r - 1| <= A/A noise {i['aa_ratio_noise']:.3f}",
        i["time_within_noise"])  # fmt: skip
    add("readout_long.ratio", r["readout_long"]["ratio"], "<= 0.10", r["readout_long"]["ratio"] <= 0.10)
    for group, key, _ in FLOP_ITEMS:
        c = r["flops"][group] if key is None else r["flops"][group][key]
        name = f"flops.{group}" + (f".{key}" if key else "")
        gap = c["flop_ratio"] / c["token_floor"] - 1
        add(f"{name}.ratio / token_floor - 1", gap, f"|x| <= {TARGETS['flop_token_floor']}",
            abs(gap) <= TARGETS["flop_token_floor"])  # fmt: skip
        extra = c["flop_ratio_over_floor"] - 1
        add(f"{name}.ratio / flop_floor - 1", extra, f"<= {TARGETS['flop_floor']}", extra <= TARGETS["flop_floor"])
    return out


def fmt_table(r: dict) -> str:
    g, s, m, i, ro = r["grpo"], r["sft"], r["memory"], r["inference"], r["readout"]
    ms = 1000.0
    lines = [
        f"{'item':<44}{'PCL':>12}{'stock':>12}{'ratio':>9}{'95% CI':>17}{'floor':>8}",
        "-" * 102,
    ]

    def row(name, a, b, ratio, ci=None, floor=None, unit="ms"):
        rng = f"{ci[0]:.3f}-{ci[1]:.3f}" if ci is not None else ""
        fl = f"{floor:.3f}" if floor is not None else ""
        w = 12 - len(unit)
        lines.append(f"{name:<44}{a:>{w}.1f}{unit}{b:>{w}.1f}{unit}{ratio:>9.3f}{rng:>17}{fl:>8}")

    for key, label in (
        ("train_step", "GRPO train step (loss+backward+optim)"),
        ("full_step", "GRPO full step (generate+score+train)"),
    ):
        c = g[key]
        row(label, c["pcl_s"] * ms, c["plain_s"] * ms, c["ratio"], c["ratio_ci95"], g["token_floor"])
    c = g["full_step"]
    lines.append(
        f"{'  of which generation+scoring':<44}{c['generation_pcl_s'] * ms:>10.1f}ms{c['generation_plain_s'] * ms:>10.1f}ms"
    )
    for key, label, base in (
        ("no_reward", "SFT (a) no reward: +MARKER", "plain"),
        ("reward", "SFT (b) reward vs rendered rows (same tokens)", "plain_rendered"),
        ("reward_vs_unrendered", "SFT (b) reward vs original rows", "plain"),
    ):
        c = s[key]
        row(label, c[f"pcl_{key if key != 'reward_vs_unrendered' else 'reward'}_s"] * ms, c[f"{base}_s"] * ms,
            c["ratio"], c["ratio_ci95"], c["token_floor"])  # fmt: skip
    for key, label in (("grpo", "peak memory growth, GRPO step"), ("sft_no_reward", "peak memory growth, SFT (a)"),
                       ("sft_reward", "peak memory growth, SFT (b)")):  # fmt: skip
        if key not in m:
            continue
        c = m[key]
        row(label, c["pcl"]["growth_mib"], c["plain"]["growth_mib"], c["growth_ratio"], unit="MiB")
    lines.append("-" * 102)
    lines.append(
        f"{'inference (per answer)':<44}{'tokens':>10}{i['clock'] + ' ms':>12}{'spread':>9}{'accuracy':>10}{'stops m/e/l':>14}"
    )
    for key, label in (("deploy", "(a) PCL, deploy (marker = stop)"), ("no_stop", "(b) PCL, marker not a stop"),
                       ("plain", "(c) same arch. trained without PCL")):  # fmt: skip
        c = i[key]
        st = c["stops"]
        lines.append(
            f"{label:<44}{c['tokens_per_answer']:>10.2f}{c['s_per_answer'] * ms:>12.3f}{c['spread']:>9.3f}"
            f"{c['accuracy']:>10.2f}{st['marker']:>6}/{st['eos']}/{st['length']}"
        )
    lines.append(
        f"deploy extra tokens vs (c), same answers: {i['deploy_extra_tokens']} (over {i['matched_answers']} answers); "
        f"tokens after marker: {i['deploy_tokens_after_marker']}; mean over all answers: {i['deploy_extra_tokens_mean_all']:+.2f}"
    )
    lines.append(
        f"{i['clock']} time ratio deploy/(c): {i['time_ratio_deploy_vs_plain']:.3f} (95% CI {i['time_ratio_ci95'][0]:.3f}-"
        f"{i['time_ratio_ci95'][1]:.3f}; A/A noise +-{i['aa_ratio_noise']:.3f}); (b)/(c): {i['time_ratio_no_stop_vs_plain']:.3f}"
    )
    lines.append(
        f"self-score readout / deploy generate: {ro['ratio']:.3f} ({ro['self_scores_s'] * ms:.1f} ms vs "
        f"{ro['generate_s'] * ms:.1f} ms for {i['prompts']} answers)"
    )
    if "readout_long" in r:
        rl = r["readout_long"]
        lines.append(
            f"self-score readout / generate, {rl['mean_answer_tokens']:.1f}-token answers: {rl['ratio']:.3f} "
            f"({rl['self_scores_s'] * ms:.1f} ms vs {rl['generate_s'] * ms:.1f} ms for {rl['answers']} answers)"
        )
    lines.append("-" * 102)
    lines.extend(fmt_flops(r["flops"]))
    lines.append("-" * 102)
    for t in r["targets"]:
        v = t["value"]
        v = (f"{v:.3f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}") if isinstance(v, float) else str(v)
        lines.append(f"{'MET ' if t['met'] else 'MISS'} {t['name']:<58}{v:>10}  target {t['target']}")
    return "\n".join(lines)


def describe(m: dict) -> str:
    return (
        f"{m['preset']} preset, started {m['started_utc']}, {m['wall_s']:.0f} s, {m['threads']} thread(s), "
        f"{m['device']}, torch {m['versions']['torch']}, load average {m.get('load_average_start')} at the start, "
        f"{m.get('load_average_end')} at the end"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (CI smoke run)")
    parser.add_argument("--out", default="benchmarks/results/overhead.json")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable timings on CPU)")
    parser.add_argument("--reps", type=int, default=None, help="override the preset's paired repetitions")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--preset", choices=list(PRESETS), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--show", metavar="JSON", default=None, help="print the table of a saved result and exit")
    args = parser.parse_args(argv)
    if args.show:
        with open(args.show) as f:
            result = json.load(f)
        print(fmt_table(result))
        print(f"{args.show}: {describe(result['meta'])}")
        return 0

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    disable_progress_bar()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    preset = args.preset or ("quick" if args.quick else "cuda" if cuda else "cpu")
    CLOCK["name"] = "wall" if cuda else "cpu"
    sizes = PRESETS[preset]
    if args.reps is not None:
        sizes = replace(sizes, reps=args.reps)

    if args.child:
        print("CHILD_RESULT " + json.dumps(memory_child(args.child, sizes, cuda)), flush=True)
        return 0

    t0 = time.perf_counter()
    tokenizer = build_char_tokenizer()
    result = {"meta": meta(preset, sizes, cuda, tokenizer)}
    with tempfile.TemporaryDirectory() as tmp:
        # Memory first: its children fork from this process, which should hold nothing but the imports yet
        t = time.perf_counter()
        result["memory"] = {} if args.skip_memory else bench_memory(preset, sizes, cuda, args.threads)
        print(f"[memory: {time.perf_counter() - t:.0f} s]", flush=True)
        for name, fn in (("grpo", bench_grpo), ("sft", bench_sft), ("flops", bench_flops)):
            t = time.perf_counter()
            result[name] = fn(sizes, tokenizer, cuda, tmp)
            print(f"[{name}: {time.perf_counter() - t:.0f} s]", flush=True)
        t = time.perf_counter()
        result["inference"], result["readout"] = bench_inference(sizes, tokenizer, cuda, tmp)
        result["readout_long"] = bench_readout_long(sizes, tokenizer, cuda)
        print(f"[inference: {time.perf_counter() - t:.0f} s]", flush=True)
    result["targets"] = check_targets(result)
    result["meta"]["wall_s"] = time.perf_counter() - t0
    result["meta"]["load_average_end"] = load_average()

    print(fmt_table(result))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}: {describe(result['meta'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
