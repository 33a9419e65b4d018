# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Every dataset format SFTTrainer accepts, with the segment written in (pcl.sft_data), checked against stock TRL.

For each format the test pins where the segment goes (decoded rows), then checks the loss against a stock
`SFTTrainer` run on the same model: the stock trainer prepares the same rows with the segment written in by hand, and gives the unweighted per-token log-probs; the expected PCL loss weighs them 1 outside the
segment, `weight` on the segment and 0 on the EOS of a reward-less marker, with the segment found by a plain loop here.
"""

import copy
import json

import pytest
import torch
from conftest import cpu_args
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from pcl import PCLSFTConfig, PCLSFTTrainer
from pcl.segment import DEFAULT_MARKER, SegmentFormat, segment_mask
from pcl.sft_data import render_rows
from pcl.tiny import build_tiny_model


M = DEFAULT_MARKER


def pcl_trainer(model, tokenizer, rows, tmp_path, eval_rows=None, **config):
    args = PCLSFTConfig(output_dir=str(tmp_path / "pcl"), **cpu_args(**config))
    eval_dataset = None if eval_rows is None else Dataset.from_list(eval_rows)
    return PCLSFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )  # fmt: skip


def stock_trainer(model, tokenizer, dataset, tmp_path, **config):
    config = {k: v for k, v in config.items() if not k.startswith("self_assessment")}
    args = SFTConfig(output_dir=str(tmp_path / "stock"), **cpu_args(**config))
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def token_weights(ids: list[int], marker_id: int, eos_id: int, weight: float, starts=(), orphans=()) -> list[float]:
    """Weight of predicting each token: a plain loop over one row (the independent reference for the masks).

    `starts` are document starts (padding-free); with `orphans` (the level ids, no prefix), a row or document that
    starts with `EOS` or `level EOS` (a segment tail cut off by packing) gets weight 0 there, and one that starts with
    the marker (its answer is in the previous chunk) gets weight 0 up to and including the segment's EOS.
    """
    weights, in_segment, lead = [1.0] * len(ids), False, False
    for t, tok in enumerate(ids):
        if t in starts:
            in_segment = lead = False
        if lead:
            weights[t] = 0.0
            lead = tok != eos_id
            continue
        if orphans and (t == 0 or t in starts):
            if tok == marker_id:
                weights[t], lead = 0.0, True
                continue
            if tok == eos_id:
                weights[t] = 0.0
            elif tok in orphans and t + 1 < len(ids) and ids[t + 1] == eos_id:
                weights[t] = weights[t + 1] = 0.0
        if in_segment:
            weights[t] = 0.0 if (tok == eos_id and ids[t - 1] == marker_id) else weight
            in_segment = tok != eos_id
        elif tok == marker_id:
            in_segment = True
    return weights


def expected_loss(stock, batch, marker_id, eos_id, weight, orphans=()):
    """PCL's loss on `batch`, from the stock trainer's unweighted per-token log-probs."""
    with torch.no_grad():
        out = stock.model(**batch, fused_lm_head=True)
    total = 0.0
    for row, (ids, log_probs) in enumerate(zip(batch["input_ids"].tolist(), out.log_probs, strict=True)):
        starts = set()
        if "position_ids" in batch:
            starts = {t for t, p in enumerate(batch["position_ids"][row].tolist()) if p == 0}
        w = torch.tensor(token_weights(ids, marker_id, eos_id, weight, starts, orphans)[1:])
        total += -(w * log_probs).sum()
    return total / out.label_mask.sum()


def pcl_loss(trainer, batch):
    return trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=(batch["labels"][:, 1:] != -100).sum())


def collate(trainer, n=None):
    ds = trainer.train_dataset
    return trainer.data_collator([ds[i] for i in range(len(ds) if n is None else n)])


def check_against_stock(pcl, stock, weight, eos_id=None):
    """Same prepared rows as stock TRL, and PCL's loss equals the stock log-probs weighted by segment membership
    (`eos_id`: the id that closes the segments, the tokenizer's EOS by default)."""
    assert pcl.train_dataset["input_ids"] == stock.train_dataset["input_ids"]
    assert pcl.train_dataset["labels"] == stock.train_dataset["labels"]
    batch = collate(pcl)
    tokens = pcl.segment_tokens
    eos_id = tokens.eos_id if eos_id is None else eos_id
    expected = expected_loss(stock, batch, tokens.marker_id, eos_id, weight)
    torch.testing.assert_close(pcl_loss(pcl, batch).detach(), expected, rtol=1e-5, atol=1e-6)


def texts(trainer, tokenizer, key="input_ids"):
    return [tokenizer.decode(ids) for ids in trainer.train_dataset[key]]


REWARDS = [1.0, 0.0, None, 0.5]  # 0.5 -> level 4 (4.5 rounds half to even)


class TestFormats:
    def test_text(self, tiny_model, tokenizer, tmp_path):
        rows = [{"text": f"{a} + 1 = {a + 1}", "reward": r} for a, r in zip(range(4), REWARDS, strict=True)]
        rows[1]["text"] += "<eos>"  # a text that already ends with EOS gets the segment before it
        pcl = pcl_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, self_assessment_weight=0.3)
        assert texts(pcl, tokenizer) == [
            f"0 + 1 = 1{M}9<eos>",
            f"1 + 1 = 2{M}0<eos>",
            f"2 + 1 = 3{M}<eos>",
            f"3 + 1 = 4{M}4<eos>",
        ]
        by_hand = [{"text": t} for t in (f"0 + 1 = 1{M}9", f"1 + 1 = 2{M}0<eos>", f"2 + 1 = 3{M}", f"3 + 1 = 4{M}4")]
        stock = stock_trainer(copy.deepcopy(tiny_model), tokenizer, Dataset.from_list(by_hand), tmp_path)
        check_against_stock(pcl, stock, 0.3)

    def test_text_field_and_no_reward_column(self, tiny_model, tokenizer, tmp_path):
        rows = [{"body": f"{a} + 1 = {a + 1}"} for a in range(3)]
        pcl = pcl_trainer(tiny_model, tokenizer, rows, tmp_path, dataset_text_field="body")
        assert texts(pcl, tokenizer) == [f"{a} + 1 = {a + 1}{M}<eos>" for a in range(3)]

    @pytest.mark.parametrize("key", ["messages", "conversations"])
    def test_messages(self, tiny_model, tokenizer, tmp_path, key):
        def turn(role, text):
            return {"role": role, "content": text} if key == "messages" else {"from": role, "value": text}

        rows = [
            {key: [turn("user", f"{a} + 1 ="), turn("assistant", f" {a + 1}")], "reward": r}
            for a, r in zip(range(4), REWARDS, strict=True)
        ]
        # Several turns: the segment follows the final assistant answer only
        rows[0][key] = [turn("user", "hi"), turn("assistant", " hello"), *rows[0][key]]
        pcl = pcl_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, self_assessment_weight=0.5)
        assert texts(pcl, tokenizer) == [
            f"hi hello<eos>0 + 1 = 1{M}9<eos>",
            f"1 + 1 = 2{M}0<eos>",
            f"2 + 1 = 3{M}<eos>",
            f"3 + 1 = 4{M}4<eos>",
        ]
        # Stock TRL on the same conversations with the segment typed into the final answer by hand
        levels = ["9", "0", "", "4"]
        by_hand = copy.deepcopy(rows)
        for row, level in zip(by_hand, levels, strict=True):
            row[key][-1]["content" if key == "messages" else "value"] += M + level
            del row["reward"]
        stock = stock_trainer(copy.deepcopy(tiny_model), tokenizer, Dataset.from_list(by_hand), tmp_path)
        check_against_stock(pcl, stock, 0.5)

    def test_assistant_only_loss(self, tiny_model, tokenizer, tmp_path):
        rows = [
            {"messages": [{"role": "user", "content": f"{a} + 1 ="}, {"role": "assistant", "content": f" {a + 1}"}],
             "reward": r}
            for a, r in zip(range(4), REWARDS, strict=True)
        ]  # fmt: skip
        pcl = pcl_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, assistant_only_loss=True)
        labels = [[t for t in row if t != -100] for row in pcl.train_dataset["labels"]]
        # The user turn is masked; the answer, the marker and the assessment are trained
        assert [tokenizer.decode(row) for row in labels] == [
            f" 1{M}9<eos>",
            f" 2{M}0<eos>",
            f" 3{M}<eos>",
            f" 4{M}4<eos>",
        ]
        by_hand = [{"messages": [r["messages"][0], {**r["messages"][1], "content": r["messages"][1]["content"] + M + lv}]}
                   for r, lv in zip(rows, ["9", "0", "", "4"], strict=True)]  # fmt: skip
        stock = stock_trainer(
            copy.deepcopy(tiny_model), tokenizer, Dataset.from_list(by_hand), tmp_path, assistant_only_loss=True
        )
        check_against_stock(pcl, stock, 1.0)

    def test_tools_and_chat_template_kwargs(self, tiny_model, tokenizer, tmp_path):
        # A template that shows the tools and a kwarg, so both visibly reach the rendered row
        tok = copy.deepcopy(tokenizer)
        tok.chat_template = (
            "{% if tools %}[{{ tools | length }} tools]{% endif %}{% if terse %}T:{% endif %}" + tok.chat_template
        )
        tools = json.dumps([{"type": "function", "function": {"name": "add", "parameters": {}}}])
        rows = [
            {"messages": [{"role": "user", "content": "1 + 1 ="}, {"role": "assistant", "content": " 2"}],
             "tools": tools, "chat_template_kwargs": {"terse": True}, "reward": 1.0},
        ] * 2  # fmt: skip
        pcl = pcl_trainer(tiny_model, tok, rows, tmp_path)
        assert texts(pcl, tok)[0] == f"[1 tools]T:1 + 1 = 2{M}9<eos>"

    def test_final_turn_tool_call_with_reward_refused(self, tiny_model, tokenizer, tmp_path):
        call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}
        rows = [{"messages": [{"role": "user", "content": "1 + 1 ="}, call], "reward": 1.0}]
        with pytest.raises(ValueError, match="final assistant message is a tool call"):
            pcl_trainer(tiny_model, tokenizer, rows, tmp_path)

    def test_conversational_prompt_completion(self, tiny_model, tokenizer, tmp_path):
        rows = [
            {"prompt": [{"role": "user", "content": f"{a} + 1 ="}],
             "completion": [{"role": "assistant", "content": f" {a + 1}"}], "reward": r}
            for a, r in zip(range(4), REWARDS, strict=True)
        ]  # fmt: skip
        pcl = pcl_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, self_assessment_weight=0.3)
        assert texts(pcl, tokenizer) == [
            f"0 + 1 = 1{M}9<eos>",
            f"1 + 1 = 2{M}0<eos>",
            f"2 + 1 = 3{M}<eos>",
            f"3 + 1 = 4{M}4<eos>",
        ]
        by_hand = [
            {"prompt": row["prompt"], "completion": [{"role": "assistant", "content": f" {a + 1}{M}{level}"}]}
            for a, (row, level) in enumerate(zip(rows, ["9", "0", "", "4"], strict=True))
        ]
        stock = stock_trainer(copy.deepcopy(tiny_model), tokenizer, Dataset.from_list(by_hand), tmp_path)
        check_against_stock(pcl, stock, 0.3)

    def test_formatting_func(self, tiny_model, tokenizer, tmp_path):
        rows = [{"q": f"{a} + 1 =", "a": f" {a + 1}", "reward": r} for a, r in zip(range(4), REWARDS, strict=True)]
        args = PCLSFTConfig(output_dir=str(tmp_path), **cpu_args(self_assessment_weight=0.3))
        pcl = PCLSFTTrainer(
            model=copy.deepcopy(tiny_model), args=args, train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer, formatting_func=lambda ex: ex["q"] + ex["a"],
        )  # fmt: skip
        assert texts(pcl, tokenizer)[:3] == [f"0 + 1 = 1{M}9<eos>", f"1 + 1 = 2{M}0<eos>", f"2 + 1 = 3{M}<eos>"]
        levels = {1.0: "9", 0.0: "0", None: "", 0.5: "4"}
        stock = SFTTrainer(
            model=copy.deepcopy(tiny_model), args=SFTConfig(output_dir=str(tmp_path), **cpu_args()),
            train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
            formatting_func=lambda ex: ex["q"] + ex["a"] + M + levels[ex["reward"]],
        )  # fmt: skip
        check_against_stock(pcl, stock, 0.3)


