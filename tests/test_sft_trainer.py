# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import copy
import gc
import math
import types

import pytest
import torch
from accelerate import Accelerator
from conftest import addition_rows, cpu_args
from datasets import Dataset
from test_sft_data import check_against_stock, collate, expected_loss, pcl_loss, stock_trainer, token_weights
from transformers import TrainingArguments
from trl import SFTConfig, SFTTrainer

from pcl import PCLSFTConfig, PCLSFTTrainer, load_pcl_model
from pcl.marker import CONFIG_KEY
from pcl.segment import DEFAULT_MARKER, SegmentFormat
from pcl.sft_data import render_rows
from pcl.tiny import build_tiny_model


M = DEFAULT_MARKER


def make_trainer(model, tokenizer, rows, tmp_path, **config):
    args = PCLSFTConfig(output_dir=str(tmp_path), **cpu_args(**config))
    return PCLSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = pcl_loss(trainer, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def assert_same_loss_and_grads(a, b, batch):
    loss_a, grads_a = loss_and_grads(a, batch)
    loss_b, grads_b = loss_and_grads(b, batch)
    assert loss_a.item() == loss_b.item()
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_b.items():
        torch.testing.assert_close(grads_a[name], grad, rtol=0, atol=0)


class TestPCLSFTConfig:
    def test_defaults(self):
        args = PCLSFTConfig(output_dir="x", bf16=False)
        assert args.self_assessment_weight == 1.0 and args.self_assessment_levels == 10
        assert args.self_assessment_reward_range is None  # auto: read from the train rows
        assert args.segment_format == SegmentFormat()

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(self_assessment_levels=1), "at least two levels"),
            (dict(self_assessment_weight=-1.0), ">= 0"),
            (dict(self_assessment_reward_range=[0.0]), r"\[lo, hi\]"),
        ],
    )
    def test_invalid(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            PCLSFTConfig(output_dir="x", bf16=False, **kwargs)

    @pytest.mark.parametrize("weight", [0.0, 0.5])
    def test_liger_accepted_like_sft_config(self, weight):
        # SFTTrainer turns Liger's fused cross-entropy off and keeps the fused LM head PCL reads, so PCL-SFT accepts
        # what SFTConfig accepts
        args = PCLSFTConfig(output_dir="x", bf16=False, use_liger_kernel=True, self_assessment_weight=weight)
        assert args.use_liger_kernel


class TestWeights:
    def test_weight_one_equals_sft_trainer(self, tiny_model, tokenizer, tmp_path):
        """With weight 1 and every row rewarded, PCL-SFT is plain SFT on the rendered rows: loss and gradients."""
        rows = addition_rows(40)
        pcl = make_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path)
        rendered = render_rows(Dataset.from_list(rows), pcl.segment_format, eos_token=tokenizer.eos_token)
        plain = stock_trainer(copy.deepcopy(tiny_model), tokenizer, rendered, tmp_path)
        assert pcl.train_dataset["input_ids"] == plain.train_dataset["input_ids"]
        assert_same_loss_and_grads(pcl, plain, collate(pcl, 8))

    def test_weight_zero_equals_sft_trainer(self, tiny_model, tokenizer, tmp_path):
        """Weight 0 leaves the rows unchanged: the same rows, loss and gradients as SFTTrainer on the same model and
        tokenizer (marker token included), and no self-assessment metrics."""
        rows = addition_rows(16, reward=lambda a, b: None if a == 3 else float(a < 5))
        pcl = make_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, self_assessment_weight=0.0)
        plain = stock_trainer(copy.deepcopy(tiny_model), tokenizer, Dataset.from_list(rows), tmp_path)
        assert pcl.train_dataset["input_ids"] == plain.train_dataset["input_ids"]
        assert pcl.train_dataset["labels"] == plain.train_dataset["labels"]
        assert_same_loss_and_grads(pcl, plain, collate(pcl, 8))
        assert not any(k.startswith("self_assessment") for k in pcl._metrics["train"])
        # The marker is still a stop token of the saved model, and the format is recorded
        assert pcl.segment_tokens.marker_id in pcl.model.generation_config.eos_token_id
        assert getattr(pcl.model.config, CONFIG_KEY)["marker"] == M

    @pytest.mark.parametrize("weight", [0.3, 1.0])
    def test_loss_matches_hand_computation(self, tiny_model, tokenizer, tmp_path, weight):
        """Completion tokens weigh 1, assessment tokens `weight`, the EOS after a reward-less marker 0."""
        rows = addition_rows(40, reward=lambda a, b: None if (a + b) % 3 == 0 else float(a < 5))
        pcl = make_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, self_assessment_weight=weight)
        rendered = render_rows(Dataset.from_list(rows), pcl.segment_format, eos_token=tokenizer.eos_token)
        stock = stock_trainer(copy.deepcopy(tiny_model), tokenizer, rendered, tmp_path)
        texts = [tokenizer.decode(ids) for ids in pcl.train_dataset["input_ids"]]
        assert any(t.endswith(f"{M}<eos>") for t in texts) and any(t.endswith(f"{M}9<eos>") for t in texts)
        check_against_stock(pcl, stock, weight)

    def test_rendered_rows(self, tiny_model, tokenizer, tmp_path):
        rows = [
            {"prompt": "1 + 1 =", "completion": " 2", "reward": 1.0},
            {"prompt": "9 + 9 =", "completion": " 17<eos>", "reward": 0.0},
            {"prompt": "2 + 2 =", "completion": " 4", "reward": None},
        ]
        trainer = make_trainer(tiny_model, tokenizer, rows, tmp_path, self_assessment_prefix="s:")
        texts = [tokenizer.decode(ids) for ids in trainer.train_dataset["input_ids"]]
        assert texts == [f"1 + 1 = 2{M}s:9<eos>", f"9 + 9 = 17{M}s:0<eos>", f"2 + 2 = 4{M}<eos>"]


