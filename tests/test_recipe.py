# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import json
import math
import os
import re

import pytest
from test_data_sources import gsm8k_rows, write_gsm8k_like

import pcl.recipe
import pcl.stage_training
from pcl import PCLGRPOConfig, PCLSFTConfig
from pcl.cli import main
from pcl.recipe import check_recipe_overlap, load_recipe, load_task_cached, recipe_datasets, split_overrides
from pcl.splits import OverlapError
from pcl.tasks import prompt_text


RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes")
PAPER = ["qwen2.5-1.5b-gsm.yaml", "llama-3.2-3b-gsm.yaml"]
# GPU recipes default to bf16 and vLLM, which this CPU machine refuses at config time
CPU = ["--bf16", "false", "--use_vllm", "false"]


def recipe(name):
    return os.path.join(RECIPES, name)


def test_split_overrides():
    flags, nested = split_overrides(["--max_steps", "5", "--stages.sft.args.seed=3", "--output_dir", "x"])
    assert flags == ["--max_steps", "5"]
    assert nested == {"stages.sft.args.seed": 3, "output_dir": "x"}
    with pytest.raises(ValueError, match="needs a value"):
        split_overrides(["--max_steps"])


# A PCL-SFT stage on the model's own self-labelled answers (the old quickstart's second stage), for the tests of
# self-labelling; seeds clear of every other quickstart set once `polish` (seed 7000000) is dropped (WITH_ASSESS)
ASSESS = ("{trainer: sft, task: {name: chain_sum, size: 16000, seed: 7000000}, args: {max_steps: 400}, "
          "self_labelled: {task: {name: chain_sum, size: 16000, seed: 8000000}, max_new_tokens: 8}}")  # fmt: skip
# The quickstart as SFT -> assess, benchmarked after the last stage only
WITH_ASSESS = ["--stages.grpo", "null", "--stages.polish", "null", "--stages.assess", ASSESS, "--calibrate.after_stages", "null",
               "--calibrate.fit_task", "null"]  # fmt: skip


def test_quickstart_parses():
    config, stages = load_recipe(recipe("quickstart.yaml"), ["--output_dir", "/tmp/qs"])
    assert [s.name for s in stages] == ["sft", "grpo", "polish", "assess"]
    sft, grpo, polish, assess = stages
    assert polish.trainer == "sft" and polish.self_labelled is None
    # the score is distilled at a lower learning rate than the answers were polished at, so the answers stay put
    assert assess.args.learning_rate < polish.args.learning_rate
    assert isinstance(sft.args, PCLSFTConfig) and sft.args.output_dir == "/tmp/qs/sft"
    assert sft.args.bf16 is False and sft.args.self_assessment_levels == 10
    assert isinstance(grpo.args, PCLGRPOConfig) and grpo.args.self_assessment_mode == "teacher_forced"
    assert grpo.args.self_assessment_weight > 0 and grpo.reward == ["task"]
    assert assess.trainer == "sft" and assess.self_labelled["task"]["size"] > 0
    assert config["calibrate"]["after_stages"] == ["sft", "grpo", "assess"] and config["calibrate"]["fit_task"]
    assert config["calibrate"]["shifted_task"]["config"]["min_terms"] > sft.task.config["max_terms"]


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_parse(name):
    recipe_, stages = load_recipe(recipe(name), CPU)
    assess, grpo = stages
    assert isinstance(grpo.args, PCLGRPOConfig)
    assert grpo.args.num_generations == 8 and grpo.args.max_completion_length == 1024
    assert 1e-5 <= grpo.args.learning_rate <= 2e-5
    assert grpo.args.vllm_mode == "colocate" and grpo.args.self_assessment_mode == "teacher_forced"
    assert grpo.reward == ["pcl.rewards:math_verify_accuracy"]
    # The paper's data: GSM8K from the Hub, disjoint slices of its train split for training, its test split held out
    sets = recipe_datasets(recipe_, stages)
    assert list(sets) == [
        "stages.assess.task",
        "stages.assess.self_labelled.task",
        "stages.grpo.task",
        "calibrate.task",
    ]
    for spec in sets.values():
        assert (spec.dataset_name, spec.dataset_config) == ("openai/gsm8k", "main")
        assert (spec.prompt_column, spec.answer_column) == ("question", "answer")
    assert [s.dataset_train_split for s in sets.values()] == ["train[:2500]", "train[2500:4500]", "train[4500:]", None]
    assert sets["calibrate.task"].dataset_test_split == "test"
    # Gold SFT rows are the rationales as written; every scored set compares with the number after `####`
    assert [s.answer_extractor for s in sets.values()] == [None, "gsm8k", "gsm8k", "gsm8k"]
    assert recipe_["calibrate"]["reward"] == assess.reward[0] == "pcl.rewards:math_verify_accuracy"
    if "llama" in name:
        assert grpo.args.self_assessment_marker == "<|reserved_special_token_10|>"


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--no_such_option", "1"], "Unknown options"),
        (["--stages.sft.bogus", "1"], "unknown keys"),
        (["--stages.sft.trainer", "ppo"], "must be one of"),
        (["--stages.sft.args.no_such_field", "1"], "unknown PCLSFTConfig options"),
    ],
)
def test_bad_recipe_options(argv, match):
    with pytest.raises(ValueError, match=match):
        load_recipe(recipe("quickstart.yaml"), argv)


