# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Compare a `stock` and a `pcl` run of TRL's trainer tests: what passes with TRL's classes and fails with PCL's.

    python benchmarks/trl_suite/compare.py --stock stock.json --pcl pcl.json [--out benchmarks/results/trl_suite.json]

Several files per side are merged (e.g. the two test classes run as separate processes); `--stock` may also be an
earlier comparison (`benchmarks/results/trl_suite.json`), whose stock side is then reused.

Prints the regressions (passed with stock, did not pass with PCL) grouped by cause, the first line of the error with
numbers and quoted values blanked, and writes them with every test's pair of outcomes to `--out`.
"""

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path


def cause_key(line: str) -> str:
    """The cause with numbers and quoted values blanked, so the same check on different values groups together."""
    line = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", line)
    line = re.sub(r"\[[^\]]*\]", "[…]", line)  # lists of columns, shapes
    return re.sub(r"'[^']*'", "'…'", line)


def _group(tests: dict[str, dict], run: str) -> list[dict]:
    """Tests grouped by the cause of their `run` failure, largest group first."""
    groups: dict[str, list[str]] = defaultdict(list)
    examples: dict[str, str] = {}
    for nodeid, record in sorted(tests.items()):
        error = record.get(f"{run}_error")
        cause = cause_key(error) if error else f"({record[run]} without a message)"
        groups[cause].append(nodeid)
        examples.setdefault(cause, record.get(f"{run}_error", ""))
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    return [{"cause": c, "count": len(ids), "example": examples[c], "tests": ids} for c, ids in ordered]


def compare(stock: dict, pcl: dict) -> dict:
    """The comparison of two runs' outcome files (see `plugin.py`), as written to `trl_suite.json`."""
    tests = {}
    for nodeid in sorted(stock["tests"].keys() | pcl["tests"].keys()):
        record = {}
        for run, result in (("stock", stock), ("pcl", pcl)):
            outcome = result["tests"].get(nodeid, {"outcome": "not run"})
            record[run] = outcome["outcome"]
            if "error" in outcome:
                record[f"{run}_error"] = outcome["error"]
        tests[nodeid] = record
    both_ran = {n: r for n, r in tests.items() if "not run" not in (r["stock"], r["pcl"])}
    regressions = {n: r for n, r in both_ran.items() if r["stock"] == "passed" and r["pcl"] != "passed"}
    stock_failures = {n: r for n, r in both_ran.items() if r["stock"] in ("failed", "error")}
    fixed = sorted(n for n, r in both_ran.items() if r["stock"] in ("failed", "error") and r["pcl"] == "passed")
    return {
        "meta": {"stock": stock["meta"], "pcl": pcl["meta"]},
        "summary": {
            "tests": len(tests),
            "ran_in_both": len(both_ran),
            "stock": dict(Counter(r["stock"] for r in tests.values())),
            "pcl": dict(Counter(r["pcl"] for r in tests.values())),
            "stock_passed": sum(r["stock"] == "passed" for r in both_ran.values()),
            "stock_passed_pcl_not": len(regressions),
            "stock_failed_pcl_passed": len(fixed),
        },
        "regressions_by_cause": _group(regressions, "pcl"),
        "stock_failures_by_cause": _group(stock_failures, "stock"),
        "stock_failed_pcl_passed": fixed,
        "tests": tests,
    }


def print_report(result: dict) -> None:
    summary = result["summary"]
    print(f"tests: {summary['tests']} (ran in both runs: {summary['ran_in_both']})")
    print(f"stock outcomes: {summary['stock']}")
    print(f"pcl outcomes:   {summary['pcl']}")
    print(
        f"passed with stock: {summary['stock_passed']}; of those, not passed with PCL: {summary['stock_passed_pcl_not']}"
    )
    print("\nPassed with stock, not with PCL, by cause:")
    for group in result["regressions_by_cause"]:
        print(f"\n[{group['count']:3d}] {group['cause']}")
        for nodeid in group["tests"]:
            print(f"        {nodeid.split('::', 1)[-1]}")
    print("\nFailed with stock too (not comparable; mostly what the offline stand-ins cannot provide), by cause:")
    for group in result["stock_failures_by_cause"]:
        print(f"[{group['count']:3d}] {group['cause']}")


def one_side(result: dict, run: str) -> dict:
    """The `run` ("stock" or "pcl") outcomes of a comparison file, as an outcome file; an outcome file unchanged."""
    if "summary" not in result:
        return result
    tests = {}
    for nodeid, record in result["tests"].items():
        if record[run] != "not run":
            tests[nodeid] = {"outcome": record[run]}
            if f"{run}_error" in record:
                tests[nodeid]["error"] = record[f"{run}_error"]
    return {"meta": result["meta"][run], "tests": tests}


def merge(paths: list[Path], run: str) -> dict:
    """One outcome file from several runs of the same classes (a test in two files: the later file wins).

    A file may also be an earlier comparison (`trl_suite.json`): its `run` side is used, so a PCL rerun can be
    compared with the stock outcomes already recorded instead of running the stock suite again.
    """
    results = [one_side(json.loads(path.read_text()), run) for path in paths]
    tests = {nodeid: record for result in results for nodeid, record in result["tests"].items()}
    meta = results[0]["meta"] if len(results) == 1 else {"runs": [r["meta"] for r in results]}
    return {"meta": meta, "tests": tests}


def compare_files(stock_paths: list[Path], pcl_paths: list[Path], out: Path | None) -> dict:
    result = compare(merge(stock_paths, "stock"), merge(pcl_paths, "pcl"))
    print_report(result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwritten: {out}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stock", type=Path, nargs="+", required=True, help="outcomes with TRL's classes")
    parser.add_argument("--pcl", type=Path, nargs="+", required=True, help="outcomes with PCL's classes")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "trl_suite.json")
    args = parser.parse_args()
    compare_files(args.stock, args.pcl, args.out)


if __name__ == "__main__":
    main()