class TestPreTokenized:
    def rows(self, tokenizer, **columns):
        out = []
        for a, r in zip(range(4), REWARDS, strict=True):
            prompt = tokenizer.encode(f"{a} + 1 =", add_special_tokens=False)
            ids = prompt + tokenizer.encode(f" {a + 1}", add_special_tokens=False) + [tokenizer.eos_token_id]
            row = {"input_ids": ids, "reward": r}
            if "labels" in columns:
                row["labels"] = [-100] * len(prompt) + ids[len(prompt) :]
            if "completion_mask" in columns:
                row["completion_mask"] = [0] * len(prompt) + [1] * (len(ids) - len(prompt))
            if "assistant_masks" in columns:
                row["assistant_masks"] = [0] * len(prompt) + [1] * (len(ids) - len(prompt))
            out.append(row)
        return out

    @pytest.mark.parametrize("column", [None, "labels", "completion_mask", "assistant_masks"])
    def test_segment_before_final_eos(self, tiny_model, tokenizer, tmp_path, column):
        rows = self.rows(tokenizer, **({column: True} if column else {}))
        config = {"completion_only_loss": True} if column == "completion_mask" else {}
        pcl = pcl_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, self_assessment_weight=0.3, **config)
        assert texts(pcl, tokenizer) == [
            f"0 + 1 = 1{M}9<eos>", f"1 + 1 = 2{M}0<eos>", f"2 + 1 = 3{M}<eos>", f"3 + 1 = 4{M}4<eos>"
        ]  # fmt: skip
        trained = [tokenizer.decode([t for t in row if t != -100]) for row in pcl.train_dataset["labels"]]
        assert trained[0] == (f"0 + 1 = 1{M}9<eos>" if column is None else f" 1{M}9<eos>")
        # Stock TRL on the rows with the segment inserted by hand
        marker_id, nine, zero, four = tokenizer.convert_tokens_to_ids([M, "9", "0", "4"])
        by_hand = []
        for row, seg in zip(rows, [[marker_id, nine], [marker_id, zero], [marker_id], [marker_id, four]], strict=True):
            new = {"input_ids": row["input_ids"][:-1] + seg + row["input_ids"][-1:]}
            if column is not None:
                mask = row[column]
                new[column] = mask[:-1] + ([mask[-1]] * len(seg) if column != "labels" else seg) + mask[-1:]
            by_hand.append(new)
        stock = stock_trainer(copy.deepcopy(tiny_model), tokenizer, Dataset.from_list(by_hand), tmp_path, **config)
        check_against_stock(pcl, stock, 0.3)

    def test_without_eos_and_reward_refused(self, tiny_model, tokenizer, tmp_path):
        rows = [{"input_ids": [5, 6, 7], "reward": 1.0}]
        with pytest.raises(
            ValueError, match="pre-tokenized and has no EOS id.*Pass text, messages or prompt/completion"
        ):
            pcl_trainer(tiny_model, tokenizer, rows, tmp_path)

    def test_without_eos_and_reward_trained_as_stock(self, tiny_model, tokenizer, tmp_path):
        rows = [{"input_ids": [5, 6, 7, 8], "reward": None}, {"input_ids": [9, 10, 11], "reward": None}]
        pcl = pcl_trainer(tiny_model, tokenizer, rows, tmp_path)
        assert pcl.train_dataset["input_ids"] == [[5, 6, 7, 8], [9, 10, 11]]

    def test_without_reward_column_unchanged(self, tiny_model, tokenizer, tmp_path):
        """Pre-tokenized rows without a reward column are SFTTrainer's: same input_ids and labels (EOS included)."""
        eos = tokenizer.eos_token_id
        rows = [
            {"input_ids": [5, 6, eos, 8], "labels": [5, -100, eos, -100], "assistant_masks": [1, 1, 1, 1]},
            {"input_ids": [9, 10, eos], "labels": [-100, 10, eos], "assistant_masks": [0, 1, 1]},
        ]
        pcl = pcl_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path)
        stock = stock_trainer(copy.deepcopy(tiny_model), tokenizer, Dataset.from_list(rows), tmp_path)
        assert pcl.train_dataset["input_ids"] == stock.train_dataset["input_ids"] == [[5, 6, eos, 8], [9, 10, eos]]
        assert pcl.train_dataset["labels"] == stock.train_dataset["labels"]

    def test_marker_already_written(self, tiny_model, tokenizer, tmp_path):
        """A segment the user wrote into `input_ids` (no reward column) is kept and weighted."""
        marker_id = tokenizer.convert_tokens_to_ids(M)
        nine = tokenizer.convert_tokens_to_ids("9")
        rows = [{"input_ids": [20, 21, marker_id, nine, tokenizer.eos_token_id]}] * 2
        pcl = pcl_trainer(copy.deepcopy(tiny_model), tokenizer, rows, tmp_path, self_assessment_weight=0.3)
        assert pcl.train_dataset["input_ids"] == [row["input_ids"] for row in rows]
        stock = stock_trainer(copy.deepcopy(tiny_model), tokenizer, Dataset.from_list(rows), tmp_path)
        check_against_stock(pcl, stock, 0.3)

    def test_labels_masking_the_eos_still_train_the_segment(self, tiny_model, tokenizer, tmp_path):
        rows = self.rows(tokenizer, labels=True)
        for row in rows:
            row["labels"][-1] = -100  # the EOS is not trained
        pcl = pcl_trainer(tiny_model, tokenizer, rows, tmp_path)
        trained = [tokenizer.decode([t for t in row if t != -100]) for row in pcl.train_dataset["labels"]]
        assert trained == [f" 1{M}9", f" 2{M}0", f" 3{M}", f" 4{M}4"]

    def test_answer_eos_not_padding_or_untrained_tail(self, tiny_model, tokenizer, tmp_path):
        eos, space = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(" ")
        ids = tokenizer.encode("1 + 1 = 2", add_special_tokens=False)
        rows = [
            {"input_ids": ids + [eos] * 3, "reward": 1.0},  # padded with EOS
            {"input_ids": [eos, *ids, eos], "reward": 1.0},  # BOS == EOS
            # an untrained tail after the answer's EOS (ChatML's `<|im_end|>\n`)
            {"input_ids": ids + [eos, space], "assistant_masks": [1] * (len(ids) + 1) + [0], "reward": 1.0},
        ]
        for row in rows:
            pcl = pcl_trainer(tiny_model, tokenizer, [row], tmp_path)
            assert texts(pcl, tokenizer)[0].replace("<eos>", "E") == tokenizer.decode(row["input_ids"]).replace(
                "<eos>", "E"
            ).replace("2E", f"2{M}9E")

    @pytest.mark.parametrize(
        "ids",
        [
            "1 + 1 = 2<eos>2 + 1 = 3",  # the final turn truncated before its EOS
            "<eos>1 + 1 = 2",  # BOS == EOS, no final EOS
            "1 + 1 = 2<eos> ",  # a trained token after the EOS
        ],
    )
    def test_no_eos_after_the_answer_refused(self, tiny_model, tokenizer, tmp_path, ids):
        ids = tokenizer.encode(ids, add_special_tokens=False)
        with pytest.raises(ValueError, match="no EOS id after its last trained token"):
            pcl_trainer(tiny_model, tokenizer, [{"input_ids": ids, "reward": 1.0}], tmp_path)


