# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import json
import os

import numpy as np
import pytest

from pcl.cli import main
from pcl.fitted_baselines import load_fit_rows
from pcl.items import write_items
from pcl.recipe import load_recipe, recipe_datasets
from pcl.splits import OverlapError
from pcl.stage_calibration import calibrated_stages, compare_stages, render_stages


QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "recipes", "quickstart.yaml")


def test_calibrated_stages_default_order_and_refusal():
    assert calibrated_stages({}, ["sft", "grpo"]) == ["grpo"]
    assert calibrated_stages({"after_stages": ["grpo", "sft"]}, ["sft", "grpo"]) == ["sft", "grpo"]
    assert calibrated_stages({"after_stages": "sft"}, ["sft", "grpo"]) == ["sft"]
    with pytest.raises(ValueError, match=r"names \['rl'\].*stages are \['sft', 'grpo'\]"):
        calibrated_stages({"after_stages": ["sft", "rl"]}, ["sft", "grpo"])
    with pytest.raises(ValueError, match="after_stages"):  # refused when the recipe is read, before training
        load_recipe(QUICKSTART, ["--calibrate.after_stages", "[sft, nope]"])


def test_fit_task_is_a_recipe_dataset_and_overlap_is_refused():
    recipe_, stages = load_recipe(QUICKSTART)
    assert "calibrate.fit_task" in recipe_datasets(recipe_, stages)
    test_seed = recipe_["calibrate"]["task"]["seed"]
    with pytest.raises(OverlapError, match=r"`calibrate.task` .* and `calibrate.fit_task` .*--calibrate.fit_task"):
        load_recipe(QUICKSTART, ["--calibrate.fit_task.seed", str(test_seed + 10)])


def _items(split, prompts, correct, seen=False):
    return [
        {"split": split, "prompt": p, "answer": "1", "gold": "1", "correct": c, "seen": seen, "difficulty": {},
         "stop": "marker", "confidence": {"pcl_expected": 0.5}}
        for p, c in zip(prompts, correct, strict=True)
    ]  # fmt: skip


def _metrics(acc):
    src = {"pcl_expected": {"ece_10": 0.1, "brier": 0.2, "auroc": 0.7}}
    return {"accuracy": acc, "accuracy_unseen": acc, "sources": {"full": src, "unseen": src}}


def test_compare_stages_pairs_accuracy_over_the_same_items(tmp_path):
    rng = np.random.default_rng(0)
    prompts = [f"q{i}" for i in range(400)]
    first = rng.random(400) < 0.4
    # the later stage fixes 60 of the first stage's errors and breaks 20 of its right answers: +40 items of 400
    later = first.copy()
    later[np.flatnonzero(~first)[:60]] = True
    later[np.flatnonzero(first)[:20]] = False
    dirs = {}
    for name, correct in (("sft", first), ("grpo", later)):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        # rows in another order: pairing is by question, not by position
        rows = _items("heldout", prompts, [float(c) for c in correct])[:: -1 if name == "grpo" else 1]
        write_items(rows, dirs[name] / "items.jsonl")
    c = compare_stages({n: str(d) for n, d in dirs.items()}, {"sft": _metrics(0.4), "grpo": _metrics(0.5)})
    paired = c["subsets"]["heldout_unseen"]["accuracy_vs_first"]["grpo"]
    assert paired["n"] == 400 and paired["diff"] == pytest.approx(40 / 400)
    # hand computation: the same bootstrap of the per-item differences
    d = later.astype(float) - first.astype(float)
    boot = np.random.default_rng(0)
    means = [d[boot.integers(0, 400, size=400)].mean() for _ in range(1000)]
    assert paired["ci"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
    assert paired["verdict"] == "higher" and "shifted" not in c["subsets"]
    text = render_stages(c)
    assert "accuracy grpo − sft (paired over 400 items): +0.100" in text
    assert "| PCL self-score (expected) | 0.100 | 0.200 | 0.700 | 0.100 | 0.200 | 0.700 |" in text


@pytest.mark.slow
def test_recipe_benchmarks_each_stage_with_the_evaluated_models_answers(tmp_path):
    """The quickstart with `after_stages: [sft, grpo, assess]` and a fit split: each benchmarked stage is evaluated on
    the same items, its baselines fit on its own answers to the fit questions, and the stages compared side by side."""
    import pcl.inference
    from pcl.marker import load_pcl_model

    tiny = "{hidden_size: 32, num_layers: 1, num_heads: 2, max_position_embeddings: 64}"
    argv = [
        "--output_dir", str(tmp_path), "--model.tiny", tiny, "--max_steps", "2", "--logging_steps", "1",
        "--stages.sft.task.size", "300", "--stages.grpo.task.size", "64", "--stages.polish.task.size", "50",
        "--stages.grpo.args.per_device_train_batch_size", "8", "--stages.grpo.args.num_generations", "4",
        "--calibrate.task.size", "40", "--calibrate.shifted_task.size", "20", "--calibrate.fit_task.size", "30",
        "--calibrate.self_consistency_k", "0", "--calibrate.max_new_tokens", "4",
    ]  # fmt: skip
    assert main(["train", QUICKSTART, *argv]) == 0
    root = tmp_path / "calibration"
    for stage in ("sft", "grpo"):
        metrics = json.loads((root / stage / "metrics.json").read_text())
        assert metrics["model"] == str(tmp_path / stage) and metrics["n"] + metrics["duplicates_dropped"] == 40
        # the fit rows are this stage's model's own greedy answers to the fit questions
        rows = load_fit_rows(root / stage / "fit_rows.jsonl")
        assert len(rows) == 30
        model, tokenizer, tokens = load_pcl_model(str(tmp_path / stage))
        gens = pcl.inference.generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=4, tokens=tokens)
        assert [" " + g.text.strip() for g in gens] == [r["completion"] for r in rows]
    comparison = json.loads((root / "stages.json").read_text())
    assert comparison["stages"] == ["sft", "grpo", "assess"]  # the quickstart's `after_stages`
    assert set(comparison["subsets"]) == {"heldout_unseen", "heldout_full", "shifted"}
    assert comparison["subsets"]["heldout_full"]["accuracy_vs_first"]["grpo"]["n"] > 0
    assert "# Calibration after each stage" in (root / "stages.md").read_text()


