# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The TRL-suite harness (benchmarks/trl_suite): its stand-ins look like the Hub's, and the comparison is right."""

import json

import pytest
from trl.data_utils import is_conversational

from benchmarks.trl_suite import plugin, standin_data, standins
from benchmarks.trl_suite.compare import compare, merge


@pytest.fixture(autouse=True)
def _index(monkeypatch):
    """The plugin's dataset redirection reads the index the stand-in builder writes in each test."""
    monkeypatch.setattr(plugin, "_INDEX", {})
    original = standin_data.build_all

    def build_and_register(data_dir):
        index = original(data_dir)
        plugin._INDEX.update(index)
        return index

    monkeypatch.setattr(standin_data, "build_all", build_and_register)


def test_zen_stand_in_has_every_config_with_the_hub_columns_and_splits(tmp_path):
    index = standin_data.build_all(tmp_path)
    assert len(index["trl-internal-testing/zen"]) == 13  # every dataset type, standard and conversational
    expected_columns = {
        "standard_language_modeling": {"text"},
        "standard_prompt_only": {"prompt"},
        "standard_prompt_completion": {"prompt", "completion"},
        "conversational_language_modeling": {"messages"},
        "conversational_prompt_only": {"prompt"},
        "conversational_prompt_completion": {"prompt", "completion"},
        "standard_preference": {"prompt", "chosen", "rejected"},
    }
    for config, columns in expected_columns.items():
        dataset = plugin.load_dataset("trl-internal-testing/zen", config)  # redirected to the parquet files
        assert set(dataset) == {"train", "test"}
        assert set(dataset["train"].column_names) == columns
        assert (len(dataset["train"]), len(dataset["test"])) == (17, 2)  # the Zen's 19 lines, 10 % held out
        assert is_conversational(dataset["train"][0]) == config.startswith("conversational")
    assert len(plugin.load_dataset("trl-internal-testing/zen", "standard_prompt_only", split="train[:50%]")) == 8
    toolcall = index["trl-internal-testing/toolcall"]["language_modeling"]
    row = plugin.load_dataset("parquet", data_files=toolcall, split="train")[0]
    assert json.loads(row["tools"])[0]["type"] == "function"
    assert row["messages"][1]["tool_calls"][0]["function"]["name"] == json.loads(row["tools"])[0]["function"]["name"]
    with pytest.raises(ValueError, match="No offline stand-in for config"):
        plugin.load_dataset("trl-internal-testing/zen", "no_such_config")


def test_tokenizer_stand_in_renders_the_real_chat_template_and_round_trips():
    tokenizer = standins.build_tokenizer("qwen2.5")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Beautiful is"}, {"role": "assistant", "content": "better than ugly."}],
        tokenize=False,
    )
    assert text.endswith("<|im_start|>assistant\nbetter than ugly.<|im_end|>\n")
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids and tokenizer.eos_token == "<|im_end|>"
    assert standins.build_tokenizer("llama3.2")("hi").input_ids[0] == standins.build_tokenizer("llama3.2").bos_token_id


def test_compare_reports_only_stock_passes_that_fail_with_pcl_grouped_by_cause():
    def run(outcomes):
        tests = {}
        for nodeid, (outcome, error) in outcomes.items():
            tests[nodeid] = {"outcome": outcome}
            if error:
                tests[nodeid]["error"] = error
        return {"meta": {}, "tests": tests}

    stock = run(
        {"a": ("passed", None), "b": ("passed", None), "c": ("failed", "OSError: offline"), "d": ("passed", None)}
    )
    pcl = run(
        {
            "a": ("failed", "ValueError: Reward -1.05 is outside 'x'"),
            "b": ("failed", "ValueError: Reward 2.5 is outside 'y'"),
            "c": ("failed", "OSError: offline"),
            "d": ("passed", None),
        }
    )
    result = compare(stock, pcl)
    assert result["summary"]["stock_passed"] == 3 and result["summary"]["stock_passed_pcl_not"] == 2
    [group] = result["regressions_by_cause"]
    assert group["cause"] == "ValueError: Reward # is outside '…'" and group["tests"] == ["a", "b"]
    assert [g["tests"] for g in result["stock_failures_by_cause"]] == [["c"]]


def test_a_pcl_rerun_can_reuse_the_stock_side_of_an_earlier_comparison(tmp_path):
    stock = {"meta": {"classes": "stock"}, "tests": {"a": {"outcome": "passed"}, "b": {"outcome": "failed"}}}
    stock["tests"]["b"]["error"] = "OSError: offline"
    pcl = {"meta": {"classes": "pcl"}, "tests": {"a": {"outcome": "failed", "error": "E: x"}}}
    earlier = tmp_path / "trl_suite.json"
    earlier.write_text(json.dumps(compare(stock, pcl)))
    assert merge([earlier], "stock") == stock
    assert merge([earlier], "pcl") == pcl