class TestEvaluation:
    def test_eval_datasets_in_any_format(self, tiny_model, tokenizer, tmp_path):
        train = [{"text": f"{a} + 1 = {a + 1}", "reward": 1.0} for a in range(4)]
        evals = [{"messages": [{"role": "user", "content": "1 + 1 ="}, {"role": "assistant", "content": " 2"}],
                  "reward": 0.0}] * 2  # fmt: skip
        pcl = pcl_trainer(tiny_model, tokenizer, train, tmp_path, eval_rows=evals, per_device_eval_batch_size=2)
        assert tokenizer.decode(pcl.eval_dataset[0]["input_ids"]) == f"1 + 1 = 2{M}0<eos>"
        # The eval loss is the PCL loss of the rendered eval rows (weight 1 here), the segment's NLL that of its tokens
        batch = pcl.data_collator([pcl.eval_dataset[i] for i in range(2)])
        pcl.model.eval()
        expected = pcl_loss(pcl, batch).item()
        nll = pcl._metrics["eval"]["self_assessment/nll"][-1]
        pcl._metrics["eval"].clear()
        metrics = pcl.evaluate()
        assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
        assert metrics["eval_self_assessment/nll"] == pytest.approx(nll, rel=1e-5)
        # A dataset passed to evaluate() later is rendered too (pre-tokenized here)
        ids = tokenizer.encode("3 + 4 = 7", add_special_tokens=False) + [tokenizer.eos_token_id]
        later = Dataset.from_list([{"input_ids": ids, "reward": 1.0}] * 2)
        prepared = pcl._prepare_dataset(later, tokenizer, pcl.args, False, None, "eval")
        assert tokenizer.decode(prepared[0]["input_ids"]) == f"3 + 4 = 7{M}9<eos>"
        metrics = pcl.evaluate(later)
        assert metrics["eval_self_assessment/accuracy"] in (0.0, 1.0)  # one score token per row, same in both


