# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import copy
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import cpu_args, grpo_args, grpo_trainer
from datasets import Dataset
from transformers import ProcessorMixin
from trl import GRPOTrainer

from pcl import PCLGRPOConfig, PCLGRPOTrainer


PROMPTS = [{"prompt": f"{a} + {b} =", "answer": str(a + b)} for a in range(10) for b in range(10)]


def parity_reward(completions, **kwargs):
    # Mixed rewards on an untrained model, so advantages are non-zero
    return [float(len(c) % 2) for c in completions]


def make_trainer(model_dir, tokenizer, tmp_path, reward=parity_reward, **config):
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
    trainer.model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


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


class TestSegmentLayout:
    def test_marker_is_a_stop_only_when_teacher_forced(self, model_dir, tokenizer, tmp_path):
        trainer = make_trainer(model_dir, tokenizer, tmp_path)
        marker = trainer.segment_tokens.marker_id
        assert marker in trainer.eos_token_ids and marker in trainer.generation_config.eos_token_id
        assert marker in trainer.model.generation_config.eos_token_id  # saved with every checkpoint
        generated = make_trainer(model_dir, tokenizer, tmp_path, self_assessment_mode="generated")
        assert marker not in generated.eos_token_ids and marker not in generated.generation_config.eos_token_id

    def test_vllm_stop_token_ids(self, model_dir, tokenizer, tmp_path):
        trainer = make_trainer(model_dir, tokenizer, tmp_path)
        trainer.use_vllm = True
        trainer.vllm_generation = SimpleNamespace(generation_kwargs={"stop_token_ids": [5]})
        trainer._configure_stop_ids()
        assert trainer.vllm_generation.generation_kwargs["stop_token_ids"] == [5, trainer.segment_tokens.marker_id]

    def test_segments_carry_true_reward_and_stay_out_of_policy_loss(self, model_dir, tokenizer, tmp_path):
        seen = {}

        def reward(completions, **kwargs):
            # Mixed rewards, and a record of what each completion was scored
            values = [float(len(c) % 2) for c in completions]
            seen.update(zip(completions, values, strict=True))
            return values

        trainer = make_trainer(model_dir, tokenizer, tmp_path, reward=reward, self_assessment_prefix="s:")
        originals = None
        batch = next(iter(trainer.get_train_dataloader()))
        torch.manual_seed(0)
        plain = GRPOTrainer._generate_and_score_completions(trainer, batch)
        originals = [list(ids) for ids in trainer._pcl_completion_ids]
        pcl = {k: v.clone() if torch.is_tensor(v) else copy.copy(v) for k, v in plain.items()}
        trainer._append_segments(pcl)
        tokens = trainer.segment_tokens
        ends = {"marker": 0, "eos": 0}
        for i, ids in enumerate(originals):
            row = pcl["completion_ids"][i].tolist()
            assert torch.equal(pcl["completion_mask"][i, : len(ids)], plain["completion_mask"][i, : len(ids)])
            if ids[-1] not in (tokens.marker_id, *tokens.eos_ids):  # truncated: no segment, row unchanged
                assert row[: len(ids)] == ids
                assert pcl["self_assessment_target"][i] == -1 and not pcl["self_assessment_mask"][i].any()
                continue
            # The level comes from the reward function's own value for this completion, not from the trainer
            text = tokenizer.decode(ids, skip_special_tokens=True)
            level = round(seen[text] * 9)
            segment = tokens.assessment_ids(level)
            # Rows ending at EOS end at the marker instead: the score sits where the readout reads it
            assert row[: len(ids)] == ids[:-1] + [tokens.marker_id]
            span = slice(len(ids), len(ids) + len(segment))
            assert row[span] == segment
            assert pcl["tool_mask"][i, span].sum() == 0 and pcl["completion_mask"][i, span].all()
            assert pcl["tool_mask"][i, len(ids) - 1] == 1  # the stop is a policy token
            nll = pcl["self_assessment_mask"][i]
            stop_replaced = ids[-1] != tokens.marker_id
            assert nll[span].all() and nll.sum() == len(segment) + 1
            assert nll[len(ids) - 1]  # teach the stop: log p(MARKER) joins the segment NLL, whatever was sampled
            assert pcl["self_assessment_stop_index"][i] == len(ids) - 1
            assert pcl["self_assessment_stop_id"][i] == ids[-1]
            assert pcl["self_assessment_target"][i] == level
            ends["eos" if stop_replaced else "marker"] += 1
        assert ends["marker"] + ends["eos"] > 0
        assert pcl["num_items_in_batch"] == plain["num_items_in_batch"]  # the policy's token count is unchanged


