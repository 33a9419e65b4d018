# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""LoRA / PEFT: the new marker's rows train with the adapter, in both trainers and every mode; the saved adapter and
the merged model stop at the marker and read the same self-score. The adapter config's marker rows and TRL's vLLM sync
of them: test_adapters.py."""

import copy
import json
import os

import numpy as np
import pytest
import torch
from conftest import PROMPTS, addition_rows, cpu_args, no_marker_model, parity_reward
from datasets import Dataset


peft = pytest.importorskip("peft")
from peft import LoraConfig  # noqa: E402

from pcl import PCLGRPOConfig, PCLGRPOTrainer, PCLSFTConfig, PCLSFTTrainer  # noqa: E402
from pcl.adapters import FORMAT_FILE  # noqa: E402
from pcl.features import answer_features  # noqa: E402
from pcl.inference import generate  # noqa: E402
from pcl.marker import load_pcl_model  # noqa: E402
from pcl.readout import level_distribution, self_scores  # noqa: E402


LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"])


def grpo_trainer(model, tmp_path, peft_config, mode="teacher_forced", **config):
    config = {
        "per_device_train_batch_size": 8,
        "num_generations": 4,
        "max_completion_length": 8,
        "max_steps": 1,
        "learning_rate": 1e-2,
        "log_completions": False,
        **config,
    }
    args = PCLGRPOConfig(output_dir=str(tmp_path / f"grpo-{mode}"), self_assessment_mode=mode, **cpu_args(**config))
    return PCLGRPOTrainer(
        model=model, reward_funcs=parity_reward, args=args, train_dataset=Dataset.from_list(PROMPTS),
        peft_config=peft_config,
    )  # fmt: skip


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ---- trainers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["teacher_forced", "generated", "both"])
def test_grpo_lora_every_mode_trains_the_marker_rows(base_dir, tmp_path, mode):
    user = LoraConfig(**LORA)
    # backbone_grad=1: the marker's input row sits below the LM head, so the default (0) never trains it
    trainer = grpo_trainer(base_dir, tmp_path, user, mode=mode, max_steps=2, self_assessment_backbone_grad=1.0)
    marker = trainer.segment_tokens.marker_id
    config = trainer.model.peft_config["default"]
    assert config.trainable_token_indices == {"embed_tokens": [marker]} and "lm_head" in config.modules_to_save
    assert user.trainable_token_indices is None and user.modules_to_save is None
    head = trainer.model.get_output_embeddings()
    assert type(head).__name__ == "ModulesToSaveWrapper" and head.weight.requires_grad
    before = trainable(trainer.model)
    trainer.train()
    after = trainable(trainer.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any("lora_B" in n for n in changed)
    assert "base_model.model.lm_head.modules_to_save.default.weight" in changed
    if mode == "teacher_forced":  # the model writes the marker itself in the other modes: not within two steps
        assert "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default" in changed
    log = trainer.state.log_history[-1]
    assert "self_assessment/loss" in log and torch.isfinite(torch.tensor(log["train_loss"]))


def test_grpo_lora_on_tied_embeddings_reads_the_head_through_trainable_tokens(tmp_path):
    """Tied embeddings: the head is PEFT's trainable-tokens wrapper (no `bias` of its own), which TRL's fused head and
    PCL's readout of the level rows (the Brier metric) both read; the tied marker row trains."""
    model, tokenizer = no_marker_model(tied=True)
    path = tmp_path / "tied"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # backbone_grad=1: the tied head's digit rows are frozen, so the score learns through the adapter
    trainer = grpo_trainer(str(path), tmp_path, LoraConfig(**LORA), max_steps=2, self_assessment_backbone_grad=1.0)
    assert type(trainer.model.get_output_embeddings()).__name__ == "TrainableTokensWrapper"
    before = trainable(trainer.model)
    trainer.train()
    delta = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default"
    assert not torch.equal(before[delta], trainable(trainer.model)[delta])
    assert "self_assessment/brier" in trainer.state.log_history[0]


