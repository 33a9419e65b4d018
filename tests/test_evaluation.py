# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import json

import pytest

from pcl.evaluation import parse_verbalized_confidence, run_calibration
from pcl.tasks import TaskSpec


@pytest.mark.parametrize(
    "text, answer, q",
    [
        ("42 <confidence>0.8</confidence>", "42", 0.8),
        ("<analysis>easy</analysis> 7<confidence> .25 </confidence>", "", 0.25),
        ("42", "42", None),
        ("42 <confidence>1.5</confidence>", "42", None),  # outside [0, 1]
    ],
)
def test_parse_verbalized_confidence(text, answer, q):
    assert parse_verbalized_confidence(text) == (answer, q)


@pytest.mark.slow
def test_run_calibration_on_trained_model(tmp_path, tokenizer):
    """A model whose self-score is trained on a learnable rule beats chance, and the report matches the metrics."""
    from datasets import Dataset

    from pcl import PCLSFTConfig, PCLSFTTrainer
    from pcl.tasks import load_task
    from pcl.tiny import build_tiny_model

    spec = TaskSpec("chain_sum", size=400, seed=1, config={"min_terms": 2, "max_terms": 2, "max_digits": 1})
    train = load_task(spec)
    rows = [{"prompt": p, "completion": " " + a} for p, a in zip(train["prompt"], train["answer"], strict=True)]
    args = PCLSFTConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none", save_strategy="no",
                        gradient_checkpointing=False, max_steps=60, learning_rate=3e-3, per_device_train_batch_size=32,
                        disable_tqdm=True)  # fmt: skip
    model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2)
    trainer = PCLSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))

    evaluation = TaskSpec("chain_sum", size=60, seed=10**6, config=spec.config)
    metrics = run_calibration(str(tmp_path / "model"), evaluation, str(tmp_path / "cal"),
                              train_prompts=train["prompt"], max_new_tokens=4, n_boot=50, quiet=True)  # fmt: skip
    # 1-digit pairs are only 200 distinct problems: most evaluation items were seen in training (DESIGN.md §6)
    assert metrics["n_seen_in_training"] > 0 and metrics["n_unseen"] == 60 - metrics["n_seen_in_training"]
    assert metrics["deploy"]["share"] == 0.0 and metrics["stop_reasons"].get("marker", 0) > 0
    full = metrics["sources"]["full"]
    for source in ("pcl_expected", "pcl_written", "mean_token_prob", "sequence_prob", "min_token_prob"):
        assert 0.0 <= full[source]["ece_10"] <= 1.0 and 0.0 <= full[source]["brier"] <= 1.0
    # The in-band confidence path, run on a model that never writes <confidence>: unparsed, counted, still reported
    verbal = run_calibration(str(tmp_path / "model"), evaluation, str(tmp_path / "cal_verbal"),
                             max_new_tokens=4, n_boot=0, quiet=True, confidence_model=str(tmp_path / "model"))  # fmt: skip
    assert verbal["verbalized_model"]["parse_rate"] == 0.0 and verbal["verbalized_model"]["mean_tokens"] > 0
    assert "verbalized" in verbal["sources"]["full"]
    saved = json.loads((tmp_path / "cal" / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"]
    assert f"{metrics['accuracy']:.3f}" in (tmp_path / "cal" / "report.md").read_text()