LOSS_CASES = [
    (loss_type, beta, num_iterations)
    for loss_type in ("dapo", "grpo", "dr_grpo", "cispo")
    for beta in (0.0, 0.04)
    for num_iterations in (1, 2)
] + [("bnpo", 0.0, 1), ("sapo", 0.04, 2), ("luspo", 0.0, 1)]


@pytest.mark.parametrize("loss_type, beta, num_iterations", LOSS_CASES)
def test_weight_zero_gradients_equal_grpo(model_dir, tokenizer, tmp_path, loss_type, beta, num_iterations):
    """With segment weight 0, the loss and gradients are plain GRPO's on the same rollouts."""
    trainer = make_trainer(
        model_dir, tokenizer, tmp_path, loss_type=loss_type, beta=beta, num_iterations=num_iterations,
        self_assessment_weight=0.0,
    )  # fmt: skip
    plain, pcl = rollout(trainer)
    assert (
        pcl["self_assessment_mask"].any() and (pcl["self_assessment_stop_id"] == trainer.segment_tokens.eos_id).any()
    )
    with torch.no_grad():  # move the policy away from the one that sampled, so ratios and clipping are exercised
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model = trainer.model
    loss_plain, g_plain = grads(trainer, lambda: GRPOTrainer._compute_loss(trainer, model, plain))
    loss_pcl, g_pcl = grads(trainer, lambda: trainer._compute_loss(model, pcl))
    torch.testing.assert_close(loss_pcl, loss_plain, rtol=1e-5, atol=1e-7)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_pcl[name], g, rtol=1e-4, atol=1e-7)


def hand_segment_nll(model, pcl, tokens, temperature=1.0):
    """The segment NLL written out: the full-vocabulary NLL of the segment after the stop, plus at the stop the
    marker's share of the stop mass, -log p(MARKER) / sum p(stop ids), over the global segment token count."""
    ids = torch.cat([pcl["prompt_ids"], pcl["completion_ids"]], dim=1)
    attention = torch.cat([pcl["prompt_mask"], pcl["completion_mask"]], dim=1)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1] / temperature
    T = pcl["completion_ids"].size(1)
    logp = logits[:, -T:].log_softmax(-1).gather(-1, pcl["completion_ids"].unsqueeze(-1)).squeeze(-1)
    rows = (pcl["self_assessment_stop_index"] >= 0).nonzero().squeeze(1)
    stops = pcl["self_assessment_stop_index"][rows]
    after_stop = pcl["self_assessment_mask"].clone()
    after_stop[rows, stops] = False
    stop_logits = logits[:, -T:][rows, stops][:, [tokens.marker_id, *tokens.eos_ids]]
    nll = -(logp * after_stop).sum() - (stop_logits[:, 0] - stop_logits.logsumexp(-1)).sum()
    return nll / pcl["self_assessment_num_items"]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_added_term_is_weighted_segment_nll(model_dir, tokenizer, tmp_path, temperature):
    """loss(w) = loss(0) + w * NLL(segment at the fused head's temperature) / the global segment token count, and with
    `self_assessment_backbone_grad=1` the gradients differ by w * the NLL's gradients."""
    weight = 0.7
    trainer = make_trainer(
        model_dir, tokenizer, tmp_path, self_assessment_weight=weight, temperature=temperature,
        self_assessment_backbone_grad=1.0,
    )  # fmt: skip
    _, pcl = rollout(trainer)
    model = trainer.model
    loss_w, g_w = grads(trainer, lambda: trainer._compute_loss(model, pcl))
    trainer.args.self_assessment_weight = 0.0
    loss_0, g_0 = grads(trainer, lambda: trainer._compute_loss(model, pcl))
    nll, g_nll = grads(trainer, lambda: hand_segment_nll(model, pcl, trainer.segment_tokens, temperature))
    torch.testing.assert_close(loss_w - loss_0, weight * nll, rtol=1e-5, atol=1e-6)
    for name, g in g_nll.items():
        torch.testing.assert_close(g_w[name] - g_0[name], weight * g, rtol=1e-3, atol=1e-6)
    assert trainer.model.config.post_completion["readout_temperature"] == temperature


def segment_gradients(trainer, pcl):
    """Gradients of PCL's loss at the configured weight, at weight 0, and of the hand-computed segment NLL."""
    model = trainer.model
    _, g_w = grads(trainer, lambda: trainer._compute_loss(model, pcl))
    trainer.args.self_assessment_weight = 0.0
    _, g_0 = grads(trainer, lambda: trainer._compute_loss(model, pcl))
    _, g_nll = grads(trainer, lambda: hand_segment_nll(model, pcl, trainer.segment_tokens))
    return g_w, g_0, g_nll


