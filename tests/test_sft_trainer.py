# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import copy
import math

import pytest
import torch
from conftest import addition_rows, cpu_args
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from pcl import PCLSFTConfig, PCLSFTTrainer, load_pcl_model
from pcl.segment import SegmentFormat, empty_segment_mask, segment_mask
from pcl.sft_trainer import render_rows


def make_trainer(model, tokenizer, rows, tmp_path, **config):
    args = PCLSFTConfig(output_dir=str(tmp_path), **cpu_args(**config))
    return PCLSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def first_batch(trainer, n=8):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=(batch["labels"] != -100).sum())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


class TestPCLSFTConfig:
    def test_defaults(self):
        args = PCLSFTConfig(output_dir="x", bf16=False)
        assert args.self_assessment_weight == 1.0 and args.self_assessment_levels == 10
        assert args.segment_format == SegmentFormat()

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(self_assessment_levels=1), "at least two levels"),
            (dict(self_assessment_weight=-1.0), ">= 0"),
            (dict(self_assessment_reward_range=[0.0]), r"\[lo, hi\]"),
            (dict(use_liger_kernel=True), "use_liger_kernel=True` is not supported"),
            (dict(label_smoothing_factor=0.1), "label_smoothing_factor"),
        ],
    )
    def test_invalid(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            PCLSFTConfig(output_dir="x", bf16=False, **kwargs)


class TestPCLSFTTrainer:
    def test_weight_one_equals_sft_trainer(self, tiny_model, tokenizer, tmp_path):
        """With weight 1 and every row rewarded, PCL-SFT is plain SFT on the rendered rows: loss and gradients."""
        rows = addition_rows(40)
        pcl = make_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path)
        rendered = render_rows(Dataset.from_list(rows), SegmentFormat(), "reward")
        plain = SFTTrainer(
            model=copy.deepcopy(tiny_model),
            args=SFTConfig(output_dir=str(tmp_path), **cpu_args()),
            train_dataset=rendered,
            processing_class=tokenizer,
        )
        assert pcl.train_dataset["input_ids"] == plain.train_dataset["input_ids"]
        batch = first_batch(pcl)
        loss_pcl, grads_pcl = loss_and_grads(pcl, batch)
        loss_plain, grads_plain = loss_and_grads(plain, batch)
        assert loss_pcl.item() == loss_plain.item()
        for name, grad in grads_plain.items():
            torch.testing.assert_close(grads_pcl[name], grad, rtol=0, atol=0)

    @pytest.mark.parametrize("weight", [0.0, 0.3])
    def test_loss_matches_hand_computation(self, tiny_model, tokenizer, tmp_path, weight):
        """Completion tokens weigh 1, assessment tokens `weight`, the EOS after a reward-less marker 0."""
        rows = addition_rows(40, reward=lambda a, b: None if (a + b) % 3 == 0 else float(a < 5))
        trainer = make_trainer(tiny_model, tokenizer, rows, tmp_path, self_assessment_weight=weight)
        batch = first_batch(trainer, 16)
        loss, _ = loss_and_grads(trainer, batch)

        tokens = trainer.segment_tokens
        with torch.no_grad():
            logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        nll = -logits[:, :-1].log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        in_seg = segment_mask(batch["input_ids"], tokens.marker_id, tokens.eos_ids)[:, 1:]
        empty = empty_segment_mask(batch["input_ids"], tokens.marker_id, tokens.eos_ids)[:, 1:]
        w = torch.ones_like(nll).masked_fill(in_seg, weight).masked_fill(empty, 0.0) * (labels != -100)
        assert empty.any() and (in_seg & ~empty).any()  # both kinds of rows are in the batch
        expected = (w * nll).sum() / (labels != -100).sum()
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)

    def test_rendered_rows(self, tiny_model, tokenizer, tmp_path):
        rows = [
            {"prompt": "1 + 1 =", "completion": " 2", "reward": 1.0},
            {"prompt": "9 + 9 =", "completion": " 17", "reward": 0.0},
            {"prompt": "2 + 2 =", "completion": " 4", "reward": None},
        ]
        trainer = make_trainer(tiny_model, tokenizer, rows, tmp_path, self_assessment_prefix="s:")
        texts = [tokenizer.decode(ids) for ids in trainer.train_dataset["input_ids"]]
        assert texts == [
            "1 + 1 = 2<|post_completion|>s:9<eos>",
            "9 + 9 = 17<|post_completion|>s:0<eos>",
            "2 + 2 = 4<|post_completion|><eos>",
        ]

    def test_conversational(self, tiny_model, tokenizer, tmp_path):
        rows = [
            {
                "prompt": [{"role": "user", "content": f"{a} + {b} ="}],
                "completion": [{"role": "assistant", "content": f" {a + b}"}],
                "reward": float(a < 5),
            }
            for a in range(10)
            for b in range(4)
        ]
        trainer = make_trainer(tiny_model, tokenizer, rows, tmp_path, max_steps=2, per_device_train_batch_size=4)
        assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]).endswith(" 0<|post_completion|>9<eos>")
        trainer.train()
        assert "self_assessment/nll" in trainer.state.log_history[0]

    def test_packing_keeps_segments(self, tiny_model, tokenizer, tmp_path):
        rows = addition_rows(60)
        trainer = make_trainer(tiny_model, tokenizer, rows, tmp_path, packing=True, max_length=64)
        batch = first_batch(trainer, 2)
        assert batch["input_ids"].size(0) == 1 or (batch["input_ids"] == tokenizer.eos_token_id).sum(1).max() > 1
        trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=(batch["labels"] != -100).sum())
        n_docs = (batch["input_ids"] == trainer.segment_tokens.marker_id).sum().item()
        # Each packed document has a score and an EOS after its marker
        assert trainer._pcl_stats[1].item() == 2 * n_docs and n_docs > 2

    @pytest.mark.slow
    def test_training_lowers_segment_nll_and_checkpoint_stops_at_marker(self, tokenizer, tmp_path):
        from pcl.tiny import build_tiny_model

        model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2)
        trainer = make_trainer(
            model, tokenizer, addition_rows(100), tmp_path,
            max_steps=80, per_device_train_batch_size=20, learning_rate=3e-3, logging_steps=10,
        )  # fmt: skip
        trainer.train()
        nll = [log["self_assessment/nll"] for log in trainer.state.log_history if "self_assessment/nll" in log]
        assert nll[-1] < 0.5 * nll[0]

        trainer.save_model(str(tmp_path / "final"))
        loaded, tok, tokens = load_pcl_model(str(tmp_path / "final"))
        inputs = tok(["3 + 4 =", "8 + 1 =", "0 + 5 ="], return_tensors="pt", padding=True)
        out = loaded.generate(**inputs, max_new_tokens=12, do_sample=False)[:, inputs["input_ids"].size(1) :]
        stopped_at_marker = 0
        for row in out.tolist():
            if tokens.marker_id in row:
                stopped_at_marker += 1
                after = row[row.index(tokens.marker_id) + 1 :]
                assert all(t == tok.pad_token_id for t in after)  # nothing generated past the marker
        assert stopped_at_marker == 3