def test_render_rows_for_a_plain_trainer():
    ds = Dataset.from_list([{"prompt": "1 =", "completion": " 1<eos>", "reward": 1.0}])
    out = render_rows(ds, SegmentFormat(prefix="s:"), eos_token="<eos>")
    assert out[0] == {"prompt": "1 =", "completion": f" 1{M}s:9<eos>"}


class TestIterableDatasets:
    def rows(self, reward=True):
        return [{"text": f"{a} + 1 = {a + 1}", **({"reward": float(a % 2)} if reward else {})} for a in range(4)]

    def iterable(self, rows):
        return Dataset.from_list(rows).to_iterable_dataset()

    def test_rendered_lazily(self, tiny_model, tokenizer, tmp_path):
        args = PCLSFTConfig(output_dir=str(tmp_path), **cpu_args(self_assessment_reward_range=[0.0, 1.0], max_steps=1))
        trainer = PCLSFTTrainer(tiny_model, args, train_dataset=self.iterable(self.rows()), processing_class=tokenizer)
        assert [tokenizer.decode(row["input_ids"]) for row in trainer.train_dataset][:2] == [
            f"0 + 1 = 1{M}0<eos>",
            f"1 + 1 = 2{M}9<eos>",
        ]

    def test_auto_range_needs_a_declared_range(self, tiny_model, tokenizer, tmp_path):
        args = PCLSFTConfig(output_dir=str(tmp_path), **cpu_args(max_steps=1))
        with pytest.raises(
            ValueError, match=r"IterableDataset with a reward column .* Declare `self_assessment_reward"
        ):
            PCLSFTTrainer(tiny_model, args, train_dataset=self.iterable(self.rows()), processing_class=tokenizer)
        # Without a reward column there is nothing to scan
        trainer = PCLSFTTrainer(
            tiny_model, args, train_dataset=self.iterable(self.rows(False)), processing_class=tokenizer
        )
        assert tokenizer.decode(next(iter(trainer.train_dataset))["input_ids"]) == f"0 + 1 = 1{M}<eos>"