def test_drop_in_segment_leaves_the_body_to_the_policy(tmp_path):
    """Drop-in use (a model that ends at EOS; the trainer adds the marker): by default the segment term trains the
    LM head only. Every parameter below it gets exactly the policy loss's gradient (weight 0's), while the segment's
    own gradient there would be large: without this, GRPO's held-out accuracy fell on the tiny addition task of
    benchmarks/drop_in_control.py. The stop term, the marker's share of the stop mass, gives the body no gradient
    while the marker's rows are the copy of EOS's that the resize made."""
    path, base_tok = no_marker_model_dir(tmp_path)
    trainer = make_trainer(path, base_tok, tmp_path)
    _, pcl = rollout(trainer)
    stop_id = pcl["self_assessment_stop_id"]
    assert (stop_id == trainer.segment_tokens.eos_id).any() and pcl["self_assessment_score_index"].ge(0).any()
    g_1, g_0, g_nll = segment_gradients(trainer, pcl)
    body = [n for n in g_0 if not n.startswith("lm_head")]
    assert body and "lm_head.weight" in g_1
    for name in body:
        torch.testing.assert_close(g_1[name], g_0[name], rtol=1e-5, atol=1e-8)
        # the gradient the segment would have sent into the body (for the score and the segment's EOS)
    assert max(g_nll[n].abs().max() for n in body) > 1e-3
    head = g_1["lm_head.weight"] - g_0["lm_head.weight"]
    torch.testing.assert_close(head, g_nll["lm_head.weight"], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize(
    "scale, checkpointing, config",
    [
        (0.5, None, {}),
        (0.0, {"use_reentrant": True}, {}),
        (0.5, {"use_reentrant": False}, {"num_iterations": 2, "beta": 0.04}),
    ],
)
def test_backbone_grad_scales_the_segment_gradient_into_the_body(tmp_path, scale, checkpointing, config):
    """`self_assessment_backbone_grad=s`: every parameter below the LM head gets the policy loss's gradient plus s times
    the segment's (the hook scales the positions after the stop and nothing else), also under gradient checkpointing
    (whose backward recomputes the layers but not the backbone's output hook) and with old log-probs (num_iterations
    > 1); the LM head gets the segment's full gradient. The model is a drop-in one (marker row = EOS row), where the
    stop term sends the body no gradient, so the segment's body gradient is the hand NLL's. The hand NLL's forward
    comes after the trainer's: a hook left registered would scale it too."""
    path, base_tok = no_marker_model_dir(tmp_path)
    weight = 0.7
    trainer = make_trainer(
        path, base_tok, tmp_path, self_assessment_weight=weight, self_assessment_backbone_grad=scale, **config
    )
    if checkpointing is not None:
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    _, pcl = rollout(trainer)
    assert (pcl["self_assessment_stop_id"] == trainer.segment_tokens.eos_id).any()
    assert pcl["self_assessment_mask"].any() and (config.get("num_iterations", 1) == 1) == (
        "old_per_token_logps" not in pcl
    )
    g_w, g_0, g_nll = segment_gradients(trainer, pcl)
    body = [n for n in g_0 if not n.startswith("lm_head")]
    assert body and max(g_nll[n].abs().max() for n in body) > 1e-3
    for name in body:
        torch.testing.assert_close(g_w[name] - g_0[name], scale * weight * g_nll[name], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(
        g_w["lm_head.weight"] - g_0["lm_head.weight"], weight * g_nll["lm_head.weight"], rtol=1e-3, atol=1e-6
    )


class TestGeneratedMode:
    def test_consistency_reward_is_brier_and_hides_segment(self, model_dir, tokenizer, tmp_path):
        seen = []

        def exact(completions, answer, **kwargs):
            seen.extend(completions)
            return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]

        trainer = make_trainer(model_dir, tokenizer, tmp_path, reward=exact, self_assessment_mode="generated")
        tokens = trainer.segment_tokens

        def completion(answer, level):
            ids = tokenizer.encode(answer, add_special_tokens=False) + [tokens.marker_id]
            return ids + ([] if level is None else tokens.assessment_ids(level))

        cases = [  # (written answer, gold, written level) -> expected consistency
            (" 7", "7", 9, 1.0),  # right, claims right
            (" 8", "7", 0, 1.0),  # wrong, honestly flags itself wrong: the maximum, not 0/0
            (" 8", "7", 9, 0.0),  # wrong, over-claims
            (" 7", "7", 3, 1 - (1 - 3 / 9) ** 2),
        ]
        ids = [completion(a, lvl) for a, _, lvl, _ in cases] + [completion(" 7", None)]
        inputs = [{"prompt": "3 + 4 =", "answer": gold} for _, gold, _, _ in cases] + [{"answer": "7"}]
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        trainer._calculate_rewards(inputs, ["3 + 4 ="] * len(ids), texts, ids)
        assert seen == [" 7", " 8", " 8", " 7", " 7"]  # the task reward never sees the written score
        expected = [c for *_, c in cases] + [0.0]  # no assessment written: consistency 0
        torch.testing.assert_close(trainer._pcl_consistency, torch.tensor(expected))

    @pytest.mark.parametrize("mode", ["generated", "both"])
    def test_trains(self, model_dir, tokenizer, tmp_path, mode):
        """In training, the answer keeps GRPO's task advantage and the written segment gets the consistency reward's
        advantage, normalised within each prompt's group of `num_generations` rows like TRL's."""
        marker = tokenizer.convert_tokens_to_ids("<|post_completion|>")
        trainer = make_trainer(
            model_dir, tokenizer, tmp_path, self_assessment_mode=mode, max_steps=2, logging_steps=1,
            generation_kwargs={"sequence_bias": [[[marker], 3.0]]},  # an untrained model rarely writes the marker
        )  # fmt: skip
        batches = []
        calculate, original = trainer._calculate_rewards, trainer._written_segments

        def varied_consistency(*args):
            # An untrained model writes no valid score (consistency 0 everywhere): give the rows distinct values
            rewards = calculate(*args)
            trainer._pcl_consistency = torch.tensor([((i * 7) % 5) / 4 for i in range(len(rewards))])
            return rewards

        def record(output):
            before = output["advantages"].clone()
            original(output)
            batches.append((before, output, trainer._pcl_consistency.tolist(), list(trainer._pcl_completion_ids)))

        trainer._calculate_rewards, trainer._written_segments = varied_consistency, record
        trainer.train()
        segments = 0
        for before, output, consistency, answers in batches:
            for i, (ids, value) in enumerate(zip(answers, consistency, strict=True)):
                group = [v for v in consistency[i // 4 * 4 : i // 4 * 4 + 4] if not math.isnan(v)]
                mean = sum(group) / len(group)
                std = math.sqrt(sum((v - mean) ** 2 for v in group) / (len(group) - 1))
                expected = 0.0 if math.isnan(value) else (value - mean) / (std + 1e-4)
                mask = output["completion_mask"][i].bool()
                advantages = output["advantages"][i]
                torch.testing.assert_close(advantages[: len(ids)][mask[: len(ids)]], before[i].expand(len(ids))[
                    mask[: len(ids)]
                ])  # fmt: skip
                segment = advantages[len(ids) :][mask[len(ids) :]]
                segments += len(segment) > 0
                torch.testing.assert_close(segment, torch.full_like(segment, expected), rtol=1e-4, atol=1e-5)
        assert segments > 0
        logs = trainer.state.log_history[0]
        assert "self_assessment/consistency" in logs and "self_assessment/frac_with_segment" in logs


def test_out_of_range_reward_is_refused_with_a_declared_range(model_dir, tokenizer, tmp_path):
    reward = lambda completions, **kw: [3.0] * len(completions)  # noqa: E731
    trainer = make_trainer(model_dir, tokenizer, tmp_path, reward=reward, self_assessment_reward_range=[0.0, 1.0])
    with pytest.raises(ValueError, match="outside the declared `self_assessment_reward_range`"):
        trainer.train()


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


def length_reward(completions, **kwargs):
    return [len(c) - 4.0 for c in completions]  # outside [0, 1]: a running range


@pytest.mark.parametrize("cls", [GRPOTrainer, PCLGRPOTrainer])
def test_rewards_of_any_scale_train(model_dir, tokenizer, tmp_path, cls):
    """Reward models with negative scores and summed rewards outside [0, 1] train like with the stock trainer; PCL's
    running range of a callable is the span of what it returned, logged, and its targets stay in [0, 1]."""
    seen = []

    def length_reward(completions, **kwargs):
        seen.extend(len(c) - 4.0 for c in completions)
        return [len(c) - 4.0 for c in completions]

    config_cls = PCLGRPOConfig if cls is PCLGRPOTrainer else __import__("trl").GRPOConfig
    args = config_cls(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=8, num_generations=4, max_completion_length=8, max_steps=2, logging_steps=1,
        reward_weights=[1.0, 2.0, 0.5],
    ))  # fmt: skip
    trainer = cls(
        model_dir, [reward_model(tokenizer), parity_reward, length_reward], args=args,
        train_dataset=Dataset.from_list(PROMPTS), processing_class=tokenizer,
        reward_processing_classes=[tokenizer, None, None],
    )  # fmt: skip
    trainer.train()
    logs = trainer.state.log_history
    assert math.isfinite(logs[-1]["train_loss"])
    assert [log["rewards/length_reward/mean"] for log in logs[:2]] == pytest.approx(
        [sum(seen[:8]) / 8, sum(seen[8:]) / 8], abs=1e-4
    )
    if cls is PCLGRPOTrainer:
        span = [min(0.0, *seen), max(1.0, *seen)]
        assert span != [0.0, 1.0] and trainer._pcl_reward_targets.ranges[2] == span
        assert [
            logs[1]["self_assessment/range_lo/length_reward"],
            logs[1]["self_assessment/range_hi/length_reward"],
        ] == (span)
        assert all(0.0 <= t <= 1.0 for t in trainer._pcl_targets)


def test_auto_targets_computed_from_the_reward_functions(model_dir, tokenizer, tmp_path):
    """The target of each row, from the reward functions' own values: sigmoid of a reward model's score, a callable
    in [0, 1] as it is, one outside by its running range, the weighted sum normalised by the weights' bounds."""
    rm = reward_model(tokenizer)
    scores, lengths = [], []
    rm.register_forward_hook(lambda m, a, out: scores.append(out.logits[:, 0].detach().clone()))

    def length(completions, **kwargs):
        lengths.extend(len(c) - 4.0 for c in completions)
        return [len(c) - 4.0 for c in completions]

    weights = [1.0, 2.0, 0.5]
    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=8, num_generations=4, max_completion_length=8, max_steps=1,
        reward_weights=weights, log_completions=False,
    ))  # fmt: skip
    trainer = PCLGRPOTrainer(
        model_dir, [rm, parity_reward, length], args=args, train_dataset=Dataset.from_list(PROMPTS),
        processing_class=tokenizer, reward_processing_classes=[tokenizer, None, None],
    )  # fmt: skip
    trainer.model.train()
    _, pcl = rollout(trainer, end_at_eos=False)
    assert (pcl["self_assessment_target"] >= 0).any()  # the level check below runs on at least one row
    texts = tokenizer.batch_decode(trainer._pcl_completion_ids, skip_special_tokens=True)
    score = torch.cat(scores)
    assert (score < 0).any() and (score > 1).any()  # the reward model's scores leave [0, 1] on both sides
    lo, hi = min(0.0, *lengths), max(1.0, *lengths)
    for i, text in enumerate(texts):
        mapped = [torch.sigmoid(score[i]).item(), float(len(text) % 2), (lengths[i] - lo) / (hi - lo)]
        expected = sum(w * m for w, m in zip(weights, mapped, strict=True)) / sum(weights)
        assert trainer._pcl_targets[i] == pytest.approx(expected, abs=1e-6)
        if pcl["self_assessment_target"][i] >= 0:
            assert pcl["self_assessment_target"][i] == round(expected * 9)


