# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import copy
import os


# Tests never reach a hub: tiny models and tokenizers are built locally (pcl.tiny)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

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


# The GRPO tests' prompts: one-digit additions with their answers
PROMPTS = [{"prompt": f"{a} + {b} =", "answer": str(a + b)} for a in range(10) for b in range(10)]


def parity_reward(completions, **kwargs):
    # Mixed rewards on an untrained model, so advantages are non-zero
    return [float(len(c) % 2) for c in completions]


def make_trainer(model_dir, tokenizer, tmp_path, reward=parity_reward, **config):
    """`grpo_trainer` on `PROMPTS` with `grpo_args(tmp_path, **config)`: the GRPO tests' trainer."""
    return grpo_trainer(model_dir, tokenizer, grpo_args(tmp_path, **config), reward, PROMPTS)


def rollout(trainer, seed=0, end_at_eos=True):
    """Parent GRPO output for one generation batch, and the same batch with PCL's segments appended.

    With `end_at_eos`, rows the length limit cut are closed with EOS instead (a model that ends its answers at EOS, as
    every model does before PCL training), so each batch has rows ending at the marker, at EOS, and truncated.
    """
    batch = next(iter(trainer.get_train_dataloader()))
    torch.manual_seed(seed)
    plain = GRPOTrainer._generate_and_score_completions(trainer, batch)
    if end_at_eos:
        tokens = trainer.segment_tokens
        for i, ids in enumerate(trainer._pcl_completion_ids):
            if ids[-1] not in (tokens.marker_id, *tokens.eos_ids) and i % 2 == 0:
                ids[-1] = tokens.eos_id
                plain["completion_ids"][i, len(ids) - 1] = tokens.eos_id
    pcl = {k: v.clone() if torch.is_tensor(v) else copy.copy(v) for k, v in plain.items()}
    trainer._append_segments(pcl)
    return plain, pcl


def grads(trainer, loss_fn):
    """`loss_fn()` and the model's gradients of it."""
    trainer.model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def reward_model(tokenizer, seed=1):
    """A tiny sequence-classification reward model: raw scores of either sign, like a real one."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(50.0)  # scores of several units, both signs
    return model


def no_marker_model_dir(tmp_path):
    """A tiny model and tokenizer without the marker, saved: a drop-in model the trainer must resize."""
    base_tok = build_char_tokenizer(marker=None)
    path = tmp_path / "no-marker"
    build_tiny_model(base_tok, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(path)
    base_tok.save_pretrained(path)
    return str(path), base_tok


def no_marker_model(tied: bool = False):
    """A tiny model and tokenizer without the marker, so PCL adds it as a new token."""
    tokenizer = build_char_tokenizer(marker=None)
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2)
    if tied:
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
    return model, tokenizer


@pytest.fixture
def base_dir(tmp_path):
    """`no_marker_model()` saved: the PEFT tests' base model, to which PCL adds the marker as a new token."""
    model, tokenizer = no_marker_model()
    path = tmp_path / "base"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def readme_python_block(after: str, index: int = 0) -> str:
    """The `index`-th ```python block of README.md after the first occurrence of `after` (a heading or phrase)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index(after)
    return re.findall(r"```python\n(.*?)```", readme[start:], re.S)[index]
