# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Reward functions by reference, as `trl grpo --reward_funcs` takes them, and PCL's math-verify reward."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from trl.rewards import accuracy_reward, think_format_reward

from pcl.rewards import (
    GRPO_REWARD_INPUTS,
    REWARD_INPUTS,
    check_reward_inputs,
    import_callable,
    math_verify_accuracy,
    resolve_reward_func,
)
from pcl.tasks import TaskSpec, load_task


def test_module_colon_function():
    assert resolve_reward_func("pcl.tasks:load_task") is load_task
    assert resolve_reward_func("pcl.tasks:TaskSpec.from_dict") == TaskSpec.from_dict


def test_trl_names_and_dotted_paths():
    """What `trl grpo --reward_funcs` accepts (trl/scripts/grpo.py): its reward names and dotted import paths."""
    assert resolve_reward_func("accuracy_reward") is accuracy_reward
    assert resolve_reward_func("think_format_reward") is think_format_reward
    overlong = resolve_reward_func("get_soft_overlong_punishment")  # with the script's arguments
    assert overlong(completion_ids=[[0] * 1024, [0] * 1280]) == [0.0, -1.0]
    assert resolve_reward_func("pcl.rewards.math_verify_accuracy") is math_verify_accuracy
    assert resolve_reward_func("trl.rewards.accuracy_reward") is accuracy_reward


def test_working_directory_is_importable(tmp_path, monkeypatch):
    """Like `trl grpo`, a rewards module beside the recipe (in the working directory) is found."""
    (tmp_path / "my_rewards_for_pcl_test.py").write_text("def length(completions, **kw):\n    return [1.0] * 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    assert resolve_reward_func("my_rewards_for_pcl_test.length")(completions=[]) == [1.0] * 3
    assert resolve_reward_func("my_rewards_for_pcl_test:length").__name__ == "length"


@pytest.mark.parametrize("ref", ["pcl.tasks:", ":load_task", "pcl.tasks:a:b", "pcl tasks:f", "pcl..x:f", "load_task",
                                 ".load_task", None])  # fmt: skip
def test_malformed(ref):
    with pytest.raises(ValueError, match=r"'module.path:function' or 'module.path.function'.*'accuracy_reward'"):
        resolve_reward_func(ref)


def test_missing_module_function_or_not_callable():
    with pytest.raises(ImportError, match="'pcl.no_such_module'"):
        resolve_reward_func("pcl.no_such_module:f")
    with pytest.raises(AttributeError, match="'pcl.tasks' has no function 'no_such_function'"):
        resolve_reward_func("pcl.tasks:no_such_function")
    with pytest.raises(TypeError, match="not a callable"):
        resolve_reward_func("pcl.tasks:__all__")
    with pytest.raises(TypeError, match="'pcl.tasks' resolves to a module"):
        resolve_reward_func("pcl.tasks")  # TRL's form: module `pcl`, attribute `tasks`
    with pytest.raises(ValueError, match="module.path"):
        import_callable("accuracy_reward")  # TRL's names are rewards, not answer extractors


def test_math_verify_accuracy():
    rewards = math_verify_accuracy(["so \\boxed{72}", "It is 71.", "#### 72", [{"role": "assistant", "content": "72"}]],
                                   answer=["72", "72", "72", "72"])  # fmt: skip
    assert rewards == [1.0, 0.0, 1.0, 1.0]
    assert math_verify_accuracy(["72"], answer=["no number"]) == [None]  # no gold to compare: no reward


def test_check_reward_inputs():
    """A reward is checked against what it will be passed: TRL's accuracy rewards need a `solution` column that PCL's
    tasks do not have; optional arguments and `**kwargs` are not required."""
    with pytest.raises(
        ValueError, match=r"where: reward 'accuracy_reward' needs \['solution'\].*math_verify_accuracy"
    ):
        check_reward_inputs(accuracy_reward, GRPO_REWARD_INPUTS, "where")
    check_reward_inputs(math_verify_accuracy, REWARD_INPUTS, "where")
    check_reward_inputs(think_format_reward, REWARD_INPUTS, "where")

    def mine(completions, answer, entry, scale=1.0, **kwargs):
        return [scale] * len(completions)

    check_reward_inputs(mine, REWARD_INPUTS, "where")
    with pytest.raises(ValueError, match=r"needs \['answer'\]"):
        check_reward_inputs(mine, ("prompts", "completions", "entry"), "where")
    overlong = resolve_reward_func("get_soft_overlong_punishment")
    check_reward_inputs(overlong, GRPO_REWARD_INPUTS, "where")
    with pytest.raises(ValueError, match=r"needs \['completion_ids'\]"):
        check_reward_inputs(overlong, REWARD_INPUTS, "where")


def test_math_verify_accuracy_is_time_limited():
    """An answer whose value cannot be computed (`9^9^9^9`) scores 0 within math-verify's timeouts, as in TRL's
    accuracy_reward, instead of stopping training (without the timeouts it ran for over a minute); run in a
    subprocess, so a regression fails the test instead of hanging it."""
    code = ("from pcl.rewards import math_verify_accuracy; "
            "print(math_verify_accuracy(['so the answer is 9^9^9^9', '#### 72'], ['72', '72']))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[0.0, 1.0]"


def test_math_verify_accuracy_off_the_main_thread():
    """Signals work only on the main thread: elsewhere the timeouts are off and the reward still works."""
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_verify_accuracy, ["#### 1,000", "It is 71."], ["1000", "72"]).result() == [1.0, 0.0]
