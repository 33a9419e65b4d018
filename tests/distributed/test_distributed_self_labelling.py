# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Self-labelling under 2-process DDP on CPU (gloo): each prompt is answered and each answer scored once, by one rank,
and every rank gets the rows one process makes (`self_label_tiny.py`)."""

import json
import subprocess
from pathlib import Path

import pytest
from self_label_tiny import labelled_stage
from test_distributed import child_env, launcher

from pcl.fitted_baselines import load_fit_rows
from pcl.recipe import load_task_cached
from pcl.tasks import TaskSpec


SCRIPT = Path(__file__).resolve().parent / "self_label_tiny.py"

pytestmark = pytest.mark.distributed


def label(mode: str, output_dir: Path) -> list[dict]:
    for _ in range(2):  # the launcher's free port may be taken before it binds: retry once
        prefix, extra = launcher(mode)
        proc = subprocess.run([*prefix, str(SCRIPT), str(output_dir)], env=child_env(extra), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600)  # fmt: skip
        if proc.returncode == 0 or "address already in use" not in proc.stdout.lower():
            break
    assert proc.returncode == 0, proc.stdout[-8000:]
    return [json.loads(p.read_text()) for p in sorted(output_dir.glob("rank*.json"))]


def test_each_prompt_is_answered_and_scored_once_and_rows_match_one_process(tmp_path):
    (single,) = label("single", tmp_path / "single")
    ranks = label("ddp", tmp_path / "ddp")
    assert single["world"] == 1 and [r["world"] for r in ranks] == [2, 2]

    prompts = load_task_cached(TaskSpec.from_dict(labelled_stage(str(tmp_path / "x")).self_labelled["task"]))["prompt"]
    fresh = [r["generated"][0] for r in ranks]
    assert all(fresh) and sorted(fresh[0] + fresh[1]) == sorted(prompts)  # every prompt, each on one rank only
    assert abs(len(fresh[0]) - len(fresh[1])) <= 1
    assert sorted(single["generated"][0]) == sorted(prompts)
    # Each answer is scored by the stage's reward once, by one rank
    scored = [r["scored"][0] for r in ranks]
    assert all(scored) and sorted(map(tuple, scored[0] + scored[1])) == sorted(map(tuple, single["scored"][0]))
    assert len(single["scored"][0]) == len(prompts) and abs(len(scored[0]) - len(scored[1])) <= 1
    # Greedy answers: the gathered rows are the single process's, in the same order, on every rank
    assert ranks[0]["rows"][0] == ranks[1]["rows"][0] == single["rows"][0]
    assert len(single["rows"][0]) > 0
    # Written once (by the main process), and a resumed run reads them back without generating
    assert load_fit_rows(tmp_path / "ddp" / "assess" / "self_labelled.jsonl") == single["rows"][0]
    assert [r["generated"][1] for r in ranks] == [r["scored"][1] for r in ranks] == [[], []]
    assert ranks[0]["rows"][1] == ranks[1]["rows"][1] == single["rows"][0]