class TestRewardRange:
    def test_auto_range_from_train_rows(self, tiny_model, tokenizer, tmp_path):
        """Rewards outside [0, 1] are normalised by the train rows' extremes, and that range is saved."""
        rows = [{"prompt": f"{i} =", "completion": f" {i}", "reward": r} for i, r in enumerate([-2.0, 0.5, 3.0])]
        trainer = make_trainer(tiny_model, tokenizer, rows, tmp_path)
        texts = [tokenizer.decode(ids) for ids in trainer.train_dataset["input_ids"]]
        # (0.5 + 2) / 5 * 9 = 4.5 -> level 4 (round half to even)
        assert texts == [f"0 = 0{M}0<eos>", f"1 = 1{M}4<eos>", f"2 = 2{M}9<eos>"]
        assert getattr(trainer.model.config, CONFIG_KEY)["reward_range"] == [-2.0, 3.0]

    def test_auto_range_keeps_unit_rewards(self, tiny_model, tokenizer, tmp_path):
        rows = [{"prompt": "1 =", "completion": " 1", "reward": 0.5}]  # (0, 1) is always inside the range
        trainer = make_trainer(tiny_model, tokenizer, rows, tmp_path)
        assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]).endswith(f"{M}4<eos>")
        assert getattr(trainer.model.config, CONFIG_KEY)["reward_range"] == [0.0, 1.0]

    def test_eval_rows_outside_the_auto_range_are_clipped(self, tiny_model, tokenizer, tmp_path):
        rows = [{"prompt": "1 =", "completion": " 1", "reward": 1.0}]
        args = PCLSFTConfig(output_dir=str(tmp_path), **cpu_args())
        trainer = PCLSFTTrainer(
            tiny_model, args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
            eval_dataset=Dataset.from_list([{**rows[0], "reward": 2.0}, {**rows[0], "reward": -1.0}]),
        )  # fmt: skip
        texts = [tokenizer.decode(ids) for ids in trainer.eval_dataset["input_ids"]]
        assert texts == [f"1 = 1{M}9<eos>", f"1 = 1{M}0<eos>"]

    def test_declared_range_is_strict(self, tiny_model, tokenizer, tmp_path):
        rows = [{"prompt": "1 =", "completion": " 1", "reward": 2.0}]
        with pytest.raises(ValueError, match="outside the declared"):
            make_trainer(tiny_model, tokenizer, rows, tmp_path, self_assessment_reward_range=[0.0, 1.0])
        trainer = make_trainer(
            tiny_model, tokenizer, rows, tmp_path, self_assessment_reward_range=[0.0, 1.0],
            self_assessment_out_of_range="clip",
        )  # fmt: skip
        assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]).endswith(f"{M}9<eos>")


