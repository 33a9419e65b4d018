# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Run TRL's own trainer tests offline on CPU, with TRL's classes (`stock`) or PCL's swapped in (`pcl`).

    python benchmarks/trl_suite/run.py --trl-tests /work/trl-src/tests --classes stock --out stock.json
    python benchmarks/trl_suite/run.py --trl-tests /work/trl-src/tests --classes both   # + compare, one command

TRL's tests are read from `--trl-tests` (a checkout of the huggingface/trl repository's `tests/` folder; they are
not part of this repository) and copied into a scratch folder for each run. The Hub models and datasets they load
are replaced by local stand-ins built once into `--cache`. `--pcl-path` points the `pcl` run at another PCL checkout
(it goes first on PYTHONPATH). `--classes both` runs both suites and then `compare.py`, writing
`benchmarks/results/trl_suite.json`. The stock outcomes do not depend on PCL, so a rerun against new PCL code can
reuse them:

    python benchmarks/trl_suite/run.py --trl-tests /work/trl-src/tests --classes pcl --out /tmp/pcl.json \\
        --stock-from benchmarks/results/trl_suite.json
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


HARNESS_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding benchmarks/trl_suite
DEFAULT_SELECT = ["test_grpo_trainer.py::TestGRPOTrainer", "test_sft_trainer.py::TestSFTTrainer"]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pcl-trl-suite"


def build_standins(cache: Path) -> Path:
    """Build the model and dataset stand-ins into `cache` (once); return the datasets' index file."""
    code = (
        "import sys; from pathlib import Path; from benchmarks.trl_suite import standins, standin_data; "
        "c = Path(sys.argv[1]); standins.build_all(c / 'hub'); "
        "None if (c / 'data' / 'index.json').exists() else standin_data.build_all(c / 'data')"
    )
    env = {**os.environ, "PYTHONPATH": str(HARNESS_ROOT), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-c", code, str(cache)], env=env, check=True)
    return cache / "data" / "index.json"


def suite_env(args: argparse.Namespace, classes: str, out: Path, test_files: list[Path]) -> dict[str, str]:
    cache = args.cache.resolve()
    paths = [str(args.pcl_path.resolve()), str(HARNESS_ROOT)] if classes == "pcl" else [str(HARNESS_ROOT)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_CACHE": str(cache / "hub"),
        "HF_DATASETS_CACHE": str(cache / "datasets-cache"),
        "TOKENIZERS_PARALLELISM": "false",
        "CUDA_VISIBLE_DEVICES": "",  # the suites compare CPU behaviour; GPU-only tests skip themselves
        "WANDB_MODE": "disabled",
        "TRL_SUITE_CLASSES": classes,
        "TRL_SUITE_DATA": str(cache / "data" / "index.json"),
        "TRL_SUITE_TESTS": os.pathsep.join(str(f) for f in test_files),
        "TRL_SUITE_OUT": str(out.resolve()),
        "TRL_SUITE_TEST_TIMEOUT": str(args.test_timeout),
    }
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    return env


def run_suite(args: argparse.Namespace, classes: str, out: Path) -> int:
    """Run the selected tests once with `classes`; the plugin writes the per-test outcomes to `out`."""
    scratch = args.cache.resolve() / f"run-{classes}"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(args.trl_tests.resolve(), scratch / "tests")  # a package: its relative imports need the folder
    selected = [f"tests/{s}" for s in args.select]
    helpers = [scratch / "tests" / name for name in ("conftest.py", "testing_utils.py")]
    test_files = sorted({scratch / s.split("::")[0] for s in selected} | {h for h in helpers if h.exists()})
    command = [sys.executable, "-m", "pytest", "-p", "benchmarks.trl_suite.plugin", "-p", "no:cacheprovider"]
    command += ["-q", "-rN", "--tb=no", "-W", "ignore", *selected]
    if args.k:
        command += ["-k", args.k]
    command = ["timeout", str(args.total_timeout), *command]
    if args.nice:
        command = ["nice", "-n", str(args.nice), *command]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    start = time.time()
    print(f"[trl_suite] {classes}: {' '.join(command[-6:])}", flush=True)
    proc = subprocess.run(command, cwd=scratch, env=suite_env(args, classes, out, test_files))
    print(f"[trl_suite] {classes}: pytest exit {proc.returncode} after {time.time() - start:.0f} s", flush=True)
    if not out.exists():
        raise SystemExit(f"[trl_suite] {classes}: no results written (pytest exit {proc.returncode}; timed out?)")
    summary = summarize(json.loads(out.read_text()))
    print(f"[trl_suite] {classes}: {summary}", flush=True)
    return proc.returncode


def summarize(result: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in result["tests"].values():
        counts[record["outcome"]] = counts.get(record["outcome"], 0) + 1
    return dict(sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-tests", type=Path, required=True, help="TRL's tests/ folder (huggingface/trl)")
    parser.add_argument("--classes", choices=["stock", "pcl", "both"], default="both")
    parser.add_argument("--out", type=Path, help="per-test outcomes (JSON); with `both`, a folder for the two files")
    parser.add_argument("--pcl-path", type=Path, default=HARNESS_ROOT, help="PCL checkout for the `pcl` run")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="stand-ins and scratch copies")
    parser.add_argument("--select", nargs="+", default=DEFAULT_SELECT, help="test ids relative to tests/")
    parser.add_argument("-k", help="pytest -k expression, to run a subset")
    parser.add_argument("--test-timeout", type=int, default=300, help="seconds per test (0: none)")
    parser.add_argument("--total-timeout", type=int, default=4 * 3600, help="seconds per suite")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the pytest process (0: not reniced)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch's default)")
    parser.add_argument(
        "--stock-from",
        type=Path,
        nargs="+",
        help="with --classes pcl: compare with these stock outcomes (outcome files or an earlier trl_suite.json)",
    )
    parser.add_argument("--compare-out", type=Path, default=HARNESS_ROOT / "benchmarks" / "results" / "trl_suite.json")
    args = parser.parse_args()
    if not (args.trl_tests / "test_grpo_trainer.py").exists():
        raise SystemExit(f"{args.trl_tests} is not TRL's tests/ folder (no test_grpo_trainer.py)")

    build_standins(args.cache.resolve())
    if args.classes != "both":
        out = args.out or Path(f"trl_suite_{args.classes}.json")
        run_suite(args, args.classes, out)
        if args.classes == "pcl" and args.stock_from:
            from compare import compare_files  # noqa: E402 (this folder is on sys.path when run as a script)

            compare_files(args.stock_from, [out], args.compare_out)
        return
    folder = args.out or args.cache.resolve() / "results"
    outs = {classes: folder / f"{classes}.json" for classes in ("stock", "pcl")}
    for classes, out in outs.items():
        run_suite(args, classes, out)
    from compare import compare_files  # noqa: E402 (this folder is on sys.path when run as a script)

    compare_files([outs["stock"]], [outs["pcl"]], args.compare_out)


if __name__ == "__main__":
    main()