def quarter_reward(completions, **kwargs):
    """A benchmark reward (`calibrate.reward`) that is not the task's verifier."""
    return [0.25] * len(completions)


def test_fit_rows_scored_by_the_benchmarks_reward_and_fit_questions_seen(tokenizer, tmp_path):
    """`calibrate.fit_task` answers are labelled by the reward the benchmark labels its items with (`calibrate.reward`),
    not always by the task's verifier, and every fit question (by its own prompt, which the fit rows hold rendered)
    reaches the benchmark as a training prompt, so an evaluation item among them counts as seen."""
    from types import SimpleNamespace

    from pcl.marker import prepare_model
    from pcl.recipe import load_task_cached
    from pcl.segment import SegmentFormat
    from pcl.stage_calibration import run_recipe_calibration
    from pcl.tasks import TaskSpec
    from pcl.tiny import build_tiny_model

    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    prepare_model(model, tokenizer, SegmentFormat())
    model.save_pretrained(tmp_path / "sft")
    tokenizer.save_pretrained(tmp_path / "sft")
    fit_task = {"name": "chain_sum", "size": 6, "seed": 5_000_000}
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "calibrate": {"task": {"name": "chain_sum", "size": 4, "seed": 2_000_000}, "fit_task": fit_task,
                      "reward": "test_stage_calibration:quarter_reward", "max_new_tokens": 2},
    }  # fmt: skip
    calls = []

    def run_calibration(model_dir, task, out, **kwargs):
        calls.append(kwargs)
        return {}

    run_recipe_calibration(
        recipe, [SimpleNamespace(name="sft")], {"sft": str(tmp_path / "sft")}, run_calibration, train_prompts=["q"]
    )
    (kwargs,) = calls
    assert [r["reward"] for r in load_fit_rows(kwargs["fit_rows"])] == [0.25] * 6
    assert "quarter_reward" in kwargs["fit_note"]
    assert kwargs["train_prompts"] == ["q", *load_task_cached(TaskSpec.from_dict(fit_task))["prompt"]]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--calibrate.after_stage", "[sft]"], r"Unknown `calibrate` keys \['after_stage'\].*'after_stages'"),
        (["--calibrate.train_prompts", "[a]"], r"Unknown `calibrate` keys \['train_prompts'\]"),
        (["--calibrate.task", "null"], "`calibrate` section needs a `task`"),
    ],
)
def test_calibrate_section_refused_when_read(argv, match):
    """What `run_calibration` would refuse only after every stage has trained is refused when the recipe is read."""
    with pytest.raises(ValueError, match=match):
        load_recipe(QUICKSTART, argv)