def test_marker_in_prompts_is_refused(model_dir, tokenizer, tmp_path):
    args = PCLGRPOConfig(output_dir=str(tmp_path), **cpu_args(per_device_train_batch_size=4, num_generations=4))
    data = Dataset.from_list([{"prompt": "1 + 1 = <|post_completion|>"}])
    with pytest.raises(ValueError, match="already contains the marker"):
        PCLGRPOTrainer(model_dir, parity_reward, args=args, train_dataset=data, processing_class=tokenizer)


@pytest.mark.slow
def test_training_lowers_segment_nll(model_dir, tokenizer, tmp_path):
    trainer = make_trainer(
        model_dir, tokenizer, tmp_path, max_steps=60, learning_rate=3e-3, logging_steps=10,
        per_device_train_batch_size=16, num_generations=8,
    )  # fmt: skip
    trainer.train()
    logs = [log for log in trainer.state.log_history if "self_assessment/nll" in log]
    # By default the segment trains the LM head's rows only (the body is the policy's): slower than through the body
    assert logs[-1]["self_assessment/nll"] < 0.8 * logs[0]["self_assessment/nll"]
    assert all(0.0 <= log["self_assessment/brier"] <= 1.0 for log in logs)


def test_conversational_prompts(model_dir, tokenizer, tmp_path):
    """Chat prompts: rewards see the assistant message without the marker, segments are appended as usual."""
    seen = []

    def reward(completions, **kwargs):
        seen.extend(completions)
        return [float(len(c[0]["content"]) % 2) for c in completions]

    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=8, num_generations=4, max_completion_length=16, max_steps=2, logging_steps=1,
        log_completions=False,
    ))  # fmt: skip
    chat = [{"prompt": [{"role": "user", "content": row["prompt"]}]} for row in PROMPTS]
    trainer = PCLGRPOTrainer(
        model_dir, reward, args=args, train_dataset=Dataset.from_list(chat), processing_class=tokenizer
    )
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