def test_grpo_lora_refuses_a_score_that_could_not_train(model_dir, tmp_path):
    """With `self_assessment_backbone_grad=0` (the default) only the LM head's level rows learn the score: a LoRA that
    leaves them frozen (tied embeddings, where only the marker's row trains; a marker that is an existing token, where
    no head copy is added) would train no score at all, so it is refused at init with the fix named."""
    model, tokenizer = no_marker_model(tied=True)
    tied = tmp_path / "tied"
    model.save_pretrained(tied)
    tokenizer.save_pretrained(tied)
    for path in (str(tied), model_dir):
        with pytest.raises(ValueError, match=r"self-score would not train.*self_assessment_backbone_grad=1.0"):
            grpo_trainer(path, tmp_path, LoraConfig(**LORA))
        grpo_trainer(path, tmp_path, LoraConfig(**LORA), self_assessment_backbone_grad=1.0)  # the named fix
        grpo_trainer(path, tmp_path, LoraConfig(**LORA), self_assessment_weight=0.0)  # nothing to train
        head_trained = LoraConfig(**LORA, modules_to_save=["lm_head"]) if path == model_dir else None
        if head_trained is not None:
            grpo_trainer(path, tmp_path, head_trained)


def resized_base(base_dir, tokenizer, tokens):
    """The base model as PCL resizes it for a new marker, for a stock TRL trainer to train the same model."""
    from transformers import AutoModelForCausalLM

    from pcl.marker import resize_for_marker

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    assert resize_for_marker(model, tokenizer, tokens)
    return model


def same_adapter_init(source, target) -> None:
    """Copy `source`'s adapter weights into `target` where both have them (LoRA A is randomly initialised)."""
    params = dict(source.named_parameters())
    with torch.no_grad():
        for name, p in target.named_parameters():
            if name in params:
                p.copy_(params[name])


def trainable_names(model) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_sft_weight_zero_trains_what_sft_trainer_trains(base_dir, tmp_path):
    """At weight 0 the rows carry no segment, so a new marker's rows would learn nothing: the LoRA config is used as
    given (no LM-head copy training on the answers), and loss and gradients are SFTTrainer's with that config on the
    same marker-resized model, as the weight-0 guarantee says."""
    from test_sft_data import collate
    from test_sft_trainer import assert_same_loss_and_grads
    from trl import SFTConfig, SFTTrainer

    rows = Dataset.from_list(addition_rows(16))
    args = PCLSFTConfig(output_dir=str(tmp_path / "pcl"), **cpu_args(self_assessment_weight=0.0))
    pcl = PCLSFTTrainer(base_dir, args=args, train_dataset=rows, peft_config=LoraConfig(**LORA))
    base = resized_base(base_dir, pcl.processing_class, pcl.segment_tokens)
    stock = SFTTrainer(
        base, args=SFTConfig(output_dir=str(tmp_path / "stock"), **cpu_args()), train_dataset=rows,
        processing_class=pcl.processing_class, peft_config=LoraConfig(**LORA),
    )  # fmt: skip
    assert trainable_names(pcl.model) == trainable_names(stock.model)
    same_adapter_init(pcl.model, stock.model)
    assert_same_loss_and_grads(pcl, stock, collate(pcl, 8))


