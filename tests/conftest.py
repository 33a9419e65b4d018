# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import os


# Tests never reach a hub: tiny models and tokenizers are built locally (pcl.tiny)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from pcl import PCLGRPOConfig, PCLGRPOTrainer  # noqa: E402
from pcl.segment import SegmentFormat  # noqa: E402
from pcl.tiny import build_char_tokenizer, build_tiny_model  # noqa: E402


# Tiny models gain nothing from intra-op threads, and on shared cores two threads can run 50x slower
torch.set_num_threads(1)


@pytest.fixture
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)


@pytest.fixture
def fmt():
    return SegmentFormat()


@pytest.fixture
def model_dir(tokenizer, tiny_model, tmp_path):
    """The tiny model and tokenizer saved to a directory, for trainers that load by path (e.g. GRPO's ref model)."""
    path = tmp_path / "base"
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def addition_rows(n: int = 100, reward=lambda a, b: float(a < 5)):
    """Prompt/completion rows for one-digit addition, with a reward rule the model can learn to predict."""
    rows = [
        {"prompt": f"{a} + {b} =", "completion": f" {a + b}", "reward": reward(a, b)}
        for a in range(10)
        for b in range(10)
    ]
    return rows[:n]


def random_binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences and 0/1 outcomes drawn so that the confidences are calibrated; rounded so that ties in the
    confidences occur, which exercises the tie handling of the rank-based AUROC."""
    rng = np.random.default_rng(seed)
    q = np.round(rng.uniform(0, 1, n), 2)
    c = (rng.uniform(0, 1, n) < q).astype(float)
    return q, c


def cpu_args(**kwargs):
    """Training arguments every test shares: CPU, no trackers, no checkpoints, no gradient checkpointing."""
    torch.manual_seed(0)
    return dict(
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
        **kwargs,
    )


def grpo_args(tmp_path, **config) -> PCLGRPOConfig:
    """The GRPO tests' config: `cpu_args`, one step on 2 prompts x 4 rollouts of at most 16 tokens, unless `config`
    says otherwise."""
    defaults = dict(
        per_device_train_batch_size=8, num_generations=4, max_completion_length=16, max_steps=1, log_completions=False
    )
    return PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(**{**defaults, **config}))


def grpo_trainer(model_dir: str, tokenizer, args: PCLGRPOConfig, reward, prompts: list[dict]) -> PCLGRPOTrainer:
    """A PCL-GRPO trainer on `prompts`, in training mode with one accumulation step, so that tests can call its
    generation and loss steps directly."""
    trainer = PCLGRPOTrainer(
        model=model_dir, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(prompts),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def readme_python_block(after: str, index: int = 0) -> str:
    """The `index`-th ```python block of README.md after the first occurrence of `after` (a heading or phrase)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index(after)
    return re.findall(r"```python\n(.*?)```", readme[start:], re.S)[index]
