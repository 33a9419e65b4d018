# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import json
import os

import pytest
import torch
from conftest import no_marker_model_dir

from pcl.marker import CONFIG_KEY, add_marker_token, load_pcl_model, prepare_model, segment_tokens
from pcl.segment import SegmentFormat
from pcl.tiny import build_char_tokenizer, build_tiny_model


def test_marker_added_once_as_special_token():
    tok = build_char_tokenizer(marker=None)
    n = len(tok)
    marker_id = add_marker_token(tok, "<|pc|>")
    assert len(tok) == n + 1 and add_marker_token(tok, "<|pc|>") == marker_id
    assert tok.decode([5, marker_id, 6], skip_special_tokens=True) == tok.decode([5, 6])


def test_existing_special_token_is_reused():
    tok = build_char_tokenizer(marker=None)
    n = len(tok)
    assert add_marker_token(tok, "<eos>") == tok.eos_token_id and len(tok) == n


def test_marker_split_by_tokenizer_is_an_error():
    tok = build_char_tokenizer(marker=None)
    # '~' is a normal single character token, '~~' is in the vocabulary neither as a token nor a special token: but a
    # vocabulary entry that the tokenizer splits when encoding must be refused
    tok.add_tokens(["ab"])  # an added (non-special) token that is matched...
    assert add_marker_token(tok, "ab") == tok.convert_tokens_to_ids("ab")
    backend_vocab_word = "xy"
    tok2 = build_char_tokenizer(marker=None)
    vocab = tok2.get_vocab()
    assert backend_vocab_word not in vocab
    tok2.backend_tokenizer.model = type(tok2.backend_tokenizer.model)(
        {**vocab, backend_vocab_word: len(vocab)}, unk_token="<unk>"
    )
    with pytest.raises(ValueError, match="split into 2 tokens"):
        add_marker_token(tok2, backend_vocab_word)


def test_level_must_be_single_token():
    with pytest.raises(ValueError, match="single token"):
        segment_tokens(build_char_tokenizer(), SegmentFormat(levels=11))


def test_prefix_that_merges_with_score_is_refused():
    tok = build_char_tokenizer()
    tok.add_tokens([":7"])  # the prefix ':' and the score '7' now merge into one token in context
    with pytest.raises(ValueError, match="tokenises differently after the marker"):
        segment_tokens(tok, SegmentFormat(prefix=":"))


def test_prepare_model_resizes_and_adds_stop(tmp_path):
    tok = build_char_tokenizer(marker=None)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2)
    n = model.get_input_embeddings().num_embeddings
    tokens = prepare_model(model, tok, SegmentFormat())
    assert model.get_input_embeddings().num_embeddings == n + 1 == len(tok)
    assert tokens.marker_id in model.generation_config.eos_token_id
    assert tok.eos_token_id in model.generation_config.eos_token_id
    assert tokens.eos_ids == (tok.eos_token_id,)

    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with open(tmp_path / "generation_config.json") as f:
        assert tokens.marker_id in json.load(f)["eos_token_id"]
    loaded, loaded_tok, loaded_tokens = load_pcl_model(str(tmp_path))
    assert loaded_tokens == tokens
    assert getattr(loaded.config, CONFIG_KEY)["marker"] == SegmentFormat().marker


def test_load_refuses_broken_checkpoints(tmp_path):
    tok = build_char_tokenizer(marker=None)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2)
    with pytest.raises(FileNotFoundError, match="No model directory"):
        load_pcl_model(str(tmp_path / "missing"))

    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    tok.save_pretrained(plain)
    with pytest.raises(ValueError, match="not trained with PCL"):
        load_pcl_model(str(plain))

    no_marker = tmp_path / "no_marker"
    prepare_model(model, build_char_tokenizer(), SegmentFormat())
    model.save_pretrained(no_marker)
    tok.save_pretrained(no_marker)  # the tokenizer from before the marker was added
    with pytest.raises(ValueError, match="lacks the marker"):
        load_pcl_model(str(no_marker))

    incomplete = tmp_path / "incomplete"
    model.save_pretrained(incomplete)
    for f in os.listdir(incomplete):
        if f.endswith(".safetensors"):
            os.remove(incomplete / f)
    with pytest.raises(FileNotFoundError, match="missing .*model weights.*tokenizer files"):
        load_pcl_model(str(incomplete))


def test_one_pcl_hook_per_model(tmp_path):
    """A model reused from PCL-SFT into PCL-GRPO loses the SFT hook: GRPO's segment log-probs are not reweighted."""
    import sys

    import torch
    from datasets import Dataset

    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import addition_rows, cpu_args

    from pcl import PCLGRPOConfig, PCLGRPOTrainer, PCLSFTConfig, PCLSFTTrainer

    tok = build_char_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2)
    sft_args = PCLSFTConfig(output_dir=str(tmp_path / "sft"), self_assessment_weight=0.25, **cpu_args())
    PCLSFTTrainer(model, args=sft_args, train_dataset=Dataset.from_list(addition_rows(8)), processing_class=tok)
    grpo_args = PCLGRPOConfig(
        output_dir=str(tmp_path / "grpo"), **cpu_args(per_device_train_batch_size=4, num_generations=4)
    )
    prompts = Dataset.from_list([{"prompt": "1 + 1 ="}] * 8)
    trainer = PCLGRPOTrainer(model, lambda completions, **kw: [1.0] * len(completions), args=grpo_args,
                             train_dataset=prompts, processing_class=tok)  # fmt: skip
    assert sum(hasattr(m, "_pcl_hook") for m in model.modules()) == 1
    tokens = trainer.segment_tokens
    ids = torch.tensor(
        [tok.encode("1 + 1 = 2", add_special_tokens=False) + [tokens.marker_id, tokens.level_ids[9], 1]]
    )
    logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, torch.ones_like(ids), 4)
    with torch.no_grad():
        expected = model(input_ids=ids).logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[:, -4:, 0]
    torch.testing.assert_close(logps.detach(), expected, rtol=1e-5, atol=1e-6)