def test_unknown_task_name():
    with pytest.raises(ValueError, match="chain_summ"):
        config, stages = load_recipe(recipe("quickstart.yaml"), ["--stages.sft.task.name", "chain_summ"])
        from pcl.tasks import load_task

        load_task(stages[0].task)


TINY = "{hidden_size: 32, num_layers: 1, num_heads: 2, max_position_embeddings: 1024}"
PAPER_SETS = ["stages.assess.task", "stages.assess.self_labelled.task", "stages.grpo.task", "calibrate.task"]


def local_gsm8k(path: str, **splits: str) -> list[str]:
    """Flags pointing every set of a paper recipe at a local GSM8K-shaped dataset (same config, columns and splits
    unless `splits` maps a set's key to another split)."""
    flags = []
    for key in PAPER_SETS:
        flags += [f"--{key}.dataset_name", path]
        if key in splits:
            flags += [f"--{key}.dataset_{'test' if key.startswith('calibrate') else 'train'}_split", splits[key]]
    return flags


def test_paper_recipe_stage_on_local_gsm8k(tmp_path):
    """A paper recipe's GRPO stage, as written but for the dataset path: GSM8K-shaped rows, `#### n` gold answers
    extracted, math-verify rewards, a tiny model and one step."""
    data = write_gsm8k_like(tmp_path / "gsm8k", n_train=16, n_test=4)
    argv = CPU + local_gsm8k(data, **{"stages.grpo.task": "train[8:16]"}) + [
        "--output_dir", str(tmp_path / "out"), "--model.tiny", TINY, "--max_steps", "1", "--save_strategy", "no",
        "--gradient_checkpointing", "false", "--stages.assess", "null", "--calibrate", "null",
        "--stages.grpo.args.per_device_train_batch_size", "4", "--stages.grpo.args.num_generations", "4",
        "--stages.grpo.args.max_completion_length", "8", "--stages.grpo.args.gradient_accumulation_steps", "1",
    ]  # fmt: skip
    recipe_, (grpo,) = load_recipe(recipe("qwen2.5-1.5b-gsm.yaml"), argv)
    rows = load_task_cached(grpo.task)
    assert len(rows) == 8 and rows["answer"] == [str(3 + i + 1000 + 7 * i) for i in range(8, 16)]
    assert rows["prompt"][0][-1] == {"role": "user", "content": gsm8k_rows(8, 1)["question"][0]}
    result = pcl.recipe.run_recipe(recipe("qwen2.5-1.5b-gsm.yaml"), argv)
    state = json.loads((tmp_path / "out" / "grpo" / "pcl_stage_complete.json").read_text())
    assert result["model"] == str(tmp_path / "out" / "grpo") and state["global_step"] == 1