def test_grpo_teacher_forced_weight_zero_trains_what_grpo_trainer_trains(base_dir, tmp_path):
    """Teacher-forced PCL-GRPO at weight 0 trains nothing through the segment: the LoRA config is used as given, so
    the trained parameters are GRPOTrainer's with it, and loss and gradients equal `GRPOTrainer._compute_loss` on the
    same rollouts. In the generated modes the model writes its segment, so the marker's rows still train."""
    from conftest import grads, rollout
    from trl import GRPOConfig, GRPOTrainer

    trainer = grpo_trainer(
        base_dir, tmp_path, LoraConfig(**LORA), self_assessment_weight=0.0, max_completion_length=16
    )
    base = resized_base(base_dir, trainer.processing_class, trainer.segment_tokens)
    args = GRPOConfig(
        output_dir=str(tmp_path / "stock"),
        **cpu_args(per_device_train_batch_size=8, num_generations=4, max_completion_length=16, log_completions=False),
    )
    stock = GRPOTrainer(
        base, parity_reward, args=args, train_dataset=Dataset.from_list(PROMPTS),
        processing_class=trainer.processing_class, peft_config=LoraConfig(**LORA),
    )  # fmt: skip
    assert trainable_names(trainer.model) == trainable_names(stock.model)

    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    plain, pcl = rollout(trainer)
    assert pcl["self_assessment_mask"].any()
    with torch.no_grad():  # a trained adapter, so that the gradients reach every LoRA matrix
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model = trainer.model
    loss_plain, g_plain = grads(trainer, lambda: GRPOTrainer._compute_loss(trainer, model, plain))
    loss_pcl, g_pcl = grads(trainer, lambda: trainer._compute_loss(model, pcl))
    torch.testing.assert_close(loss_pcl, loss_plain, rtol=1e-5, atol=1e-7)
    assert g_pcl.keys() == g_plain.keys() and g_plain
    for name, g in g_plain.items():
        torch.testing.assert_close(g_pcl[name], g, rtol=1e-4, atol=1e-7)

    generated = grpo_trainer(base_dir, tmp_path, LoraConfig(**LORA), mode="generated", self_assessment_weight=0.0)
    marker = generated.segment_tokens.marker_id
    assert generated.model.peft_config["default"].trainable_token_indices == {"embed_tokens": [marker]}


@pytest.fixture
def lora_sft(base_dir, tmp_path):
    """LoRA PCL-SFT from a base model without the marker: the trainer, and the segment NLL at the first and last log."""
    args = PCLSFTConfig(
        output_dir=str(tmp_path / "sft"),
        **cpu_args(max_steps=30, per_device_train_batch_size=10, learning_rate=1e-2, logging_steps=5),
    )
    user = LoraConfig(**LORA)
    trainer = PCLSFTTrainer(base_dir, args=args, train_dataset=Dataset.from_list(addition_rows()), peft_config=user)
    assert user.trainable_token_indices is None and user.modules_to_save is None
    trainer.train()
    nll = [h["self_assessment/nll"] for h in trainer.state.log_history if "self_assessment/nll" in h]
    return trainer, nll


def test_lora_sft_then_grpo(lora_sft, tmp_path):
    trainer, nll = lora_sft
    assert nll[-1] < 0.7 * nll[0], nll
    marker = trainer.segment_tokens.marker_id
    assert trainer.model.peft_config["default"].trainable_token_indices == {"embed_tokens": [marker]}

    adapter_dir = str(tmp_path / "adapter")
    trainer.save_model(adapter_dir)
    files = set(os.listdir(adapter_dir))
    assert {"adapter_config.json", "adapter_model.safetensors", FORMAT_FILE, "generation_config.json"} <= files
    assert "config.json" not in files  # transformers would take the folder for a complete model
    with open(os.path.join(adapter_dir, "generation_config.json")) as f:
        assert marker in json.load(f)["eos_token_id"]

    merged_dir = str(tmp_path / "merged")
    trainer.model.merge_and_unload().save_pretrained(merged_dir)
    trainer.processing_class.save_pretrained(merged_dir)

    # GRPO with a fresh adapter on the merged model: the marker is an existing token now, its rows trained already
    grpo = grpo_trainer(merged_dir, tmp_path, LoraConfig(**LORA), max_steps=2, self_assessment_backbone_grad=1.0)
    assert grpo.segment_tokens.marker_id == marker
    assert grpo.model.peft_config["default"].modules_to_save is None
    grpo.train()
    first = grpo.state.log_history[0]  # every rollout that stopped (not truncated) gets its segment
    assert first["self_assessment/frac_with_segment"] == pytest.approx(1.0 - first["completions/clipped_ratio"])
    assert first["self_assessment/frac_with_segment"] >= 0.5