@pytest.mark.parametrize("cls", [GRPOTrainer, PCLGRPOTrainer])
def test_weight_zero_accepts_what_the_parent_accepts(model_dir, tokenizer, tmp_path, cls):
    """With weight 0 PCL adds no reward checks: booleans and rewards outside a declared range train as in TRL."""
    import trl

    def flags(completions, **kwargs):
        return [len(c) % 2 == 0 for c in completions]  # bools, as TRL accepts them

    def big(completions, **kwargs):
        return [5.0 * len(c) for c in completions]

    extra = dict(self_assessment_weight=0.0, self_assessment_reward_range=[0.0, 1.0]) if cls is PCLGRPOTrainer else {}
    config_cls = PCLGRPOConfig if cls is PCLGRPOTrainer else trl.GRPOConfig
    args = config_cls(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1, logging_steps=1,
        **extra,
    ))  # fmt: skip
    trainer = cls(
        model_dir, [flags, big], args=args, train_dataset=Dataset.from_list(PROMPTS), processing_class=tokenizer
    )
    trainer.train()
    assert "rewards/flags/mean" in trainer.state.log_history[0]


def test_logs_the_segment_term_beside_the_loss(model_dir, tokenizer, tmp_path):
    """`loss` includes the segment term; `self_assessment/loss` is that term, so the policy loss stays readable."""
    trainer = make_trainer(model_dir, tokenizer, tmp_path, self_assessment_weight=0.5)
    _, pcl = rollout(trainer)
    loss = trainer._compute_loss(trainer.model, pcl)
    term = trainer._metrics["train"]["self_assessment/loss"][-1]
    trainer.args.self_assessment_weight = 0.0
    policy = trainer._compute_loss(trainer.model, pcl)
    assert term > 0 and loss.item() - policy.item() == pytest.approx(term, rel=1e-5)
    assert trainer._metrics["train"]["self_assessment/loss"][-1] == 0.0


