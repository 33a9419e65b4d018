# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Tasks from `datasets.load_dataset` sources (Hub-style repositories, `save_to_disk` directories, data files), built
locally in each test: nothing is downloaded."""

import json

import datasets
import pytest

from pcl.data_sources import gsm8k_answer
from pcl.splits import OverlapError, check_disjoint, prompt_overlap
from pcl.tasks import (
    TaskSpec,
    held_out,
    load_task,
    make_reward_func,
    prompt_text,
    resolve_reward_func,
    score_completions,
)


def gsm8k_rows(start: int, n: int) -> dict[str, list[str]]:
    """Rows shaped like GSM8K's: a word problem and a rationale ending `#### n` (thousands with a comma)."""
    questions, answers = [], []
    for i in range(start, start + n):
        a, b = 3 + i, 1000 + 7 * i
        questions.append(f"Ann has {a} apples and buys {b} more. How many apples does she have now?")
        answers.append(f"She has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b:,}")
    return {"question": questions, "answer": answers}


def write_gsm8k_like(root, n_train: int = 12, n_test: int = 4, shared: int = 0) -> str:
    """A local copy of the Hub layout of `openai/gsm8k` (config `main`, parquet files, splits declared in README.md);
    the test split repeats the first `shared` training questions."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "main").mkdir(exist_ok=True)
    datasets.Dataset.from_dict(gsm8k_rows(0, n_train)).to_parquet(str(root / "main" / "train-00000-of-00001.parquet"))
    test = gsm8k_rows(0, shared) if shared else {"question": [], "answer": []}
    more = gsm8k_rows(10_000, n_test - shared)
    test = {k: test[k] + more[k] for k in more}
    datasets.Dataset.from_dict(test).to_parquet(str(root / "main" / "test-00000-of-00001.parquet"))
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train-*\n"
        "  - split: test\n    path: main/test-*\n---\n"
    )
    return str(root)


def gsm_spec(path: str, **kwargs) -> TaskSpec:
    keys = dict(dataset_name=path, dataset_config="main", prompt_column="question", answer_column="answer",
                answer_extractor="gsm8k")  # fmt: skip
    return TaskSpec(**{**keys, **kwargs})


def test_gsm8k_answer():
    assert gsm8k_answer("2 + 2 = <<2+2=4>>4\n#### 4") == "4"
    assert gsm8k_answer("a #### b\n#### 1,234 ") == "1234"  # the last mark; thousands separators dropped
    with pytest.raises(ValueError, match="no final answer after '####'"):
        gsm8k_answer("no mark here")


def test_hub_layout_config_split_slice_and_columns(tmp_path):
    path = write_gsm8k_like(tmp_path / "gsm8k")
    data = load_task(gsm_spec(path, dataset_train_split="train[2:5]"))
    assert data.column_names == ["prompt", "answer", "task", "entry"] and len(data) == 3
    assert data["prompt"][0] == gsm8k_rows(2, 1)["question"][0]
    assert data["answer"] == [str(3 + i + 1000 + 7 * i) for i in range(2, 5)]  # "1,019" -> "1019"
    assert set(data["task"]) == {"gsm8k"}
    entry = json.loads(data["entry"][0])
    assert entry["answer"] == data["answer"][0] and entry["row"] == {k: v[0] for k, v in gsm8k_rows(2, 1).items()}
    held_out = load_task(gsm_spec(path, dataset_test_split="test"))
    assert len(held_out) == 4 and held_out["prompt"][0] == gsm8k_rows(10_000, 1)["question"][0]


def test_save_to_disk_and_single_files(tmp_path):
    rows = {"q": ["1 + 1 =", "2 + 2 =", "3 + 3 ="], "a": [2, 4, 6]}  # a non-string answer column
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "disk"))
    datasets.Dataset.from_dict(rows).to_parquet(str(tmp_path / "rows.parquet"))
    datasets.Dataset.from_dict(rows).to_json(str(tmp_path / "rows.jsonl"))
    datasets.Dataset.from_dict(rows).to_csv(str(tmp_path / "rows.csv"), index=False)
    for name in ("disk", "rows.parquet", "rows.jsonl", "rows.csv"):
        spec = TaskSpec(dataset_name=str(tmp_path / name), dataset_train_split="train[1:]", prompt_column="q",
                        answer_column="a")  # fmt: skip
        data = load_task(spec)
        assert data["prompt"] == ["2 + 2 =", "3 + 3 ="] and data["answer"] == ["4", "6"], name


def test_chat_prompts(tmp_path):
    chat = [[{"role": "user", "content": "1 + 1 ="}], [{"role": "user", "content": "2 + 2 ="}]]
    datasets.Dataset.from_dict({"prompt": chat, "answer": ["2", "4"]}).to_json(str(tmp_path / "chat.jsonl"))
    spec = TaskSpec(dataset_name=str(tmp_path / "chat.jsonl"), dataset_train_split="train", system_prompt="Add.")
    data = load_task(spec)  # conversational prompts stay conversational; the system prompt goes first
    assert data["prompt"][1] == [{"role": "system", "content": "Add."}, {"role": "user", "content": "2 + 2 ="}]
    path = write_gsm8k_like(tmp_path / "gsm8k")
    data = load_task(gsm_spec(path, dataset_train_split="train[:1]", chat=True))
    assert data["prompt"][0] == [{"role": "user", "content": gsm8k_rows(0, 1)["question"][0]}]


def test_task_reward_and_dotted_reward(tmp_path):
    path = write_gsm8k_like(tmp_path / "gsm8k")
    spec = gsm_spec(path, dataset_train_split="train[:3]")
    data = load_task(spec)
    gold = data["answer"]
    exact = make_reward_func(spec)
    assert exact.__name__ == "gsm8k_accuracy"
    assert score_completions(exact, data, [f" {gold[0]} ", "0", f"{int(gold[2]):,}"]) == [1.0, 0.0, 0.0]
    # `trl grpo --reward_funcs` style: a dotted path, called with the dataset's columns (the extracted `answer`)
    math = resolve_reward_func("pcl.rewards:math_verify_accuracy")
    completions = [f"So she has \\boxed{{{gold[0]}}}.", "I think 7.", f"... = {gold[2]}\n#### {gold[2]}"]
    assert score_completions(math, data, completions) == [1.0, 0.0, 1.0]


def test_custom_answer_extractor(tmp_path):
    path = write_gsm8k_like(tmp_path / "gsm8k")
    data = load_task(gsm_spec(path, dataset_train_split="train[:2]", answer_extractor="builtins:len"))
    assert data["answer"] == [str(len(a)) for a in gsm8k_rows(0, 2)["answer"]]


@pytest.mark.parametrize(
    "spec, match",
    [
        (dict(dataset_name="d"), "exactly one split"),
        (dict(dataset_name="d", dataset_train_split="train", dataset_test_split="test"), "exactly one split"),
        (dict(dataset_name="d", dataset_train_split="train[:x]"), "bad split 'train\\[:x\\]'"),
        (dict(dataset_name="d", dataset_train_split="train", size=100), r"\['size'\] apply to reasoning-gym"),
        (dict(dataset_name="d", dataset_train_split="train", config={"a": 1}), "apply to reasoning-gym"),
        (dict(name="chain_sum", dataset_name="d", dataset_train_split="train"), "not both"),
        (dict(dataset_name="d", dataset_train_split="train", answer_extractor="nope"), "module.path:function"),
        (dict(name="chain_sum", prompt_column="question"), r"\['prompt_column'\] describe a dataset"),
        (dict(dataset_train_split="train"), "needs a 'name'.*or a 'dataset_name'"),
    ],
)
def test_bad_specs_refused_at_construction(spec, match):
    with pytest.raises(ValueError, match=match):
        TaskSpec.from_dict(spec)


@pytest.mark.parametrize("key, value", [("size", 100), ("seed", 5), ("strip_prefix", False), ("config", {"a": 1})])
def test_generator_keys_refused_in_the_python_constructor_too(key, value):
    """`TaskSpec(dataset_name=..., size=100)` would load the whole split, ignoring `size`: refused like in a recipe."""
    with pytest.raises(ValueError, match=rf"\['{key}'\] apply to reasoning-gym tasks only.*split slice"):
        TaskSpec(dataset_name="d", dataset_train_split="train", **{key: value})


def test_load_errors_name_the_fix(tmp_path):
    path = write_gsm8k_like(tmp_path / "gsm8k")
    with pytest.raises(ValueError, match=r"no column \['prompt'\]; its columns are \['question', 'answer'\]"):
        load_task(TaskSpec(dataset_name=path, dataset_config="main", dataset_train_split="train"))
    with pytest.raises(ValueError, match="could not load dataset .*split 'validation'"):
        load_task(gsm_spec(path, dataset_train_split="validation"))
    with pytest.raises(ValueError, match="could not load dataset 'no/such_dataset'.*network access"):
        load_task(gsm_spec("no/such_dataset", dataset_train_split="train"))
    with pytest.raises(ValueError, match=r"row 0: answer_extractor 'gsm8k' failed: no final answer"):
        load_task(gsm_spec(path, dataset_train_split="train[:1]", answer_column="question"))


def test_overlap_by_prompt_text_train_vs_test_split(tmp_path):
    """Datasets have no generator indices: their sets are compared by question text, slices of one split and the
    train and test splits of one dataset alike."""
    path = write_gsm8k_like(tmp_path / "gsm8k", n_train=12, n_test=4, shared=2)
    sets = {
        "stages.sft.task": gsm_spec(path, dataset_train_split="train[:6]"),
        "stages.grpo.task": gsm_spec(path, dataset_train_split="train[6:]"),
        "calibrate.task": gsm_spec(path, dataset_test_split="test"),
    }
    prompts = {k: load_task(v)["prompt"] for k, v in sets.items()}
    # Index ranges do not apply: both specs leave size/seed at their defaults, which must not read as shared items
    report = check_disjoint({k: sets[k] for k in ("stages.sft.task", "stages.grpo.task")})
    assert report == [{"a": "stages.sft.task", "b": "stages.grpo.task", "shared_indices": 0}]
    refused = (r"`stages.sft.task` \(.*gsm8k config main split train\[:6\]\) and `calibrate.task` .*share 2 of 4 "
               r"distinct prompts.*take disjoint rows")  # fmt: skip
    with pytest.raises(OverlapError, match=refused):
        check_disjoint(sets, prompts=prompts)
    report = check_disjoint(sets, tolerance=0.5, prompts=prompts)
    assert [(p["a"], p["b"], p["shared_prompts"]) for p in report] == [
        ("stages.sft.task", "stages.grpo.task", 0),
        ("stages.sft.task", "calibrate.task", 2),
        ("stages.grpo.task", "calibrate.task", 0),
    ]


def test_overlap_ignores_system_prompts(tmp_path):
    """The same questions under another system prompt, or as plain text, are the same questions: a training set with
    the recipe's system prompt and a test split without one (or with another) overlap, and the benchmark marks them
    seen."""
    path = write_gsm8k_like(tmp_path / "gsm8k", n_train=12, n_test=4, shared=4)
    train = gsm_spec(path, dataset_train_split="train", system_prompt="Solve it. End with '####'.")
    train_prompts = load_task(train)["prompt"]
    for test in (gsm_spec(path, dataset_test_split="test"),
                 gsm_spec(path, dataset_test_split="test", system_prompt="Answer briefly."),
                 gsm_spec(path, dataset_test_split="test", chat=True)):  # fmt: skip
        sets = {"stages.grpo.task": train, "calibrate.task": test}
        with pytest.raises(OverlapError, match="share 4 of 4 distinct prompts"):
            check_disjoint(
                sets, prompts={"stages.grpo.task": train_prompts, "calibrate.task": load_task(test)["prompt"]}
            )
        assert held_out(load_task(test), train_prompts)[2] == 4
    # The compared text is the question; different questions under one system prompt stay different
    assert prompt_text(train_prompts[0]) == gsm8k_rows(0, 1)["question"][0]
    assert prompt_overlap(train_prompts[:6], train_prompts[6:]) == (0, 6)


def test_local_dataset_rewritten_is_read_afresh(tmp_path):
    """`datasets` caches a Hub-style local directory under a key that stays the same for a same-named directory with
    other rows; PCL reads local data afresh, so a regenerated dataset is never served stale."""
    first = load_task(gsm_spec(write_gsm8k_like(tmp_path / "a" / "gsm8k", n_test=2), dataset_test_split="test"))
    second = load_task(
        gsm_spec(write_gsm8k_like(tmp_path / "b" / "gsm8k", n_test=2, shared=2), dataset_test_split="test")
    )
    assert first["prompt"] == gsm8k_rows(10_000, 2)["question"] and second["prompt"] == gsm8k_rows(0, 2)["question"]


def test_readme_dataset_snippets(tmp_path):
    """README, "Datasets from the Hub and from files": the recipe excerpt and the Python block, on a local
    GSM8K-shaped dataset in place of `openai/gsm8k`."""
    import re
    from pathlib import Path

    import yaml
    from conftest import readme_python_block

    path = write_gsm8k_like(tmp_path / "gsm8k", n_train=4600, n_test=5)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Datasets from the Hub and from files") :]
    recipe = yaml.safe_load(re.findall(r"```yaml\n(.*?)```", section, re.S)[0].replace("openai/gsm8k", path))
    sets = {"stages.grpo.task": TaskSpec.from_dict(recipe["stages"]["grpo"]["task"]),
            "calibrate.task": TaskSpec.from_dict(recipe["calibrate"]["task"])}  # fmt: skip
    prompts = {k: load_task(v)["prompt"] for k, v in sets.items()}
    assert [len(p) for p in prompts.values()] == [100, 5]
    assert check_disjoint(sets, prompts=prompts)[0]["shared_prompts"] == 0
    data = load_task(sets["stages.grpo.task"])
    reward = resolve_reward_func(recipe["stages"]["grpo"]["reward"])
    assert score_completions(reward, data, [f"#### {a}" for a in data["answer"][:99]] + ["#### 0"]) == [1.0] * 99 + [
        0.0
    ]

    namespace = {}
    exec(readme_python_block("### Datasets from the Hub and from files").replace("openai/gsm8k", path), namespace)
    assert len(namespace["data"]) == 2000 and namespace["data"][0]["answer"] == "1003"
    assert namespace["data"].column_names == ["prompt", "answer", "task", "entry"]


def test_pcl_calibrate_on_a_dataset_test_split(tmp_path, tiny_model, tokenizer):
    """`pcl calibrate --task '<JSON TaskSpec>'`: a dataset's test split is evaluated, and its questions that a
    `--train_task` dataset slice holds are marked seen."""
    from conftest import addition_rows, cpu_args

    from pcl import PCLSFTConfig, PCLSFTTrainer
    from pcl.cli import main

    args = PCLSFTConfig(output_dir=str(tmp_path / "model"), per_device_train_batch_size=8, **cpu_args(max_steps=1))
    trainer = PCLSFTTrainer(tiny_model, args, train_dataset=datasets.Dataset.from_list(addition_rows(8)),
                            processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.save_model()
    path = write_gsm8k_like(tmp_path / "gsm8k", n_train=8, n_test=5, shared=2)
    keys = {"dataset_name": path, "dataset_config": "main", "prompt_column": "question", "answer_extractor": "gsm8k"}
    code = main(["calibrate", str(tmp_path / "model"), "--task", json.dumps({**keys, "dataset_test_split": "test"}),
                 "--train_task", json.dumps({**keys, "dataset_train_split": "train[:4]"}), "--max_new_tokens", "4",
                 "--n_boot", "20", "--output_dir", str(tmp_path / "calibration")])  # fmt: skip
    metrics = json.loads((tmp_path / "calibration" / "metrics.json").read_text())
    assert code == 0 and metrics["task"]["split"] == "test" and metrics["task"]["dataset_name"] == path
    assert metrics["n"] == 5 and metrics["n_seen_in_training"] == 2