def test_sft_stage_on_chat_prompts(tmp_path, monkeypatch, tokenizer):
    """A dataset task with a system prompt is conversational: its SFT gold rows get a conversational completion
    (SFTTrainer refuses a chat prompt with a text completion), and beside self-labelled rows both become text."""
    data = write_gsm8k_like(tmp_path / "gsm8k", n_train=16, n_test=4)
    argv = ["--bf16", "false", "--stages.assess.task.dataset_name", data, "--stages.assess.task.dataset_train_split",
            "train[:8]", "--output_dir", str(tmp_path / "out"), "--model.tiny", TINY, "--max_steps", "1",
            "--save_strategy", "no", "--gradient_checkpointing", "false", "--stages.grpo", "null", "--calibrate", "null",
            "--stages.assess.args.per_device_train_batch_size", "4", "--stages.assess.args.gradient_accumulation_steps",
            "1"]  # fmt: skip
    _, (assess,) = load_recipe(recipe("qwen2.5-1.5b-gsm.yaml"), argv + ["--stages.assess.self_labelled", "null"])
    rows = pcl.stage_training.stage_dataset(assess, None, tokenizer)
    assert rows[0]["completion"] == [{"role": "assistant", "content": gsm8k_rows(0, 1)["answer"][0]}]
    result = pcl.recipe.run_recipe(recipe("qwen2.5-1.5b-gsm.yaml"), argv + ["--stages.assess.self_labelled", "null"])
    assert result["model"] == str(tmp_path / "out" / "assess")
    # With self-labelled rows (stood in for here), gold rows are rendered as text like them
    own = {"prompt": "Q", "completion": " 5", "reward": 1.0}
    monkeypatch.setattr(pcl.stage_training, "cached_self_labelled_rows", lambda *a, **k: [own])
    _, (assess,) = load_recipe(recipe("qwen2.5-1.5b-gsm.yaml"), argv)
    rows = pcl.stage_training.stage_dataset(assess, None, tokenizer)
    gold = next(r for r in rows if not r["self_assessment_only"])
    assert isinstance(gold["prompt"], str) and gold["completion"].startswith(" She has")


def test_training_on_a_test_split_refused(tmp_path):
    argv = CPU + ["--stages.grpo.task.dataset_train_split", "null", "--stages.grpo.task.dataset_test_split", "test"]
    with pytest.raises(
        ValueError, match=r"`stages.grpo.task` trains on a test split \('test'\): use `dataset_train_split`"
    ):
        load_recipe(recipe("qwen2.5-1.5b-gsm.yaml"), argv)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        # TRL's accuracy rewards read a `solution` column; a task's gold answer is `answer`
        (["--stages.grpo.reward", "accuracy_reward"], r"`stages.grpo.reward` \(accuracy_reward\): reward "
         r"'accuracy_reward' needs \['solution'\].*pcl.rewards.math_verify_accuracy"),
        (["--stages.assess.reward", "trl.rewards.reasoning_accuracy_reward"], r"stages.assess.reward.*\['solution'\]"),
        # Self-labelling scores without token ids (GRPOTrainer passes them)
        (["--stages.assess.reward", "get_soft_overlong_punishment"], r"stages.assess.reward.*\['completion_ids'\]"),
        (["--calibrate.reward", "accuracy_reward"], r"`calibrate.reward` \(accuracy_reward\).*\['solution'\]"),
    ],
)  # fmt: skip
def test_rewards_missing_their_inputs_refused_before_training(argv, match):
    with pytest.raises(ValueError, match=match):
        load_recipe(recipe("qwen2.5-1.5b-gsm.yaml"), CPU + argv)
    # What GRPOTrainer passes besides the columns; an SFT stage without self-labelling calls no reward
    load_recipe(recipe("qwen2.5-1.5b-gsm.yaml"), CPU + ["--stages.grpo.reward", "get_soft_overlong_punishment"])
    load_recipe(recipe("qwen2.5-1.5b-gsm.yaml"),
                CPU + ["--stages.assess.self_labelled", "null", "--stages.assess.reward", "accuracy_reward"])  # fmt: skip