@pytest.fixture
def gemma_dir(tokenizer, tmp_path):
    """A tiny Gemma 2 (soft-capped logits), large enough logits that the cap matters."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, final_logit_softcapping=2.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    model = Gemma2ForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(10.0)
    path = tmp_path / "gemma"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_level_logits_are_the_models_own(gemma_dir, tokenizer, tmp_path):
    """The score levels read from the backbone hook equal the model's logits (soft-capped) at the fused temperature."""
    trainer = make_trainer(gemma_dir, tokenizer, tmp_path, temperature=0.7)
    _, pcl = rollout(trainer)
    rows = (pcl["self_assessment_target"] >= 0).nonzero().squeeze(1)
    assert len(rows)
    positions = pcl["prompt_ids"].size(1) + pcl["self_assessment_score_index"][rows]
    ids = torch.cat([pcl["prompt_ids"], pcl["completion_ids"]], dim=1)
    attention = torch.cat([pcl["prompt_mask"], pcl["completion_mask"]], dim=1)
    level_ids = torch.tensor(trainer.segment_tokens.level_ids)
    trainer._pcl_loss.reads = {"level": (rows, positions, level_ids, False)}
    with torch.no_grad():
        logits = trainer.model(input_ids=ids, attention_mask=attention).logits
    trainer._pcl_loss.reads = {}
    expected = logits[rows, positions - 1][:, level_ids] / 0.7
    torch.testing.assert_close(trainer._pcl_loss.read_logits["level"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_weight_zero_gradients_equal_grpo_soft_capped(gemma_dir, tokenizer, tmp_path, beta):
    """log p(EOS) at a replaced stop is the model's own, soft-capping included: weight 0 is still plain GRPO."""
    trainer = make_trainer(gemma_dir, tokenizer, tmp_path, beta=beta, num_iterations=2, self_assessment_weight=0.0)
    plain, pcl = rollout(trainer)
    assert (pcl["self_assessment_stop_id"] == trainer.segment_tokens.eos_id).any()
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model = trainer.model
    loss_plain, g_plain = grads(trainer, lambda: GRPOTrainer._compute_loss(trainer, model, plain))
    loss_pcl, g_pcl = grads(trainer, lambda: trainer._compute_loss(model, pcl))
    torch.testing.assert_close(loss_pcl, loss_plain, rtol=1e-5, atol=1e-7)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_pcl[name], g, rtol=1e-4, atol=1e-7)


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


def test_segment_log_probs_never_reach_the_kl(model_dir, tokenizer, tmp_path, monkeypatch):
    """beta > 0: the reference log-probs are padded with 0 on the segment, so the policy must see 0 there too, however
    unlikely the segment tokens are (exp(ref - logp) would overflow to inf, and inf * 0 = NaN in the masked mean)."""
    trainer = make_trainer(model_dir, tokenizer, tmp_path, beta=0.04, self_assessment_weight=0.0)
    _, pcl = rollout(trainer)
    segment = pcl["tool_mask"] == 0
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def very_unlikely_segment(self, *args, **kwargs):
        logps, entropies, aux = original(self, *args, **kwargs)
        return logps - 500.0 * segment, entropies, aux

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", very_unlikely_segment)
    loss, g = grads(trainer, lambda: trainer._compute_loss(trainer.model, pcl))
    assert torch.isfinite(loss) and all(torch.isfinite(v).all() for v in g.values())


@pytest.mark.parametrize("mode", ["generated", "both"])
def test_evaluation_groups_by_num_generations_eval(model_dir, tokenizer, tmp_path, mode, monkeypatch):
    """Generated / both mode: evaluation normalises the consistency reward within groups of `num_generations_eval`
    rows (one prompt each), not `num_generations`, which would mix prompts."""
    import pcl.grpo_trainer as grpo_trainer

    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=8, num_generations=4, num_generations_eval=2, per_device_eval_batch_size=8,
        max_completion_length=8, self_assessment_mode=mode, log_completions=False,
    ))  # fmt: skip
    trainer = PCLGRPOTrainer(
        model_dir, parity_reward, args=args, train_dataset=Dataset.from_list(PROMPTS),
        eval_dataset=Dataset.from_list(PROMPTS[:4]), processing_class=tokenizer,
    )  # fmt: skip
    prompts, normalised = [], []
    calculate = trainer._calculate_rewards

    def known_consistency(inputs, *args):
        # Per prompt k, its two rows score 0.1 k and 0.1 k + 0.01: values known before the rollouts
        rewards = calculate(inputs, *args)
        prompts.extend(x["prompt"] for x in inputs)
        values = [0.1 * int(x["prompt"][0]) + 0.01 * (i % 2) for i, x in enumerate(inputs)]
        trainer._pcl_consistency = torch.tensor(values)
        return rewards

    def spy(values, num_generations, scale_rewards):
        normalised.append(group_advantages(values, num_generations, scale_rewards))
        return normalised[-1]

    group_advantages = grpo_trainer.group_advantages
    trainer._calculate_rewards = known_consistency
    monkeypatch.setattr(grpo_trainer, "group_advantages", spy)
    metrics = trainer.evaluate()
    assert "eval_self_assessment/consistency" in metrics
    assert len(prompts) == 8 and all(prompts[2 * k] == prompts[2 * k + 1] for k in range(4))
    assert len(set(prompts)) == 4
    # Two rows per group, 0.01 apart: minus the group mean (+-0.005), over the group's sample std 0.01 / sqrt(2)
    expected = torch.tensor([-0.005, 0.005] * 4) / (0.01 / math.sqrt(2) + 1e-4)
    torch.testing.assert_close(normalised[0], expected, rtol=1e-4, atol=1e-4)