def test_new_marker_rows_start_from_eos():
    import torch

    tok = build_char_tokenizer(marker=None)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2)
    tokens = prepare_model(model, tok, SegmentFormat())
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert torch.equal(emb[tokens.marker_id], emb[tokens.eos_id])
    assert torch.equal(head[tokens.marker_id], head[tokens.eos_id])
    # the new stop takes EOS's share, not ~1/V of the mass at every position
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tok.encode("1 + 1 = 2", add_special_tokens=False)])).logits
    torch.testing.assert_close(logits[..., tokens.marker_id], logits[..., tokens.eos_id])


def test_new_marker_doubles_a_small_stop_probability():
    """What the docs state for weight 0: a new marker (a stop copying EOS's row) turns the stop probability p(EOS)
    into p(EOS) + p(marker) = 2p / (1 + p) before training, so rollouts differ from the parent's."""
    import torch

    tok = build_char_tokenizer(marker=None)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2)
    ids = torch.tensor([tok.encode("3 + 4 = 7", add_special_tokens=False)])
    with torch.no_grad():
        p = model(input_ids=ids).logits[0, -1].softmax(-1)[tok.eos_token_id].item()
        tokens = prepare_model(model, tok, SegmentFormat())
        q = model(input_ids=ids).logits[0, -1].softmax(-1)
    assert p < 0.1
    stop = (q[tokens.eos_id] + q[tokens.marker_id]).item()
    assert stop == pytest.approx(2 * p / (1 + p), rel=1e-4) and stop > 1.8 * p


@pytest.mark.parametrize("trainer", ["prepare_model", "sft", "grpo"])
def test_new_marker_on_a_spare_row_starts_from_eos(trainer, tmp_path):
    """Embeddings with spare rows (Qwen2.5: 152064 rows for 151665 tokens) need no resize for a new marker, whose
    rows are then an untrained padding row unless PCL copies EOS's rows there too."""
    import torch
    from datasets import Dataset

    from pcl import PCLGRPOConfig, PCLGRPOTrainer, PCLSFTConfig, PCLSFTTrainer

    tok = build_char_tokenizer(marker=None)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2)
    model.resize_token_embeddings(len(tok) + 8)  # spare rows, as padded vocabularies have
    rows = model.get_input_embeddings().weight.shape[0]
    if trainer == "prepare_model":
        marker_id = prepare_model(model, tok, SegmentFormat()).marker_id
    elif trainer == "sft":
        args = PCLSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
        data = Dataset.from_list([{"prompt": "1 + 1 =", "completion": " 2", "self_assessment_reward": 1.0}])
        marker_id = PCLSFTTrainer(model, args=args, train_dataset=data, processing_class=tok).segment_tokens.marker_id
    else:
        args = PCLGRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False,
                             per_device_train_batch_size=2, num_generations=2, max_completion_length=4)  # fmt: skip
        data = Dataset.from_list([{"prompt": "1 + 1 ="}] * 2)
        trainer = PCLGRPOTrainer(model, lambda completions, **kw: [1.0] * len(completions), args=args,
                                 train_dataset=data, processing_class=tok)  # fmt: skip
        marker_id = trainer.segment_tokens.marker_id
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == rows and marker_id < rows  # no resize: the marker took a spare row
    assert torch.equal(emb[marker_id], emb[tok.eos_token_id])
    assert torch.equal(head[marker_id], head[tok.eos_token_id])


def test_peft_wrapped_model_needing_a_resize_is_refused(tmp_path):
    """A model already wrapped by PEFT (anything with `get_base_model`) cannot take the marker's resize."""
    from transformers import AutoModelForCausalLM

    from pcl.marker import resize_instance, segment_tokens
    from pcl.segment import SegmentFormat

    path, base_tok = no_marker_model_dir(tmp_path)
    base = AutoModelForCausalLM.from_pretrained(path)
    wrapped = torch.nn.Module()
    wrapped.get_base_model = lambda: base  # PEFT's accessor to the model it wraps
    tokens = segment_tokens(base_tok, SegmentFormat())  # adds the marker to the tokenizer
    with pytest.raises(ValueError, match="existing special \\(e.g. reserved\\) token of the base model"):
        resize_instance(wrapped, base_tok, tokens)
    assert base.get_input_embeddings().num_embeddings == len(base_tok) - 1
    resize_instance(base, base_tok, tokens)  # the bare model is resized
    assert base.get_input_embeddings().num_embeddings == len(base_tok)
