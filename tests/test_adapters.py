# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""pcl.adapters: the new marker's rows in the user's PEFT config (`train_marker_rows`), and the names TRL's vLLM
weight sync sends for them (`fix_vllm_sync_names`). The trainers with LoRA: test_peft.py."""

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import no_marker_model


peft = pytest.importorskip("peft")
from peft import LoraConfig, PromptTuningConfig, get_peft_model  # noqa: E402
from test_peft import LORA, grpo_trainer  # noqa: E402

from pcl.adapters import fix_vllm_sync_names, train_marker_rows  # noqa: E402
from pcl.tiny import build_char_tokenizer  # noqa: E402


# ---- the marker's rows in the adapter config ------------------------------------------------------------------------


def assert_marker_rows_move(model, config, marker: int = 98, eos: int = 1) -> None:
    """Wrap with `config`, move every trainable tensor, merge: the marker's rows must have moved off EOS's copy."""
    wrapped = get_peft_model(model, config)
    with torch.no_grad():
        for p in wrapped.parameters():
            if p.requires_grad:
                p.add_(1.0)
    merged = wrapped.merge_and_unload()
    embed, head = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    assert not torch.equal(embed[marker], embed[eos]) and not torch.equal(head[marker], head[eos])


class TestTrainMarkerRows:
    def test_untied_head_joins_modules_to_save_like_trls_added_tokens(self):
        model, tokenizer = no_marker_model()
        user = LoraConfig(**LORA)
        config = train_marker_rows(user, model, 98)
        assert config.trainable_token_indices == {"embed_tokens": [98]} and config.modules_to_save == ["lm_head"]
        assert user.trainable_token_indices is None and user.modules_to_save is None  # the user's is not mutated

    def test_the_users_indices_are_kept(self):
        model, _ = no_marker_model()
        config = train_marker_rows(LoraConfig(**LORA, trainable_token_indices=[3, 4]), model, 98)
        assert config.trainable_token_indices == [3, 4, 98]
        user = LoraConfig(**LORA, trainable_token_indices={"embed_tokens": [5], "lm_head": [5, 98]})
        config = train_marker_rows(user, model, 98)
        # The head already has the marker's row as trainable tokens: no full copy of the head
        assert config.trainable_token_indices == {"embed_tokens": [5, 98], "lm_head": [5, 98]}
        assert config.modules_to_save is None and user.trainable_token_indices["embed_tokens"] == [5]

    @pytest.mark.parametrize(
        "user, indices, saved",
        [
            # The usual config for new tokens: both layers trained in full already hold the marker's rows
            (dict(modules_to_save=["embed_tokens", "lm_head"]), None, ["embed_tokens", "lm_head"]),
            (dict(modules_to_save=["model.embed_tokens"]), None, ["model.embed_tokens", "lm_head"]),
            # A head with trainable tokens of its own gets the marker's row there, not a full copy
            (
                dict(trainable_token_indices={"embed_tokens": [5], "lm_head": [5]}),
                {"embed_tokens": [5, 98], "lm_head": [5, 98]},
                None,
            ),
            (dict(trainable_token_indices={"model.embed_tokens": [5]}), {"model.embed_tokens": [5, 98]}, ["lm_head"]),
        ],
    )
    def test_what_the_config_trains_already_is_kept(self, user, indices, saved):
        """PEFT refuses a layer both in `modules_to_save` and with trainable tokens, so the marker's rows go where
        the user's config trains that layer already, and the config wraps the model."""
        model, _ = no_marker_model()
        model.resize_token_embeddings(99)
        config = train_marker_rows(LoraConfig(**LORA, **user), model, 98)
        assert config.trainable_token_indices == indices and config.modules_to_save == saved
        assert_marker_rows_move(model, config)

    def test_a_lora_on_the_input_embeddings_learns_the_marker_row(self):
        """PEFT cannot put trainable tokens on an embedding layer that has a LoRA: the LoRA trains its marker row."""
        model, _ = no_marker_model()
        model.resize_token_embeddings(99)
        config = train_marker_rows(LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]), model, 98)
        assert config.trainable_token_indices is None and config.modules_to_save == ["lm_head"]
        assert_marker_rows_move(model, config)

    def test_a_lora_on_tied_input_embeddings_is_refused(self):
        """Its LoRA does not reach the tied head while training: the marker's logit would stay EOS's."""
        model, _ = no_marker_model(tied=True)
        model.resize_token_embeddings(99)
        with pytest.raises(ValueError, match="Remove 'embed_tokens' from `target_modules`"):
            train_marker_rows(LoraConfig(r=4, target_modules=["q_proj", "embed_tokens"]), model, 98)

    def test_tied_embeddings_stay_tied(self):
        model, _ = no_marker_model(tied=True)
        model.resize_token_embeddings(99)
        config = train_marker_rows(LoraConfig(**LORA), model, 98)
        assert config.trainable_token_indices == {"embed_tokens": [98]} and config.modules_to_save is None
        wrapped = get_peft_model(model, config)
        extra = [n for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" not in n]
        assert extra == ["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default"]

    def test_a_method_without_trainable_tokens_is_refused(self):
        model, _ = no_marker_model()
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
        with pytest.raises(ValueError, match="Use `peft.LoraConfig`, or set `self_assessment_marker` to an existing"):
            train_marker_rows(config, model, 98)

    def test_an_existing_marker_token_leaves_the_config_alone(self, model_dir, tmp_path):
        """The conftest model already has the marker: the user's LoRA config is used as given."""
        trainer = grpo_trainer(model_dir, tmp_path, LoraConfig(**LORA), self_assessment_backbone_grad=1.0)
        config = trainer.model.peft_config["default"]
        assert config.trainable_token_indices is None and config.modules_to_save is None


# ---- vLLM weight sync -----------------------------------------------------------------------------------------------


def mock_vllm(model, received: dict):
    """TRL's `VLLMGeneration` in colocate mode with vLLM mocked: its `load_weights` keeps what it receives."""
    from trl.generation.vllm_generation import VLLMGeneration

    def load_weights(weights):
        for name, tensor in weights:
            received[name] = tensor.clone()  # vLLM copies into its own buffers; TRL unmerges afterwards

    gen = object.__new__(VLLMGeneration)
    runner = SimpleNamespace(model=SimpleNamespace(load_weights=load_weights))
    engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)))
    gen.llm = SimpleNamespace(llm_engine=engine, reset_prefix_cache=lambda: None)
    gen.model, gen.mode, gen.enable_sleep_mode, gen.accelerator = model, "colocate", False, None
    gen._dist = SimpleNamespace(is_fsdp=False, gather_params=lambda params: contextlib.nullcontext())
    gen.generation_kwargs = {}
    return gen