class TestPackingAndPaddingFree:
    def rows(self, n=12):
        # "12 + 34 = 46" + MARKER + level + EOS: 15 tokens per document
        return [
            {"prompt": f"{10 + a} + {20 + a} =", "completion": f" {30 + 2 * a}", "reward": float(a % 2)}
            for a in range(n)
        ]

    @pytest.mark.parametrize(
        "config",
        [
            # bfd truncates each 15-token document to 14, cutting it between its score and its EOS; documents
            # packed after it must not inherit its segment
            dict(packing=True, max_length=14),
            # bfd_split puts the cut-off tail `SCORE EOS` at the start of another document: weight 0, not 1
            dict(packing=True, packing_strategy="bfd_split", max_length=13),
            # wrapped packing cuts rows anywhere: with 15-token documents and rows of 29, the third row starts with
            # the tail `SCORE EOS` of a document
            dict(packing=True, packing_strategy="wrapped", max_length=29),
            dict(padding_free=True, max_length=None, per_device_train_batch_size=4),
        ],
    )
    def test_loss_matches_hand_computation(self, tiny_model, tokenizer, tmp_path, config):
        pcl = make_trainer(
            copy.deepcopy(tiny_model), tokenizer, self.rows(), tmp_path, self_assessment_weight=0.3, **config
        )
        rendered = render_rows(Dataset.from_list(self.rows()), pcl.segment_format, eos_token=tokenizer.eos_token)
        stock = stock_trainer(copy.deepcopy(tiny_model), tokenizer, rendered, tmp_path, **config)
        assert pcl.train_dataset["input_ids"] == stock.train_dataset["input_ids"]
        batch = collate(pcl)
        tokens = pcl.segment_tokens
        expected = expected_loss(stock, batch, tokens.marker_id, tokens.eos_id, 0.3, orphans=tokens.level_ids)
        torch.testing.assert_close(pcl_loss(pcl, batch).detach(), expected, rtol=1e-5, atol=1e-6)
        assert (batch["input_ids"] == tokens.marker_id).sum().item() == 12


class TestLogging:
    @pytest.mark.parametrize("accumulation", [1, 2])
    def test_segment_share_of_the_loss(self, tiny_model, tokenizer, tmp_path, accumulation):
        """`self_assessment/loss` is the segment's part of `loss`; `loss` minus it is the answer's loss."""
        rows = addition_rows(8, reward=lambda a, b: float(b % 2))
        weight = 0.4
        pcl = make_trainer(
            copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, self_assessment_weight=weight, max_steps=1,
            per_device_train_batch_size=8 // accumulation, gradient_accumulation_steps=accumulation, logging_steps=1,
        )  # fmt: skip
        rendered = render_rows(Dataset.from_list(rows), pcl.segment_format, eos_token=tokenizer.eos_token)
        stock = stock_trainer(copy.deepcopy(tiny_model), tokenizer, rendered, tmp_path)
        batch = collate(stock)  # every row: the step's loss does not depend on how rows are split into batches
        with torch.no_grad():
            out = stock.model(**batch, fused_lm_head=True)
        tokens = pcl.segment_tokens
        w = torch.tensor(
            [token_weights(r, tokens.marker_id, tokens.eos_id, weight)[1:] for r in batch["input_ids"].tolist()]
        )
        n = out.label_mask.sum()
        answer = -(out.log_probs * (w == 1)).sum() / n
        segment = -(out.log_probs * w * (w != 1)).sum() / n
        pcl.train()
        log = pcl.state.log_history[0]
        assert log["self_assessment/loss"] == pytest.approx(segment.item(), rel=1e-4)
        assert log["loss"] - log["self_assessment/loss"] == pytest.approx(answer.item(), rel=1e-4)

    def test_no_self_assessment_metrics_when_inactive(self, tiny_model, tokenizer, tmp_path):
        trainer = make_trainer(
            tiny_model, tokenizer, addition_rows(8), tmp_path, self_assessment_weight=0.0, max_steps=1, logging_steps=1
        )
        trainer.train()
        assert "loss" in trainer.state.log_history[0]
        assert not [k for log in trainer.state.log_history for k in log if "self_assessment" in k]


