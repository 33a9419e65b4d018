# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""pytest plugin that runs TRL's own trainer tests offline, with TRL's or PCL's classes, and records each outcome.

Loaded with `-p benchmarks.trl_suite.plugin` by `run.py`, which sets the environment it reads:

- `TRL_SUITE_CLASSES`: `stock` keeps TRL's classes; `pcl` puts `PCLGRPOTrainer`/`PCLGRPOConfig`/`PCLSFTTrainer`/
  `PCLSFTConfig` in place of TRL's names before the test modules import them (`from trl import GRPOTrainer`).
- `TRL_SUITE_DATA`: the stand-in datasets' index (`standin_data.build_all`); `load_dataset` is redirected to them.
- `TRL_SUITE_TESTS`: the test modules (and their helpers) whose `from trl... import` names are checked against the
  installed TRL.
- `TRL_SUITE_OUT`: where the per-test outcomes are written (JSON), `TRL_SUITE_TEST_TIMEOUT`: seconds per test.

Models need no patching: `run.py` points `HF_HUB_CACHE` at the stand-ins (`standins.build_all`) with
`HF_HUB_OFFLINE=1`.
"""

import ast
import importlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import datasets
import pytest


CLASSES = os.environ.get("TRL_SUITE_CLASSES", "stock")
TEST_TIMEOUT = int(os.environ.get("TRL_SUITE_TEST_TIMEOUT", "0"))
_RESULTS: dict[str, dict] = {}
_META: dict = {"classes": CLASSES, "missing_trl_names": []}


# ----------------------------------------------------------------------------------------------------------------
# Datasets: the Hub ids the tests load resolve to local parquet files
# ----------------------------------------------------------------------------------------------------------------
_INDEX = json.loads(Path(os.environ["TRL_SUITE_DATA"]).read_text()) if "TRL_SUITE_DATA" in os.environ else {}
_original_load_dataset = datasets.load_dataset


def load_dataset(path, name=None, *args, split=None, streaming=False, **kwargs):
    """`datasets.load_dataset`, reading the stand-ins for the Hub datasets in the index."""
    if path not in _INDEX:
        return _original_load_dataset(path, name, *args, split=split, streaming=streaming, **kwargs)
    configs = _INDEX[path]
    if name is None:
        if len(configs) != 1:
            raise ValueError(f"Config name is missing for {path}; pick one of {sorted(configs)}")
        name = next(iter(configs))
    if name not in configs:
        raise ValueError(f"No offline stand-in for config {name!r} of {path} (have {sorted(configs)})")
    return _original_load_dataset("parquet", data_files=configs[name], split=split, streaming=streaming)


# ----------------------------------------------------------------------------------------------------------------
# Classes: swap PCL's in before the test modules run `from trl import ...`
# ----------------------------------------------------------------------------------------------------------------
def _swap_classes() -> None:
    import trl

    import pcl

    swaps = {
        "GRPOTrainer": pcl.PCLGRPOTrainer,
        "GRPOConfig": pcl.PCLGRPOConfig,
        "SFTTrainer": pcl.PCLSFTTrainer,
        "SFTConfig": pcl.PCLSFTConfig,
    }
    for name, cls in swaps.items():
        setattr(trl, name, cls)
    _META["pcl_file"] = pcl.__file__


# ----------------------------------------------------------------------------------------------------------------
# Version skew: TRL's tests may import private helpers the installed TRL no longer has. Give those names a
# placeholder that raises when used, so the module still collects and only the tests that use them fail (in both
# runs alike); the names are listed in the results' meta.
# ----------------------------------------------------------------------------------------------------------------
def _missing_name(module: str, name: str):
    if name.startswith("is_") and name.endswith("_available"):  # an optional dependency this TRL cannot use
        return lambda *args, **kwargs: False

    def missing(*args, **kwargs):
        raise NotImplementedError(f"{module}.{name} is not in the installed trl (the tests are from another version)")

    return missing


def _fill_missing_trl_names(test_files: list[str]) -> None:
    for file in test_files:
        for node in ast.walk(ast.parse(Path(file).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trl":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        setattr(module, alias.name, _missing_name(node.module, alias.name))
                        _META["missing_trl_names"].append(f"{node.module}.{alias.name}")


def pytest_configure(config):
    """Patch before collection, i.e. before the test modules run their `from datasets/trl import ...` lines."""
    if CLASSES not in ("stock", "pcl"):
        raise ValueError(f"TRL_SUITE_CLASSES must be 'stock' or 'pcl', got {CLASSES!r}")
    datasets.load_dataset = load_dataset
    datasets.load.load_dataset = load_dataset
    if CLASSES == "pcl":
        _swap_classes()
    _fill_missing_trl_names([f for f in os.environ.get("TRL_SUITE_TESTS", "").split(os.pathsep) if f])


@pytest.fixture
def lazy_shared_datadir(request, tmp_path):
    """pytest-datadir's fixture (not installed here): a copy of the `data` folder beside the test module."""
    return Path(shutil.copytree(Path(request.path).parent / "data", tmp_path / "data"))


# ----------------------------------------------------------------------------------------------------------------
# Per-test timeout (pytest-timeout is not installed) and outcome recording
# ----------------------------------------------------------------------------------------------------------------
class TestTimeout(Exception):
    """Raised inside a test that ran past TRL_SUITE_TEST_TIMEOUT seconds."""


def _on_alarm(signum, frame):
    raise TestTimeout(f"test ran past the per-test limit of {TEST_TIMEOUT} s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    if TEST_TIMEOUT > 0:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        if TEST_TIMEOUT > 0:
            signal.alarm(0)


def first_line(text: str) -> str:
    """The first non-empty line of an error, which names its cause."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    record = _RESULTS.setdefault(item.nodeid, {"outcome": "passed", "duration": 0.0})
    record["duration"] = round(record["duration"] + report.duration, 2)
    if report.when == "call" and hasattr(report, "wasxfail"):
        record["outcome"] = "xfailed" if report.skipped else "xpassed"
    elif report.skipped and record["outcome"] == "passed":
        record["outcome"] = "skipped"
        if isinstance(report.longrepr, tuple):
            record["error"] = report.longrepr[2].removeprefix("Skipped: ")
    elif report.failed:
        record["outcome"] = "failed" if report.when == "call" else "error"
        if call.excinfo is not None:
            record["error"] = first_line(call.excinfo.exconly())
            record["error_type"] = call.excinfo.typename
        else:  # an assertion made by a hook (e.g. teardown) without an exception object
            record["error"] = first_line(str(report.longrepr))


def pytest_sessionstart(session):
    _META["started"] = time.time()


def _write(finished: bool) -> None:
    """Write the outcomes so far (after every test too, so a run killed by the overall timeout still reports)."""
    out = os.environ.get("TRL_SUITE_OUT")
    if not out:
        return
    meta = {**_META, "finished": finished, "wall_s": round(time.time() - _META["started"], 1)}
    Path(out).write_text(json.dumps({"meta": meta, "tests": _RESULTS}, indent=1, sort_keys=True))


def pytest_runtest_logfinish(nodeid, location):
    _write(finished=False)


def pytest_sessionfinish(session, exitstatus):
    _write(finished=True)