@pytest.mark.slow
def test_paper_recipe_cpu_variant_runs(tmp_path):
    """The paper recipe itself, shrunk to a tiny local model and a few steps: both stages and the benchmark run."""
    data = write_gsm8k_like(tmp_path / "gsm8k", n_train=24, n_test=8)
    splits = {"stages.assess.task": "train[:8]", "stages.assess.self_labelled.task": "train[8:16]",
              "stages.grpo.task": "train[16:24]"}  # fmt: skip
    argv = CPU + local_gsm8k(data, **splits) + [
        "--output_dir", str(tmp_path), "--model.tiny", TINY, "--max_steps", "1", "--gradient_checkpointing", "false",
        "--save_strategy", "no", "--max_length", "1024", "--stages.assess.self_labelled.max_new_tokens", "4",
        "--stages.grpo.args.per_device_train_batch_size", "4", "--stages.grpo.args.num_generations", "4",
        "--stages.grpo.args.max_completion_length", "8", "--stages.grpo.args.gradient_accumulation_steps", "1",
        "--calibrate.max_new_tokens", "4", "--calibrate.batch_size", "8",
    ]  # fmt: skip
    assert main(["train", recipe("qwen2.5-1.5b-gsm.yaml"), *argv]) == 0
    with open(tmp_path / "calibration" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["n"] + metrics["duplicates_dropped"] == 8 and metrics["deploy"]["with_tokens_after_marker"] == 0
    assert metrics["task"]["dataset_name"] == data and metrics["task"]["split"] == "test"
    assert f"task: `{data}` config `main` split `test`" in (tmp_path / "calibration" / "report.md").read_text()


@pytest.mark.slow
def test_quickstart_shortened_end_to_end(tmp_path):
    """What `./run.sh` runs, with few steps and small sets: trains, calibrates each stage, writes the reports and
    pictures."""
    argv = [
        "--output_dir", str(tmp_path), "--max_steps", "20", "--logging_steps", "10",
        "--stages.sft.task.size", "3000", "--stages.grpo.task.size", "200",
        "--stages.grpo.args.per_device_train_batch_size", "16", "--calibrate.task.size", "300",
        "--calibrate.shifted_task.size", "100", "--calibrate.fit_task.size", "300",
        "--stages.polish.task.size", "300", "--stages.assess.task.size", "300",
        "--stages.assess.self_labelled.task.size", "200",
    ]  # fmt: skip
    assert main(["train", recipe("quickstart.yaml"), *argv]) == 0
    out = tmp_path / "calibration" / "assess"
    for name in ("metrics.json", "report.md", "reliability_pcl.png", "reliability_all.png", "risk_coverage.png"):
        assert (out / name).stat().st_size > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["deploy"]["with_tokens_after_marker"] == 0
    assert metrics["n"] + metrics["duplicates_dropped"] == 300 and metrics["duplicates_dropped"] > 0
    assert set(metrics["sources"]["full"]) >= {"pcl_expected", "pcl_written", "mean_token_prob", "sequence_prob"}
    # Baselines fitted on the evaluated model's own answers to the fit questions, beside the single-pass ones
    from pcl.fitted_baselines import FITTED_SOURCES

    # (checked on the SFT stage: after 20 steps of each later stage the model answers almost no fit question right,
    # and a fit needs right and wrong answers)
    sft_dir = tmp_path / "calibration" / "sft"
    sft = json.loads((sft_dir / "metrics.json").read_text())
    assert sft["fitted_baselines"]["paths"] == [str(sft_dir / "fit_rows.jsonl")]
    assert "calibrate.fit_task" in sft["fitted_baselines"]["origin"]
    assert (out / "fit_rows.jsonl").is_file()  # every benchmarked stage answers the fit questions itself
    singles = {f"{s}{v}" for s in ("mean_token_prob", "sequence_prob", "min_token_prob") for v in ("", "_no_stop")}
    assert set(sft["paired"]["unseen"]) - {"self_consistency"} == singles | set(FITTED_SOURCES)
    assert set(metrics["paired"]["unseen"]) - {"self_consistency"} >= singles
    assert metrics["shifted"]["n"] > 0 and "min_terms': 5" in metrics["shifted"]["shift"]
    report = (out / "report.md").read_text()
    assert "Held-out split: unseen items only" in report and "## Shifted split" in report
    assert len((out / "items.jsonl").read_text().splitlines()) == metrics["n"] + metrics["shifted"]["n"]
    assert (tmp_path / "calibration" / "sft" / "metrics.json").is_file()
    assert (tmp_path / "calibration" / "grpo" / "metrics.json").is_file()
    assert "## Held-out split, unseen items" in (tmp_path / "calibration" / "stages.md").read_text()

    # The benchmark command on the same checkpoint, with the same fit rows and self-consistency
    code = main(["calibrate", str(tmp_path / "sft"), "--task", "chain_sum", "--size", "50",
                 "--output_dir", str(tmp_path / "again"), "--max_new_tokens", "8", "--fit_rows",
                 str(sft_dir / "fit_rows.jsonl"), "--self_consistency_k", "3"])  # fmt: skip
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert code == 0 and again["self_consistency"]["k"] == 3
    assert set(FITTED_SOURCES) | {"self_consistency"} <= set(again["paired"]["full"])


def test_calibrate_refuses_non_pcl_model(tmp_path, tokenizer):
    from pcl.tiny import build_tiny_model

    build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not trained with PCL"):
        main(["calibrate", str(tmp_path), "--task", "chain_sum", "--size", "5"])


# ---------------------------------------------------------------- disjoint datasets

# The quickstart's sets, shrunk so that loading them takes seconds (same seeds and configs)
# polish's and assess's sets are 8000 each
SMALL = ["--stages.sft.task.size", "20000", "--stages.grpo.task.size", "4000"]


def _shape_size(prompt):
    """Distinct chain_sum problems of this prompt's shape: same number of terms, each with as many digits."""
    numbers = re.findall(r"\d+", prompt)
    return math.prod(10 if len(n) == 1 else 9 * 10 ** (len(n) - 1) for n in numbers) * 2 ** (len(numbers) - 1)


def test_quickstart_fresh_sets_do_not_overlap_training_sets():
    recipe_, stages = load_recipe(recipe("quickstart.yaml"), SMALL)
    sets = recipe_datasets(recipe_, stages)
    assert list(sets) == ["stages.sft.task", "stages.grpo.task", "stages.polish.task", "stages.assess.task",
                          "stages.assess.self_labelled.task", "calibrate.task", "calibrate.shifted_task",
                          "calibrate.fit_task"]  # fmt: skip
    report = check_recipe_overlap(recipe_, stages)
    assert len(report) == 28 and all(pair["shared_indices"] == 0 for pair in report)
    # Far-apart seeds leave chance repeats: most questions of small problem cells (two 1-digit terms: 200 sums), and
    # almost none of large cells, which a shifted copy of a training set would repeat as often
    for fresh in ("calibrate.fit_task", "calibrate.task"):
        data = load_task_cached(sets[fresh])
        for train in ("stages.sft.task", "stages.grpo.task"):
            if train == fresh:
                continue
            trained = {prompt_text(p) for p in load_task_cached(sets[train])["prompt"]}
            large = [p for p in data["prompt"] if _shape_size(p) > 10**5]
            small = [p for p in data["prompt"] if _shape_size(p) <= 200]
            assert small and large  # neither check below may pass vacuously
            # a shifted copy would repeat large-cell questions as often as small ones
            assert sum(prompt_text(p) in trained for p in large) <= 0.01 * len(large), (fresh, train)
            assert sum(prompt_text(p) in trained for p in small) >= 0.5 * len(small), (fresh, train)
    shifted = [p for p in report if "calibrate.shifted_task" in (p["a"], p["b"])]
    assert [p["shared_prompts"] for p in shifted] == [0] * 7


@pytest.mark.parametrize(
    "argv, first, second, shared",
    [
        # an older quickstart: stage 2's questions were seed 3, inside stage 1's range [1, 32001)
        (["--stages.grpo.task.seed", "3"], "stages.sft.task", "stages.grpo.task", 2000),
        (["--calibrate.fit_task.seed", "4"], "stages.sft.task", "calibrate.fit_task", 3000),
        (["--calibrate.shifted_task.seed", "1000100"], "calibrate.task", "calibrate.shifted_task", 600),
    ],
)  # fmt: skip
def test_overlapping_index_ranges_refused(argv, first, second, shared):
    with pytest.raises(OverlapError, match=rf"`{first}` .* and `{second}` .* share {shared} reasoning-gym item "
                                           r"indices.*at least 1,000,000 apart.*--" + second):  # fmt: skip
        load_recipe(recipe("quickstart.yaml"), argv)


def test_prompt_overlap_beyond_tolerance_refused():
    # a problem space of 200 sums: far-apart seeds still repeat almost every question
    tiny = "{min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}"
    argv = ["--stages.sft.task.size", "500", "--stages.sft.task.config", tiny, "--calibrate.task.size", "300",
            "--calibrate.task.config", tiny, "--stages.grpo", "null", "--calibrate.shifted_task", "null",
            "--calibrate.fit_task", "null", "--calibrate.after_stages", "null", "--stages.assess", "null",
            "--stages.polish", "null"]  # fmt: skip
    recipe_, stages = load_recipe(recipe("quickstart.yaml"), argv)  # index ranges are disjoint
    with pytest.raises(OverlapError, match=r"`stages.sft.task` .* and `calibrate.task` .* share \d+ of \d+ distinct "
                                           r"prompts .* above overlap_tolerance 0.45"):  # fmt: skip
        check_recipe_overlap(recipe_, stages)
    recipe_, stages = load_recipe(recipe("quickstart.yaml"), [*argv, "--overlap_tolerance", "1.0"])
    (pair,) = check_recipe_overlap(recipe_, stages)
    assert pair["shared_prompts"] > 0.9 * pair["smaller_distinct"]


def test_cli_refuses_overlapping_recipe_in_one_line(capsys):
    code = main(["train", recipe("quickstart.yaml"), "--stages.grpo.task.seed", "3"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "`stages.sft.task`" in err and "`stages.grpo.task`" in err and "--stages.grpo.task.seed" in err


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_sets_are_disjoint(name, tmp_path):
    """The recipe's slices of a GSM8K-shaped train split share no question, nor with the test split; a test split
    that repeats training questions is refused by their text."""
    data = write_gsm8k_like(tmp_path / "gsm8k", n_train=5000, n_test=50)
    recipe_, stages = load_recipe(recipe(name), CPU + local_gsm8k(data))
    report = check_recipe_overlap(recipe_, stages)
    assert len(report) == 6 and all(p["shared_indices"] == 0 and p["shared_prompts"] == 0 for p in report)
    assert {p["smaller_distinct"] for p in report} == {50, 500, 2000}  # train[4500:] of 5000 rows: 500
    leaky = write_gsm8k_like(tmp_path / "leaky" / "gsm8k", n_train=5000, n_test=50, shared=5)
    recipe_, stages = load_recipe(recipe(name), CPU + local_gsm8k(leaky))
    with pytest.raises(OverlapError, match="`stages.assess.task` .* and `calibrate.task` .* share 5 of 50"):
        check_recipe_overlap(recipe_, stages)


def test_training_prompts_include_self_labelled_sets_on_resume(tmp_path, monkeypatch, tokenizer):
    """Stages skipped on resume load nothing: the benchmark must still count their self-labelled prompts as seen."""
    import pcl.evaluation
    import pcl.recipe

    def skipped_stage(stage, model, tokenizer_, resume=False):  # what run_stage does for a completed stage
        tokenizer.save_pretrained(stage.args.output_dir)
        return stage.args.output_dir

    captured = {}
    monkeypatch.setattr(pcl.recipe, "run_stage", skipped_stage)
    # The assess stage saved its self-labelled rows when it ran: the benchmark fits its baselines on them
    os.makedirs(tmp_path / "assess")
    (tmp_path / "assess" / "self_labelled.jsonl").write_text(
        '{"prompt": "1 + 2 =", "completion": " 3", "reward": 1}\n'
    )
    monkeypatch.setattr(pcl.evaluation, "run_calibration", lambda *a, **kw: captured.update(kw))
    argv = ["--output_dir", str(tmp_path), *WITH_ASSESS, "--stages.sft.task.size", "50", "--stages.assess.task.size",
            "50", "--stages.assess.self_labelled.task.size", "50", "--calibrate.task.size", "20"]  # fmt: skip
    pcl.recipe.run_recipe(recipe("quickstart.yaml"), argv)
    _, stages = load_recipe(recipe("quickstart.yaml"), argv)
    labelled = load_task_cached(recipe_datasets({}, stages, training_only=True)["stages.assess.self_labelled.task"])
    seen = {prompt_text(p) for p in captured["train_prompts"]}
    assert {prompt_text(p) for p in labelled["prompt"]} <= seen
    assert captured["fit_rows"] == [str(tmp_path / "assess" / "self_labelled.jsonl")]
    assert captured["shifted_task"].config["min_terms"] == 5
    assert [t.seed for t in captured["train_tasks"]] == [1, 7000000]


def test_cli_calibrate_refuses_eval_set_inside_a_training_range(tmp_path, capsys):
    train = '{"name": "chain_sum", "size": 1000, "seed": 1}'
    code = main(["calibrate", str(tmp_path / "never_loaded"), "--task", "chain_sum", "--seed", "500", "--size", "100",
                 "--train_task", train])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "`train_task[0]`" in err and "share 100" in err


def test_self_labelled_rows_saved_and_reused_on_resume(tmp_path, monkeypatch, tiny_model, tokenizer):
    """The self-labelled rows are saved in the stage's output directory; a resumed run reads them back instead of
    generating again, and refuses rows of another task."""
    import pcl.inference
    from pcl.fitted_baselines import load_fit_rows

    calls = []
    real_generate = pcl.inference.generate
    monkeypatch.setattr(pcl.inference, "generate", lambda *a, **kw: calls.append(1) or real_generate(*a, **kw))
    argv = ["--output_dir", str(tmp_path), *WITH_ASSESS, "--stages.assess.task.size", "6",
            "--stages.assess.self_labelled.task.size", "12", "--stages.assess.self_labelled.max_new_tokens", "3"]  # fmt: skip
    _, stages = load_recipe(recipe("quickstart.yaml"), argv)
    stage = stages[1]

    def own_rows(data):
        rows = data.filter(lambda r: r["self_assessment_only"])
        return sorted(zip(rows["prompt"], rows["completion"], rows["reward"], strict=True))

    first = own_rows(pcl.stage_training.stage_dataset(stage, tiny_model, tokenizer))
    saved = load_fit_rows(tmp_path / "assess" / "self_labelled.jsonl")
    assert len(calls) == 1 and len(saved) == len(first) == 12
    assert sorted((r["prompt"], r["completion"], r["reward"]) for r in saved) == first
    assert all(set(r["difficulty"]) == {"num_terms", "num_digits"} for r in saved)
    assert own_rows(pcl.stage_training.stage_dataset(stage, tiny_model, tokenizer, resume=True)) == first
    assert len(calls) == 1  # read back, not generated
    pcl.stage_training.stage_dataset(stage, tiny_model, tokenizer)  # a fresh (not resumed) run labels again
    assert len(calls) == 2
    _, moved = load_recipe(recipe("quickstart.yaml"), [*argv, "--stages.assess.self_labelled.task.seed", "9000000"])
    with pytest.raises(ValueError, match="self-labelled rows of another task.*Delete the file"):
        pcl.stage_training.stage_dataset(moved[1], tiny_model, tokenizer, resume=True)