class TestSelfAssessmentOnlyRows:
    ROWS = [
        {"prompt": "1 + 1 =", "completion": " 2", "reward": 1.0, "self_assessment_only": False},
        {"prompt": "3 + 4 =", "completion": " 8", "reward": 0.0, "self_assessment_only": True},
    ]

    def test_answer_never_trained(self, tiny_model, tokenizer, tmp_path):
        trainer = make_trainer(tiny_model, tokenizer, self.ROWS, tmp_path)
        trained = [tokenizer.decode([t for t in row if t != -100]) for row in trainer.train_dataset["labels"]]
        assert trained == [f" 2{M}9<eos>", f"{M}0<eos>"]  # the flagged row's answer " 8" is context only

    def test_refused_without_completion_only_loss(self, tiny_model, tokenizer, tmp_path):
        with pytest.raises(ValueError, match="`completion_only_loss=False` would train"):
            make_trainer(tiny_model, tokenizer, self.ROWS, tmp_path, completion_only_loss=False)

    def test_dropped_at_weight_zero(self, tiny_model, tokenizer, tmp_path):
        trainer = make_trainer(tiny_model, tokenizer, self.ROWS, tmp_path, self_assessment_weight=0.0)
        assert [tokenizer.decode(ids) for ids in trainer.train_dataset["input_ids"]] == ["1 + 1 = 2<eos>"]


class TestLossPaths:
    """Parent loss paths that never reach the fused log-probs: refused when the segment is weighted, fine at 0."""

    @pytest.mark.parametrize(
        "config, kwargs, match",
        [
            ({}, {"compute_loss_func": lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum()},
             "`compute_loss_func` computes the loss from the model's logits"),
            ({"label_smoothing_factor": 0.1}, {}, "`label_smoothing_factor` computes the loss"),
        ],
    )  # fmt: skip
    def test_refused_when_weighted(self, tiny_model, tokenizer, tmp_path, config, kwargs, match):
        args = PCLSFTConfig(output_dir=str(tmp_path), **cpu_args(**config))
        with pytest.raises(ValueError, match=match):
            PCLSFTTrainer(
                tiny_model,
                args,
                train_dataset=Dataset.from_list(addition_rows(4)),
                processing_class=tokenizer,
                **kwargs,
            )

    def test_context_or_sequence_parallelism_refused(self, tiny_model, tokenizer, tmp_path, monkeypatch):
        trainer = make_trainer(tiny_model, tokenizer, addition_rows(4), tmp_path)
        for enabled in ("cp_enabled", "sp_enabled"):
            config = types.SimpleNamespace(cp_enabled=enabled == "cp_enabled", sp_enabled=enabled == "sp_enabled")
            monkeypatch.setattr(Accelerator, "parallelism_config", property(lambda self, c=config: c))
            with pytest.raises(ValueError, match="sequence/context parallelism shards each row"):
                trainer._check_loss_path()

    def test_dft_weights_each_tokens_dft_loss(self, tiny_model, tokenizer, tmp_path):
        """`loss_type="dft"` with a weight: the loss and gradients of sum_t w_t * (-p_t log p_t), p_t detached."""
        rows = addition_rows(12, reward=lambda a, b: None if b == 1 else float(a < 5))
        weight = 0.3
        pcl = make_trainer(
            copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, self_assessment_weight=weight, loss_type="dft"
        )
        reference = copy.deepcopy(tiny_model)
        batch = collate(pcl)
        loss, grads = loss_and_grads(pcl, batch)
        stock = stock_trainer(reference, tokenizer, Dataset.from_list(rows), tmp_path)  # adds the fused LM head
        out = stock.model(**batch, fused_lm_head=True)
        tokens = pcl.segment_tokens
        w = [token_weights(r, tokens.marker_id, tokens.eos_id, weight)[1:] for r in batch["input_ids"].tolist()]
        w = torch.tensor(w)
        assert (w == 0).any() and (w == weight).any()
        expected = (w * -out.log_probs * out.log_probs.exp().detach()).sum() / out.label_mask.sum()
        expected.backward()
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
        for name, param in reference.named_parameters():
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6)
        # The segment's share of that loss is logged
        share = (w * (w != 1) * -out.log_probs * out.log_probs.exp()).sum() / out.label_mask.sum()
        assert pcl._metrics["train"]["self_assessment/loss"][-1] == pytest.approx(share.item(), rel=1e-4)

    def test_dft_at_weight_zero_equals_sft_trainer(self, tiny_model, tokenizer, tmp_path):
        rows = addition_rows(8)
        pcl = make_trainer(
            copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, self_assessment_weight=0.0, loss_type="dft"
        )
        plain = stock_trainer(copy.deepcopy(tiny_model), tokenizer, Dataset.from_list(rows), tmp_path, loss_type="dft")
        assert_same_loss_and_grads(pcl, plain, collate(pcl))


