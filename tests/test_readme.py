# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The README's Python blocks run as written (on a tiny checkpoint in place of the quickstart's)."""

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import addition_rows, cpu_args
from datasets import Dataset

from pcl import PCLSFTConfig, PCLSFTTrainer


README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def python_block(after: str) -> str:
    start = README.index(after)
    return re.search(r"```python\n(.*?)```", README[start:], re.S).group(1)


@pytest.fixture
def checkpoint(tiny_model, tokenizer, tmp_path):
    args = PCLSFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=8, **cpu_args())
    trainer = PCLSFTTrainer(
        tiny_model, args=args, train_dataset=Dataset.from_list(addition_rows(16)), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "ckpt"))
    return str(tmp_path / "ckpt")


def test_self_score_snippet_runs(checkpoint, capsys):
    code = python_block("Use the self-score in your own code").replace("outputs/quickstart/assess", checkpoint)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    n = len(namespace["prompts"])
    assert len(namespace["confidence"]) == n and all(0.0 <= c <= 1.0 for c in namespace["confidence"])
    sources = namespace["sources"]
    assert {"pcl_expected", "sequence_prob", "sequence_prob_no_stop"} <= set(sources)
    # The single-pass self-score is the separate readout's
    np.testing.assert_allclose(sources["pcl_expected"], namespace["confidence"], atol=1e-6)
