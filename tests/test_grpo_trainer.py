# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""PCLGRPOTrainer as a drop-in GRPOTrainer: its config, the arguments and call forms the parent accepts, the
marker's resize on every model, processor and reference model, prompts and environments. The segment loss, the
layout, the reward targets and the generated modes are tested through the trainer in test_segment_loss.py,
test_grpo_layout.py, test_reward_targets.py and test_grpo_modes.py."""

import math

import pytest
import torch
from conftest import (
    PROMPTS,
    cpu_args,
    grpo_args,
    grpo_trainer,
    make_trainer,
    no_marker_model_dir,
    parity_reward,
    reward_model,
)
from datasets import Dataset
from transformers import ProcessorMixin
from trl import GRPOTrainer

from pcl import PCLGRPOConfig, PCLGRPOTrainer


class TestPCLGRPOConfig:
    def test_defaults(self):
        args = PCLGRPOConfig(output_dir="x", bf16=False)
        assert args.self_assessment_mode == "teacher_forced" and args.self_assessment_weight == 1.0
        assert args.self_assessment_backbone_grad == 0.0

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(self_assessment_mode="sampled"), "'teacher_forced', 'generated' or 'both'"),
            (dict(use_liger_kernel=True), "not supported by PCL"),
            (dict(self_assessment_levels=0), "at least two levels"),
            (dict(self_assessment_backbone_grad=-0.5), "`self_assessment_backbone_grad` must be a finite number >= 0"),
            (dict(self_assessment_backbone_grad=float("nan")), "finite number >= 0"),
        ],
    )
    def test_invalid(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            PCLGRPOConfig(output_dir="x", bf16=False, **kwargs)


def test_marker_in_prompts_is_refused(model_dir, tokenizer, tmp_path):
    args = PCLGRPOConfig(output_dir=str(tmp_path), **cpu_args(per_device_train_batch_size=4, num_generations=4))
    data = Dataset.from_list([{"prompt": "1 + 1 = <|post_completion|>"}])
    with pytest.raises(ValueError, match="already contains the marker"):
        PCLGRPOTrainer(model_dir, parity_reward, args=args, train_dataset=data, processing_class=tokenizer)


def test_conversational_prompts(model_dir, tokenizer, tmp_path):
    """Chat prompts: rewards see the assistant message without the marker, segments are appended as usual."""
    seen = []

    def reward(completions, **kwargs):
        seen.extend(completions)
        return [float(len(c[0]["content"]) % 2) for c in completions]

    chat = [{"prompt": [{"role": "user", "content": row["prompt"]}]} for row in PROMPTS]
    trainer = grpo_trainer(model_dir, tokenizer, grpo_args(tmp_path, max_steps=2, logging_steps=1), reward, chat)
    trainer.train()
    assert seen and all(c[0]["role"] == "assistant" and "<|post_completion|>" not in c[0]["content"] for c in seen)
    assert "self_assessment/frac_with_segment" in trainer.state.log_history[0]


@pytest.mark.parametrize("args_cls", ["GRPOConfig", "TrainingArguments"])
def test_plain_trl_args_are_converted(model_dir, tokenizer, tmp_path, args_cls):
    """A recipe's `GRPOConfig` (or `TrainingArguments`) keeps its values and gets PCL's defaults."""
    import transformers
    import trl

    cls = getattr(trl, args_cls, None) or getattr(transformers, args_cls)
    args = cls(output_dir=str(tmp_path), learning_rate=3e-5, **cpu_args())
    if args_cls == "GRPOConfig":
        args.num_generations = 4  # a GRPO-only value must survive too
    trainer = PCLGRPOTrainer(
        model_dir, parity_reward, args=args, train_dataset=Dataset.from_list(PROMPTS), processing_class=tokenizer
    )
    assert isinstance(trainer.args, PCLGRPOConfig) and trainer.args.learning_rate == 3e-5
    assert trainer.args.self_assessment_auto_range and trainer.args.self_assessment_weight == 1.0
    if args_cls == "GRPOConfig":
        assert trainer.num_generations == 4


ENV_TEMPLATE = "qwen3.jinja"


class RewardEnv:
    def reset(self, **kwargs):
        return None

    def get_reward(self):
        return 0.5


@pytest.mark.parametrize("cls", [GRPOTrainer, PCLGRPOTrainer])
def test_reward_funcs_none_with_an_environment_reward(model_dir, tokenizer, tmp_path, cls, monkeypatch):
    """`reward_funcs=None`: the environment owns the reward, as in TRL 1.16."""
    import os

    import trl

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    with open(os.path.join(os.path.dirname(trl.__file__), "chat_templates", ENV_TEMPLATE)) as f:
        tokenizer.chat_template = f.read()  # the environment's tools need a tool-calling template
    config_cls = PCLGRPOConfig if cls is PCLGRPOTrainer else trl.GRPOConfig
    args = config_cls(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1, logging_steps=1,
    ))  # fmt: skip
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "1 + 1 ="}]}] * 8)
    trainer = cls(
        model_dir, None, args=args, train_dataset=data, processing_class=tokenizer, environment_factory=RewardEnv
    )
    trainer.train()
    assert trainer.state.log_history[0]["rewards/RewardEnv/mean"] == 0.5


class PromptingEnv(RewardEnv):
    def reset(self, **kwargs):
        return "1 + 1 ="  # the environment writes the prompt


@pytest.mark.parametrize("cls", [GRPOTrainer, PCLGRPOTrainer])
def test_environment_dataset_without_a_prompt_column(model_dir, tokenizer, tmp_path, cls, monkeypatch):
    import os

    import trl

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    with open(os.path.join(os.path.dirname(trl.__file__), "chat_templates", ENV_TEMPLATE)) as f:
        tokenizer.chat_template = f.read()
    config_cls = PCLGRPOConfig if cls is PCLGRPOTrainer else trl.GRPOConfig
    args = config_cls(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1, logging_steps=1,
    ))  # fmt: skip
    data = Dataset.from_list([{"task_id": i} for i in range(8)])
    trainer = cls(
        model_dir, None, args=args, train_dataset=data, processing_class=tokenizer, environment_factory=PromptingEnv
    )
    trainer.train()
    assert trainer.state.log_history[0]["rewards/PromptingEnv/mean"] == 0.5


@pytest.mark.parametrize("cls", [GRPOTrainer, PCLGRPOTrainer])
def test_reward_funcs_none_without_a_reward_source_gives_trls_message(model_dir, tokenizer, tmp_path, cls):
    import trl

    config_cls = PCLGRPOConfig if cls is PCLGRPOTrainer else trl.GRPOConfig
    args = config_cls(output_dir=str(tmp_path / "out"), **cpu_args(per_device_train_batch_size=4, num_generations=4))
    with pytest.raises(ValueError, match="No reward source provided"):
        cls(model_dir, None, args=args, train_dataset=Dataset.from_list(PROMPTS), processing_class=tokenizer)


def test_reference_model_gets_the_marker_before_it_is_wrapped(tokenizer, tmp_path, monkeypatch):
    """beta > 0 with a marker that needs a resize: the reference model is resized (marker row from EOS) as it is
    created, before TRL wraps it (DeepSpeed / FSDP / accelerate), since a wrapped model cannot be resized."""
    from accelerate import Accelerator

    from pcl.tiny import build_char_tokenizer, build_tiny_model

    base_tok = build_char_tokenizer(marker=None)
    path = tmp_path / "no-marker"
    build_tiny_model(base_tok, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(path)
    base_tok.save_pretrained(path)
    wrapped_sizes = []
    original = Accelerator.prepare_model

    def prepare_model(self, model, *args, evaluation_mode=False, **kwargs):
        if evaluation_mode:  # how TRL wraps the reference model outside DeepSpeed/FSDP
            wrapped_sizes.append(model.get_input_embeddings().num_embeddings)
        return original(self, model, *args, evaluation_mode=evaluation_mode, **kwargs)

    monkeypatch.setattr(Accelerator, "prepare_model", prepare_model)
    trainer = make_trainer(str(path), base_tok, tmp_path, beta=0.04, max_steps=1)
    marker, eos = trainer.segment_tokens.marker_id, trainer.segment_tokens.eos_id
    assert wrapped_sizes == [len(base_tok)] and marker == len(base_tok) - 1
    for model in (trainer.model, trainer.ref_model):
        for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            assert torch.equal(w[marker], w[eos])
    trainer.train()
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_model_instance_is_resized_before_the_parent_casts_its_head(tmp_path):
    """A bf16 model instance with `cast_lm_head_to_fp32`: the marker's resize happens before the parent replaces the
    LM head, so the fp32 head survives and the marker row is EOS's."""
    from transformers import AutoModelForCausalLM

    path, base_tok = no_marker_model_dir(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1, logging_steps=1,
        cast_lm_head_to_fp32=True,
    ))  # fmt: skip
    trainer = PCLGRPOTrainer(
        model, parity_reward, args=args, train_dataset=Dataset.from_list(PROMPTS), processing_class=base_tok
    )
    marker, eos = trainer.segment_tokens.marker_id, trainer.segment_tokens.eos_id
    head = trainer.model.get_output_embeddings().weight
    assert head.dtype == torch.float32 and head.size(0) == len(base_tok) and torch.equal(head[marker], head[eos])
    trainer.train()
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_signature_mirrors_the_parent():
    import inspect

    ours, parent = inspect.signature(PCLGRPOTrainer.__init__), inspect.signature(GRPOTrainer.__init__)
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in parent.parameters.values()
    ]