class TestDropIn:
    """Inputs SFTTrainer accepts, or refuses with its own message, behave the same with PCLSFTTrainer."""

    @pytest.mark.parametrize("args_cls", [TrainingArguments, SFTConfig])
    def test_plain_arguments_are_converted(self, tiny_model, tokenizer, tmp_path, args_cls):
        args = args_cls(output_dir=str(tmp_path), learning_rate=1.25e-4, **cpu_args())
        trainer = PCLSFTTrainer(
            tiny_model, args, train_dataset=Dataset.from_list(addition_rows(4)), processing_class=tokenizer
        )
        assert isinstance(trainer.args, PCLSFTConfig) and trainer.args.learning_rate == 1.25e-4
        assert trainer.args.self_assessment_weight == 1.0
        assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]).endswith(f"{M}9<eos>")

    @pytest.mark.parametrize(
        "build, match",
        [
            (lambda: dict(train_dataset=None), "`train_dataset` is required"),
            (lambda: dict(train_dataset=Dataset.from_list([{"text": "1 + 1 = 2"}]).with_transform(lambda b: b)),
             r"Dataset\.with_transform\(\)"),
            (lambda: dict(train_dataset=Dataset.from_list([{"text": "1 + 1 = 2", "reward": 1.0}]),
                          config=dict(assistant_only_loss=True)), "dataset is not conversational"),
            (lambda: dict(train_dataset=Dataset.from_list([{"text": "1 + 1 = 2", "reward": 1.0}]),
                          config=dict(padding_free=True, max_length=16)), "`max_length` is not enforced"),
        ],
    )  # fmt: skip
    def test_trl_errors_come_first(self, tiny_model, tokenizer, tmp_path, build, match):
        spec = build()
        for cls, config_cls in ((SFTTrainer, SFTConfig), (PCLSFTTrainer, PCLSFTConfig)):
            args = config_cls(output_dir=str(tmp_path), **cpu_args(**spec.get("config", {})))
            with pytest.raises(ValueError, match=match):
                cls(copy.deepcopy(tiny_model), args, train_dataset=spec["train_dataset"], processing_class=tokenizer)


class TestGuardRails:
    @pytest.mark.parametrize(
        "row, match",
        [
            ({"prompt": "1 =", "completion": f" 1{M}", "reward": 1.0}, "already contains the marker"),
            ({"prompt": "1 =", "completion": " 1", "reward": math.nan}, "NaN reward"),
            ({"prompt": "1 =", "completion": " 1", "reward": math.inf}, "infinite"),
            ({"text": f"1 = 1{M}", "reward": 1.0}, "already contains the marker"),
            ({"messages": [{"role": "user", "content": "1 ="}], "reward": 1.0}, "no assistant message"),
        ],
    )
    def test_bad_rows(self, tiny_model, tokenizer, tmp_path, row, match):
        with pytest.raises(ValueError, match=match):
            make_trainer(tiny_model, tokenizer, [row], tmp_path)

    def test_unknown_format_left_to_trl(self, tiny_model, tokenizer, tmp_path):
        for cls, config_cls in ((SFTTrainer, SFTConfig), (PCLSFTTrainer, PCLSFTConfig)):
            with pytest.raises(KeyError) as error:
                cls(tiny_model, config_cls(output_dir=str(tmp_path), **cpu_args()),
                    train_dataset=Dataset.from_list([{"question": "1 + 1"}]), processing_class=tokenizer)  # fmt: skip
            assert error.value.args == ("text",)