def test_skip_prepare_dataset_with_a_reward_column_refused(tiny_model, tokenizer, tmp_path):
    ids = tokenizer.encode("1 + 1 = 2", add_special_tokens=False) + [tokenizer.eos_token_id]
    rows = [{"input_ids": ids, "labels": ids, "reward": 1.0}] * 2
    with pytest.raises(ValueError, match="where PCL-SFT writes the segment"):
        pcl_trainer(tiny_model, tokenizer, rows, tmp_path, dataset_kwargs={"skip_prepare_dataset": True})


def chatml_tokenizer(tokenizer):
    """A tokenizer whose chat template ends each turn with `<|im_end|>`, which is not an EOS id (Qwen2.5 base)."""
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>"]}, replace_extra_special_tokens=False)
    tok.chat_template = (
        "{% for message in messages %}{{ message['role'] }}:{% if message['role'] == 'assistant' %}{% generation %}"
        "{{ message['content'] }}<|im_end|>{% endgeneration %}{% else %}{{ message['content'] }}<|im_end|>{% endif %}"
        "{% endfor %}"
    )
    return tok


class TestEndOfTurnNotEos:
    """The chat template's end of turn closes the segment even when it is not an EOS id."""

    def rows(self, n=4, rewards=REWARDS):
        return [
            {"messages": [{"role": "user", "content": f"{a} + 1 ="}, {"role": "assistant", "content": f" {a + 1}"}],
             "reward": r}
            for a, r in zip(range(n), rewards, strict=True)
        ]  # fmt: skip

    def test_messages(self, tokenizer, tmp_path):
        tok = chatml_tokenizer(tokenizer)
        model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
        rows = self.rows()
        pcl = pcl_trainer(copy.deepcopy(model), tok, rows, tmp_path, self_assessment_weight=0.5)
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        assert im_end in pcl.segment_tokens.eos_ids
        assert texts(pcl, tok) == [
            f"user:{a} + 1 =<|im_end|>assistant: {a + 1}{M}{level}<|im_end|>"
            for a, level in zip(range(4), ["9", "0", "", "4"], strict=True)
        ]
        by_hand = copy.deepcopy(rows)
        for row, level in zip(by_hand, ["9", "0", "", "4"], strict=True):
            row["messages"][-1]["content"] += M + level
            del row["reward"]
        stock = stock_trainer(copy.deepcopy(model), tok, Dataset.from_list(by_hand), tmp_path)
        check_against_stock(pcl, stock, 0.5, eos_id=im_end)
        assert pcl._metrics["train"]["self_assessment/accuracy"]  # the score is found before `<|im_end|>`

    def test_wrapped_packing_weights_only_the_segments(self, tokenizer, tmp_path):
        tok = chatml_tokenizer(tokenizer)
        model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
        rows = self.rows(6, [1.0] * 6)
        config = {"packing": True, "packing_strategy": "wrapped", "max_length": 64, "shuffle_dataset": False}
        pcl = pcl_trainer(model, tok, rows, tmp_path, self_assessment_weight=0.5, **config)
        ids = torch.tensor([pcl.train_dataset[0]["input_ids"]])
        tokens = pcl.segment_tokens
        weighted = ids[segment_mask(ids, tokens.marker_id, tokens.eos_ids)]
        assert tok.decode(weighted) == "9<|im_end|>" * tok.decode(ids[0]).count(M)

    def test_pre_templated_text(self, tokenizer, tmp_path):
        """Text that already ends its answer with a closing token, then whitespace: the segment goes before it."""
        tok = chatml_tokenizer(tokenizer)
        model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
        rows = [
            {"text": "user:1 + 1 =<|im_end|>assistant: 2<|im_end|> ", "reward": 1.0},
            {"text": "1 + 1 = 2<eos> ", "reward": 0.0},
        ]
        pcl = pcl_trainer(model, tok, rows, tmp_path)
        assert texts(pcl, tok) == [
            f"user:1 + 1 =<|im_end|>assistant: 2{M}9<|im_end|> <eos>",
            f"1 + 1 = 2{M}0<eos> <eos>",
        ]