def test_segment_of_an_eos_rollout_is_trained_where_the_readout_reads(model_dir, tokenizer, tmp_path):
    """For a rollout that ended at EOS, the trained score position sees `prompt + answer + MARKER`: the level
    distribution there is exactly what `pcl.readout.self_scores` reads for that answer."""
    from pcl.readout import level_distribution

    trainer = make_trainer(model_dir, tokenizer, tmp_path, temperature=0.8)
    trainer.model.eval()
    _, pcl = rollout(trainer)
    special = set(tokenizer.all_special_ids)
    rows = [  # rows that ended at EOS, whose answer text re-tokenises to the same ids (no sampled <unk>)
        r
        for r in (pcl["self_assessment_stop_id"] == trainer.segment_tokens.eos_id).nonzero().squeeze(1).tolist()
        if not special & set(trainer._pcl_completion_ids[r][:-1])
    ]
    assert rows
    prompts = tokenizer.batch_decode(pcl["prompt_ids"][rows], skip_special_tokens=True)
    answers = [tokenizer.decode(trainer._pcl_completion_ids[r], skip_special_tokens=True) for r in rows]
    read = level_distribution(trainer.model, tokenizer, prompts, answers)
    ids = torch.cat([pcl["prompt_ids"], pcl["completion_ids"]], dim=1)
    attention = torch.cat([pcl["prompt_mask"], pcl["completion_mask"]], dim=1).bool()
    level_ids = list(trainer.segment_tokens.level_ids)
    tokens = trainer.segment_tokens
    for k, r in enumerate(rows):
        pos = pcl["prompt_ids"].size(1) + pcl["self_assessment_score_index"][r]
        # The context the score is trained in (left padding aside) is the readout's `prompt + answer + MARKER`
        context = ids[r, :pos][attention[r, :pos]]
        readout_context = tokenizer(prompts[k] + answers[k])["input_ids"] + [tokens.marker_id, *tokens.prefix_ids]
        assert context.tolist() == readout_context
        with torch.no_grad():
            logits = trainer.model(input_ids=context[None]).logits[0, -1]
        trained = (logits[level_ids] / 0.8).softmax(-1)
        torch.testing.assert_close(torch.as_tensor(read[k], dtype=trained.dtype), trained, rtol=1e-4, atol=1e-5)