def test_model_given_by_path_reads_its_generation_config(tokenizer, tmp_path):
    """The EOS ids of the model's generation config place the segment in pre-tokenized rows, path or object alike."""
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<eot>"]}, replace_extra_special_tokens=False)
    eot = tok.convert_tokens_to_ids("<eot>")
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    model.generation_config.eos_token_id = [tok.eos_token_id, eot]
    model.save_pretrained(tmp_path / "m")
    rows = [{"input_ids": tok.encode("1 + 1 = 2", add_special_tokens=False) + [eot], "reward": 1.0}]
    for source in (model, str(tmp_path / "m")):
        trainer = make_trainer(source, tok, rows, tmp_path)
        assert tok.decode(trainer.train_dataset[0]["input_ids"]) == f"1 + 1 = 2{M}9<eot>"


def test_reusing_a_model_does_not_stack_hooks(tiny_model, tokenizer, tmp_path):
    """A model passed to a second trainer is weighted once: same loss as a fresh copy of it."""
    rows = addition_rows(16)
    fresh = copy.deepcopy(tiny_model)
    make_trainer(tiny_model, tokenizer, rows, tmp_path, self_assessment_weight=0.3)
    reused = make_trainer(tiny_model, tokenizer, rows, tmp_path, self_assessment_weight=0.3)
    new = make_trainer(fresh, tokenizer, rows, tmp_path, self_assessment_weight=0.3)
    batch = collate(new, 8)
    torch.testing.assert_close(loss_and_grads(reused, batch)[0], loss_and_grads(new, batch)[0])


def test_hook_acts_only_inside_the_pcl_loss(tiny_model, tokenizer, tmp_path):
    """A model reused from PCL-SFT by a stock SFTTrainer, or deep-copied, trains like a fresh one; a deep copy of the
    model does not copy the trainer."""
    rows = addition_rows(8)
    fresh = copy.deepcopy(tiny_model)
    pcl = make_trainer(tiny_model, tokenizer, rows, tmp_path, self_assessment_weight=0.3)
    rendered = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": r["completion"] + M + str(round(r["reward"] * 9))} for r in rows]
    )
    stock_fresh = stock_trainer(fresh, tokenizer, rendered, tmp_path)
    batch = collate(stock_fresh)
    expected = pcl_loss(stock_fresh, batch).item()
    assert pcl_loss(stock_trainer(tiny_model, tokenizer, rendered, tmp_path), batch).item() == expected
    n_trainers = sum(isinstance(o, PCLSFTTrainer) for o in gc.get_objects())
    copied = copy.deepcopy(tiny_model)
    assert sum(isinstance(o, PCLSFTTrainer) for o in gc.get_objects()) == n_trainers
    assert pcl_loss(stock_trainer(copied, tokenizer, rendered, tmp_path), batch).item() == expected
    # ... while the PCL trainer still weights its own loss
    assert pcl_loss(pcl, batch).item() != pytest.approx(expected)


@pytest.mark.slow
def test_training_lowers_segment_nll_and_checkpoint_stops_at_marker(tokenizer, tmp_path):
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


def test_new_marker_row_copies_the_eos_that_ends_the_answers(tmp_path):
    """The marker row is added before SFTTrainer wraps the model; with `eos_token` set, it copies that token's rows
    (the stop the marker replaces), not the tokenizer's original EOS."""
    from pcl.tiny import build_char_tokenizer

    tok = build_char_tokenizer(marker=None)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2)
    args = PCLSFTConfig(output_dir=str(tmp_path / "out"), eos_token="~", **cpu_args(max_steps=1))
    trainer = PCLSFTTrainer(model, args=args, train_dataset=Dataset.from_list(addition_rows(8)), processing_class=tok)
    marker, tilde, eos = (
        trainer.segment_tokens.marker_id,
        tok.convert_tokens_to_ids("~"),
        tok.convert_tokens_to_ids("<eos>"),
    )
    for weight in (trainer.model.get_input_embeddings().weight, trainer.model.get_output_embeddings().weight):
        assert torch.equal(weight[marker], weight[tilde]) and not torch.equal(weight[marker], weight[eos])