def vllm_sync(model, fix: bool) -> dict[str, torch.Tensor]:
    """What TRL's colocate weight sync hands vLLM's `load_weights` for a PEFT model."""
    received = {}
    gen = mock_vllm(model, received)
    if fix:
        fix_vllm_sync_names(gen)
    gen.sync_weights()
    return received


@pytest.mark.parametrize("tied", [False, True])
def test_vllm_sync_sends_the_trained_marker_row_under_vllms_names(tied):
    model, _ = no_marker_model(tied=tied)
    tokenizer = build_char_tokenizer()
    model.resize_token_embeddings(len(tokenizer))
    marker = len(tokenizer) - 1
    wrapped = get_peft_model(model, train_marker_rows(LoraConfig(**LORA), model, marker))
    torch.manual_seed(0)
    with torch.no_grad():  # a "trained" adapter: every trainable tensor moved
        for p in wrapped.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)

    # TRL alone sends PEFT's trainable-tokens names, which vLLM's load_weights does not know
    unfixed = vllm_sync(wrapped, fix=False)
    assert "model.embed_tokens.token_adapter.weight" in unfixed and "model.embed_tokens.weight" not in unfixed

    sent = vllm_sync(wrapped, fix=True)
    expected = copy.deepcopy(wrapped).merge_and_unload().state_dict()
    if tied:  # vLLM ties the head itself: a tied checkpoint has no separate lm_head
        expected.pop("lm_head.weight")
    assert sorted(sent) == sorted(expected)
    assert not any(k in n for n in sent for k in ("token_adapter", "trainable_tokens", "modules_to_save", "lora_"))
    for name, tensor in expected.items():
        torch.testing.assert_close(sent[name], tensor, rtol=0, atol=1e-6)
    # The marker row vLLM gets is the trained one (the delta), not the base's
    delta = wrapped.get_base_model().model.embed_tokens.token_adapter.trainable_tokens_delta["default"]
    torch.testing.assert_close(sent["model.embed_tokens.weight"][marker], delta[0], rtol=0, atol=0)


def test_pcl_grpo_with_vllm_syncs_the_marker_row(base_dir, tmp_path, monkeypatch):
    """PCL-GRPO installs the renaming on the trainer's own vLLM backend (TRL's class, vLLM mocked)."""
    from trl.trainer import grpo_trainer as grpo_module

    received = {}
    monkeypatch.setattr(grpo_module, "VLLMGeneration", lambda model, **kwargs: mock_vllm(model, received))
    trainer = grpo_trainer(base_dir, tmp_path, LoraConfig(**LORA), use_vllm=True, vllm_mode="colocate")
    marker = trainer.segment_tokens.marker_id
    with torch.no_grad():
        trainer.model.get_base_model().model.embed_tokens.token_adapter.trainable_tokens_delta["default"].add_(1.0)
    trainer.vllm_generation.sync_weights()
    assert "model.embed_tokens.weight" in received and not any("token_adapter" in n for n in received)
    expected = copy.deepcopy(trainer.model).merge_and_unload().state_dict()
    assert sorted(received) == sorted(expected)
    torch.testing.assert_close(received["model.embed_tokens.weight"], expected["model.embed_tokens.weight"])
    assert not torch.equal(received["model.embed_tokens.weight"][marker], received["model.embed_tokens.weight"][1])