def test_adapter_and_merged_model_stop_at_the_marker_and_agree(lora_sft, tmp_path):
    trainer, _ = lora_sft
    adapter_dir, merged_dir = str(tmp_path / "adapter"), str(tmp_path / "merged")
    trainer.save_model(adapter_dir)
    # Merge a copy: the trainer's adapter stays for comparison
    copy.deepcopy(trainer.model).merge_and_unload().save_pretrained(merged_dir)
    trainer.processing_class.save_pretrained(merged_dir)

    adapter, tokenizer, tokens = load_pcl_model(adapter_dir)
    merged, merged_tokenizer, merged_tokens = load_pcl_model(merged_dir)
    assert isinstance(adapter, peft.PeftModel) and type(merged).__name__ == "LlamaForCausalLM"
    assert tokens == merged_tokens == trainer.segment_tokens

    prompts = [r["prompt"] for r in addition_rows(20)]
    for model, tok in ((adapter, tokenizer), (merged, merged_tokenizer)):
        out = generate(model, tok, prompts, max_new_tokens=8, show_progress=False)
        assert all(g.tokens_after_marker == 0 for g in out)
        assert sum(g.stop == "marker" for g in out) >= 15, [g.stop for g in out]

    completions = [f" {i % 19}" for i in range(20)]
    trained = self_scores(trainer.model, trainer.processing_class, prompts, completions)
    from_adapter = self_scores(adapter, tokenizer, prompts, completions)
    from_merged = self_scores(merged, merged_tokenizer, prompts, completions)
    assert torch.allclose(torch.tensor(from_adapter), torch.tensor(from_merged), atol=1e-5)
    assert torch.allclose(torch.tensor(trained), torch.tensor(from_adapter), atol=1e-5)
    # Every readout takes the PeftModel: hidden states at the answer end (probes), token log-probs, and the self-score
    # read from the KV cache while generating
    feats = [
        answer_features(m, t, prompts, completions) for m, t in ((adapter, tokenizer), (merged, merged_tokenizer))
    ]
    np.testing.assert_allclose(feats[0].hidden, feats[1].hidden, atol=1e-5)
    np.testing.assert_allclose(feats[0].level_probs, feats[1].level_probs, atol=1e-5)
    for a, b in zip(feats[0].token_logprobs, feats[1].token_logprobs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    scored = [
        [g.self_score for g in generate(m, t, prompts[:4], max_new_tokens=8, show_progress=False, self_score=True)]
        for m, t in ((adapter, tokenizer), (merged, merged_tokenizer))
    ]
    assert scored[0] == pytest.approx(scored[1], abs=1e-5) and all(x is not None for x in scored[0])

    # The adapter is what the readout reads: without it the level distribution is another one
    trained_levels = level_distribution(adapter, tokenizer, prompts, completions)
    with adapter.disable_adapter():
        base_levels = level_distribution(adapter, tokenizer, prompts, completions)
    assert abs(trained_levels - base_levels).max() > 0.1


@pytest.mark.parametrize(
    "tied, user, saved_rows",
    [
        (False, {}, {"model.embed_tokens.token_adapter.trainable_tokens_delta", "lm_head.modules_to_save.weight"}),
        # The head's marker row alone instead of a copy of the head: list the head with no rows of its own
        (
            False,
            dict(trainable_token_indices={"lm_head": []}),
            {
                "model.embed_tokens.token_adapter.trainable_tokens_delta",
                "lm_head.token_adapter.trainable_tokens_delta",
            },
        ),
        (True, {}, {"model.embed_tokens.token_adapter.trainable_tokens_delta"}),
    ],
)
def test_saved_adapter_holds_the_marker_rows_and_reloads_the_trained_model(tmp_path, tied, user, saved_rows):
    """The saved adapter carries the trained marker rows, and `load_pcl_model` gives the trained model's logits."""
    from safetensors import safe_open

    model, tokenizer = no_marker_model(tied=tied)
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    args = PCLSFTConfig(output_dir=str(tmp_path / "sft"), **cpu_args(max_steps=5, learning_rate=1e-2))
    trainer = PCLSFTTrainer(
        str(tmp_path / "base"), args=args, train_dataset=Dataset.from_list(addition_rows(40)),
        peft_config=LoraConfig(**LORA, **user),
    )  # fmt: skip
    marker = trainer.segment_tokens.marker_id
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = {k.removeprefix("base_model.model.") for k in f.keys()}
        assert saved_rows <= keys
        delta = f.get_tensor("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta")
    trained = trainer.model.get_input_embeddings().weight
    torch.testing.assert_close(delta[0], trained[marker], rtol=0, atol=0)
    assert not torch.equal(trained[marker], trained[tokenizer.eos_token_id])

    ids = torch.tensor([tokenizer.encode("3 + 4 = 7") + [marker, tokenizer.convert_tokens_to_ids("5"), 1]])
    trainer.model.eval()
    adapter, _, _ = load_pcl_model(str(tmp_path / "adapter"))
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        torch.testing.assert_close(adapter(input_ids=ids).logits, want, rtol=0, atol=0)
        torch.testing.assert_close(adapter.merge_and_unload()(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)


def test_an_adapter_without_the_pcl_files_is_refused(lora_sft, tmp_path):
    trainer, _ = lora_sft
    plain = str(tmp_path / "plain")
    trainer.model.save_pretrained(plain)  # PEFT's own save: no tokenizer, no PCL format
    with pytest.raises(FileNotFoundError, match="is a PEFT adapter but not a PCL one"):
        load_pcl_model(plain)


# ---- README ---------------------------------------------------------------------------------------------------------


def test_readme_lora_snippet(base_dir, tmp_path, monkeypatch):
    from conftest import readme_python_block

    code = readme_python_block("### LoRA / PEFT")
    code = code.replace('load_dataset("trl-lib/DeepMath-103K", split="train")', "Dataset.from_list(ROWS)")
    code = code.replace('"Qwen/Qwen2.5-7B-Instruct"', repr(base_dir))
    code = code.replace(
        'PCLGRPOConfig(output_dir="qwen-pcl-lora")', 'PCLGRPOConfig(output_dir="qwen-pcl-lora", **TINY)'
    )
    assert code.count("ROWS") == 1 and code.count("TINY") == 1 and base_dir in code
    rows = [
        {"prompt": [{"role": "user", "content": f"{a} + {b} ="}], "solution": str(a + b)}
        for a in range(10)
        for b in range(10)
    ]
    tiny = cpu_args(per_device_train_batch_size=8, num_generations=4, max_completion_length=8, max_steps=2)
    monkeypatch.chdir(tmp_path)  # the snippet's relative output folders
    namespace = {"Dataset": Dataset, "ROWS": rows, "TINY": {**tiny, "log_completions": False}}
    exec(compile(code, "README.md", "exec"), namespace)

    marker = namespace["tokens"].marker_id
    assert namespace["trainer"].model.peft_config["default"].trainable_token_indices == {"embed_tokens": [marker]}
    assert isinstance(namespace["model"], peft.PeftModel) and 0.0 <= namespace["confidence"][0] <= 1.0
    merged, tokenizer, tokens = load_pcl_model(str(tmp_path / "qwen-pcl-merged"))
    assert tokens == namespace["tokens"] and marker in merged.generation_config.eos_token_id
    again = self_scores(merged, tokenizer, [[{"role": "user", "content": "What is 2 + 2?"}]], [" 4"])
    assert abs(again[0] - namespace["confidence"][0]) < 1e-5