def test_running_reward_ranges_are_saved_with_checkpoints(model_dir, tokenizer, tmp_path):
    out_of_unit = [True]

    def length(completions, **kwargs):
        # Outside [0, 1] in the first run (widens the range); inside it after resuming (widens nothing)
        return [len(c) - 4.0 if out_of_unit[0] else 0.5 for c in completions]

    trainer = make_trainer(model_dir, tokenizer, tmp_path, reward=length)
    trainer.args.save_strategy, trainer.args.save_steps = "steps", 1
    trainer.train()
    ranges = trainer._pcl_reward_targets.ranges
    assert ranges != [[0.0, 1.0]]
    out_of_unit[0] = False
    resumed = make_trainer(model_dir, tokenizer, tmp_path, reward=length, max_steps=2)
    assert resumed._pcl_reward_targets.ranges == [[0.0, 1.0]]
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    assert resumed.state.global_step == 2 and resumed._pcl_reward_targets.ranges == ranges


def test_logged_segment_term_is_the_loss_difference_with_gradient_accumulation(model_dir, tokenizer, tmp_path):
    """TRL logs `loss` summed over a step's micro-batches; `self_assessment/loss` must be on the same scale."""
    logs = {}
    for weight in (0.0, 1.0):
        trainer = make_trainer(
            model_dir, tokenizer, tmp_path, gradient_accumulation_steps=2, self_assessment_weight=weight, beta=0.0,
            max_completion_length=8, logging_steps=1,
        )  # fmt: skip
        trainer.train()
        logs[weight] = trainer.state.log_history[0]
    term = logs[1.0]["self_assessment/loss"]
    assert term > 0 and logs[0.0]["self_assessment/loss"] == 0.0
    assert logs[1.0]["loss"] - logs[0.0]["loss"] == pytest.approx(term, rel=1e-3, abs=1e-4)


def test_evaluation_leaves_the_training_reward_ranges_alone(model_dir, tokenizer, tmp_path):
    def scaled(completions, **kwargs):
        return [10.0 * len(c) for c in completions]  # outside [0, 1]: would widen a running range

    args = PCLGRPOConfig(output_dir=str(tmp_path / "out"), **cpu_args(
        per_device_train_batch_size=8, per_device_eval_batch_size=8, num_generations=4, max_completion_length=8,
        log_completions=False,
    ))  # fmt: skip
    trainer = PCLGRPOTrainer(
        model_dir, scaled, args=args, train_dataset=Dataset.from_list(PROMPTS),
        eval_dataset=Dataset.from_list(PROMPTS[:8]), processing_class=tokenizer,
    )  # fmt: skip
    metrics = trainer.evaluate()
    assert metrics["eval_rewards/scaled/mean"] > 1.0  # the rewards did leave [0, 1]
    assert trainer._pcl_reward_targets.ranges == [[0.0, 1.0]]


def no_marker_model_dir(tmp_path):
    from pcl.tiny import build_char_tokenizer, build_tiny_model

    base_tok = build_char_tokenizer(marker=None)
    path = tmp_path / "no-marker"
    build_tiny_model(base_tok, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(path)
    base_tok.save_pretrained(path)
    return str(path), base_tok


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