@pytest.mark.parametrize("cls", [GRPOTrainer, PCLGRPOTrainer])
def test_positional_call_like_the_parent(model_dir, tokenizer, tmp_path, cls):
    """Seven positional arguments, the last one `reward_processing_classes`, as a recipe may call GRPOTrainer."""
    import trl

    config_cls = PCLGRPOConfig if cls is PCLGRPOTrainer else trl.GRPOConfig
    args = config_cls(output_dir=str(tmp_path / "out"), **cpu_args(per_device_train_batch_size=4, num_generations=4))
    rm = reward_model(tokenizer)
    trainer = cls(model_dir, [rm, parity_reward], args, Dataset.from_list(PROMPTS), None, tokenizer, [tokenizer, None])
    assert trainer.reward_processing_classes[0] is tokenizer and trainer.eval_dataset is None


class TextProcessor(ProcessorMixin):
    """A processor holding only a tokenizer: what a vision-language model's processor is to the marker."""

    def __init__(self, tokenizer=None, **kwargs):
        super().__init__(tokenizer=tokenizer, **kwargs)


def test_processor_gets_the_marker_on_its_tokenizer(tmp_path):
    from transformers import AutoConfig

    path, base_tok = no_marker_model_dir(tmp_path)
    config = AutoConfig.from_pretrained(path)
    config.image_token_id = base_tok.unk_token_id  # read by GRPOTrainer from a processor's model (never sampled)
    config.save_pretrained(path)
    processor = TextProcessor(base_tok)
    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1, log_completions=False,
        logging_steps=1,
    ))  # fmt: skip
    trainer = PCLGRPOTrainer(path, parity_reward, args=args, train_dataset=Dataset.from_list(PROMPTS),
                             processing_class=processor)  # fmt: skip
    marker = trainer.segment_tokens.marker_id
    assert trainer.processing_class is processor and processor.tokenizer.convert_ids_to_tokens(marker) == (
        args.self_assessment_marker
    )
    assert trainer.model.get_input_embeddings().num_embeddings == len(processor.tokenizer)
    trainer.train()
    assert trainer.state.log_history[0]["self_assessment/frac_with_segment"] > 0


@pytest.mark.parametrize("cls", [GRPOTrainer, PCLGRPOTrainer])
def test_processing_class_is_loaded_like_the_parent(model_dir, tmp_path, cls, monkeypatch):
    """No `processing_class`: an AutoProcessor with the model's revision and `trust_remote_code`, left-padded."""
    import trl
    from transformers import AutoProcessor

    calls = []
    original = AutoProcessor.from_pretrained.__func__

    def record(klass, *args, **kwargs):
        calls.append((args, kwargs))
        return original(klass, *args, **kwargs)

    monkeypatch.setattr(AutoProcessor, "from_pretrained", classmethod(record))
    config_cls = PCLGRPOConfig if cls is PCLGRPOTrainer else trl.GRPOConfig
    args = config_cls(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=4, num_generations=4, model_init_kwargs={"revision": "main"},
    ))  # fmt: skip
    trainer = cls(model_dir, parity_reward, args=args, train_dataset=Dataset.from_list(PROMPTS))
    assert calls == [
        ((model_dir,), dict(revision="main", truncation_side="left", padding_side="left", trust_remote_code=False))
    ]
    assert trainer.processing_class.padding_side == "left"