class TestEmptyAnswers:
    """Empty prompts are accepted like SFTTrainer accepts them; an empty answer is accepted in every format, and its
    assessment goes right after the prompt."""

    def test_every_format(self, tiny_model, tokenizer, tmp_path):
        eos = tokenizer.eos_token_id
        prompt = tokenizer.encode("1 + 1 =", add_special_tokens=False)
        cases = [
            ({"prompt": "", "completion": "1 + 1 = 2"}, f"1 + 1 = 2{M}9<eos>"),
            ({"prompt": "1 + 1 =", "completion": ""}, f"1 + 1 ={M}9<eos>"),
            ({"messages": [{"role": "user", "content": "1 + 1 ="}, {"role": "assistant", "content": ""}]},
             f"1 + 1 ={M}9<eos>"),
            ({"text": ""}, f"{M}9<eos>"),
            ({"input_ids": prompt + [eos], "completion_mask": [0] * len(prompt) + [1]}, f"1 + 1 ={M}9<eos>"),
        ]  # fmt: skip
        for row, expected in cases:
            pcl = pcl_trainer(tiny_model, tokenizer, [{**row, "reward": 1.0}], tmp_path, completion_only_loss=None)
            assert texts(pcl, tokenizer) == [expected]


class TestGuardRails:
    def test_marker_in_a_tool_description_refused(self, tiny_model, tokenizer, tmp_path):
        tool = {"type": "function", "function": {"name": "f", "description": f"writes {M}", "parameters": {}}}
        rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                 "tools": json.dumps([tool]), "reward": 1.0}]  # fmt: skip
        with pytest.raises(ValueError, match="already contains the marker"):
            pcl_trainer(tiny_model, tokenizer, rows, tmp_path)

    def test_conversation_ending_with_a_user_turn(self, tiny_model, tokenizer, tmp_path):
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                    {"role": "user", "content": "thanks"}]  # fmt: skip
        with pytest.raises(ValueError, match="ends with a 'user' message after the final assistant answer"):
            pcl_trainer(tiny_model, tokenizer, [{"messages": messages, "reward": 1.0}], tmp_path)
        pcl = pcl_trainer(tiny_model, tokenizer, [{"messages": messages, "reward": None}], tmp_path)
        assert texts(pcl, tokenizer) == [f"qa{M}<eos>thanks"]