class TestGuardRails:
    @pytest.mark.parametrize(
        "row, match",
        [
            ({"prompt": "1 =", "completion": " 1<|post_completion|>", "reward": 1.0}, "already contains the marker"),
            ({"prompt": "1 =", "completion": " 1", "reward": math.nan}, "NaN reward"),
            ({"prompt": "1 =", "completion": " 1", "reward": 2.0}, "outside the declared"),
            ({"prompt": "1 =", "completion": " 1", "reward": math.inf}, "infinite"),
            ({"prompt": "1 =", "completion": "", "reward": 1.0}, "empty completion"),
        ],
    )
    def test_bad_rows(self, tiny_model, tokenizer, tmp_path, row, match):
        with pytest.raises(ValueError, match=match):
            make_trainer(tiny_model, tokenizer, [row], tmp_path)

    def test_missing_columns(self, tiny_model, tokenizer, tmp_path):
        with pytest.raises(ValueError, match="needs prompt/completion rows"):
            make_trainer(tiny_model, tokenizer, [{"text": "1 + 1 = 2"}], tmp_path)

    def test_clip_option(self, tiny_model, tokenizer, tmp_path):
        rows = [{"prompt": "1 =", "completion": " 1", "reward": 2.0}]
        trainer = make_trainer(tiny_model, tokenizer, rows, tmp_path, self_assessment_out_of_range="clip")
        assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]).endswith("<|post_completion|>9<eos>")


def test_reusing_a_model_does_not_stack_hooks(tiny_model, tokenizer, tmp_path):
    """A model passed to a second trainer is weighted once: same loss as a fresh copy of it."""
    rows = addition_rows(16)
    fresh = copy.deepcopy(tiny_model)
    make_trainer(tiny_model, tokenizer, rows, tmp_path, self_assessment_weight=0.3)
    reused = make_trainer(tiny_model, tokenizer, rows, tmp_path, self_assessment_weight=0.3)
    new = make_trainer(fresh, tokenizer, rows, tmp_path, self_assessment_weight=0.3)
    batch = first_batch(new)
    torch.testing.assert_close(loss_and_grads(reused, batch)[0], loss_and_grads(new, batch)[0])
