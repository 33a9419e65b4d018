# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The segment loss's arithmetic on a hand-built batch; then through PCLGRPOTrainer on real rollouts: weight 0 gives
GRPO's loss and gradients, the added term is the hand-written segment NLL, the backbone-gradient scale and the stop
term, the level logits read from a real forward are the model's own, and the logged term."""

import pytest
import torch
from conftest import grads, make_trainer, no_marker_model_dir, rollout
from trl import GRPOTrainer

from pcl import PCLGRPOConfig
from pcl.grpo_layout import append_segments
from pcl.segment import SegmentFormat, SegmentTokens
from pcl.segment_loss import SegmentLoss, check_score_trains, metric_sums


# Two EOS ids, so that a replaced stop must find its own EOS's column among the stop ids
TOKENS = SegmentTokens(marker_id=9, prefix_ids=(), level_ids=tuple(range(20, 30)), eos_id=1, eos_ids=(1, 2))


def batch():
    """Rows ending at the marker, at the second EOS id, and truncated, laid out as the trainer lays them."""
    ids = [[3, 4, 9], [3, 2], [3, 4, 4, 4]]
    output = {
        "prompt_ids": torch.ones(3, 2, dtype=torch.long),
        "completion_ids": torch.tensor([[3, 4, 9, 0], [3, 2, 0, 0], [3, 4, 4, 4]]),
        "completion_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]),
    }
    assert append_segments(output, ids, [1.0, 0.0, 0.5], SegmentFormat(), TOKENS, 0) == 2
    return output


def args(**kwargs):
    return PCLGRPOConfig(output_dir="x", bf16=False, **kwargs)


def assert_loss_and_gradients_equal_grpo(trainer, plain: dict, pcl: dict) -> None:
    """PCL's loss on the segmented batch equals GRPO's on the plain one, and so does every parameter's gradient."""
    with torch.no_grad():  # move the policy away from the one that sampled, so ratios and clipping are exercised
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model = trainer.model
    loss_plain, g_plain = grads(trainer, lambda: GRPOTrainer._compute_loss(trainer, model, plain))
    loss_pcl, g_pcl = grads(trainer, lambda: trainer._compute_loss(model, pcl))
    torch.testing.assert_close(loss_pcl, loss_plain, rtol=1e-5, atol=1e-7)
    for name, g in g_plain.items():
        torch.testing.assert_close(g_pcl[name], g, rtol=1e-4, atol=1e-7)


def test_teacher_forced_reads_policy_log_probs_and_nll():
    inputs = batch()
    loss = SegmentLoss(None, TOKENS, temperature=1.0)
    logps = torch.randn(3, 5, requires_grad=True)
    stop = torch.randn(2, 3)  # the stop ids' logits (marker, EOS ids) at rows 0 and 1's stops
    with loss.armed(inputs, args(self_assessment_backbone_grad=0.5)):
        rows, positions, ids, grad = loss.reads["stop"]
        assert rows.tolist() == [0, 1] and positions.tolist() == [2 + 2, 2 + 1] and ids.tolist() == [9, 1, 2] and grad
        rows, positions, ids, grad = loss.reads["level"]
        assert rows.tolist() == [0, 1] and positions.tolist() == [2 + 3, 2 + 2] and not grad
        # The hidden states predicting the segment after each stop (one position before each token)
        seg_rows, seg_positions, factor = loss.segment_rows
        assert seg_rows.tolist() == [0, 0, 1, 1] and seg_positions.tolist() == [4, 5, 3, 4] and factor == 0.5
        loss.read_logits = {"stop": stop}  # what the backbone hook reads during the forward
        policy = loss.policy_logps(logps)
    expected = logps.detach().clone()
    expected[0, 3:5] = expected[1, 2:4] = 0.0  # the segment after the stop: not the policy's
    expected[1, 1] += stop[1, 2] - stop[1, 0]  # log p(EOS) where EOS id 2 was sampled and replaced by the marker
    torch.testing.assert_close(policy.detach(), expected)
    assert loss.reads == {} and loss.segment_rows is None and loss.policy_logps(logps) is logps  # disarmed

    nll_sum, n_items, level_logp = loss.nll(inputs, args())
    segment = logps[0, 3:5].sum() + logps[1, 2:4].sum()
    stop_share = (stop[:, 0] - stop.logsumexp(-1)).sum()  # log p(MARKER) / (p(MARKER) + p(EOS ids)) at each stop
    torch.testing.assert_close(nll_sum, -(segment + stop_share))
    assert n_items == 6 and level_logp is None
    nll_sum.backward()
    assert logps.grad[:, :1].eq(0).all() and logps.grad[2].eq(0).all()  # answers and unsegmented rows: no NLL


def test_a_failing_forward_disarms():
    loss = SegmentLoss(None, TOKENS, temperature=1.0)
    with pytest.raises(RuntimeError), loss.armed(batch(), args()):
        raise RuntimeError("forward failed")
    logps = torch.randn(3, 5)
    assert loss.reads == {} and loss.segment_rows is None and loss.policy_logps(logps) is logps


def test_a_failing_forward_leaves_nothing_to_the_next():
    """A forward that raises after the backbone hook read its rows (e.g. out of memory in the LM head, which
    `auto_find_batch_size` catches and retries) must not hand its stop logits or log-probs to the next micro-batch."""
    loss = SegmentLoss(None, TOKENS, temperature=1.0)
    with pytest.raises(RuntimeError), loss.armed(batch(), args()):
        loss.read_logits = {"stop": torch.randn(2, 3), "level": torch.randn(2, 10)}  # read by the hook
        loss.policy_logps(torch.randn(3, 5, requires_grad=True))
        raise RuntimeError("out of memory")
    # The next batch was truncated everywhere: no stop, no segment, so no NLL
    truncated = {
        "prompt_ids": torch.ones(2, 2, dtype=torch.long),
        "completion_ids": torch.tensor([[3, 4, 4], [3, 3, 3]]),
        "completion_mask": torch.ones(2, 3, dtype=torch.long),
    }
    assert append_segments(truncated, [[3, 4, 4], [3, 3, 3]], [1.0, 0.0], SegmentFormat(), TOKENS, 0) == 0
    logps = torch.randn(2, 3)
    with loss.armed(truncated, args()):
        assert "stop" not in loss.reads and loss.logps is None
        loss.read_logits["level"] = torch.zeros(0, 10)  # what the hook reads for no scored row
        torch.testing.assert_close(loss.policy_logps(logps), logps)
    nll_sum, n_items, _ = loss.nll(truncated, args())
    assert nll_sum.item() == 0.0 and n_items == 0


def test_both_mode_nll_is_the_levels_cross_entropy():
    inputs = {
        "prompt_ids": torch.ones(3, 2, dtype=torch.long),
        "self_assessment_score_index": torch.tensor([4, -1, 2]),
        "self_assessment_target": torch.tensor([7, -1, 2]),
    }
    loss = SegmentLoss(None, TOKENS, temperature=1.0)
    with loss.armed(inputs, args(self_assessment_mode="both")):
        assert loss.reads["level"][3] and "stop" not in loss.reads  # the level read trains in "both"
    loss.read_logits = {"level": torch.randn(2, 10)}
    level_logits = loss.read_logits["level"]
    nll_sum, n_items, level_logp = loss.nll(inputs, args(self_assessment_mode="both"))
    expected = -(level_logits.log_softmax(-1)[0, 7] + level_logits.log_softmax(-1)[1, 2])
    torch.testing.assert_close(nll_sum, expected)
    assert n_items == 2 and loss.read_logits == {}
    loss.read_logits = {"level": level_logits}
    assert loss.nll(inputs, args(self_assessment_mode="generated"))[:2] == (None, None)  # no NLL when generated


def test_metric_sums():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    target = torch.tensor([0, -1, 2, 1])  # row 1 has no score: the level rows are rows 0, 2 and 3
    stats = metric_sums(torch.tensor(4.0), torch.tensor(2), probs.log(), target, torch.device("cpu"))
    brier = (0.25 - 0.0) ** 2 + (0.1 * 0 + 0.2 * 0.5 + 0.7 * 1 - 1.0) ** 2 + (0.3 * 0.5 + 0.1 * 1 - 0.5) ** 2
    # Rows 0 and 2 have their target as argmax (row 0 by the first of a tie), row 3 does not
    assert [s.item() for s in stats] == pytest.approx([4.0, 2.0, brier, 2.0, 3.0])
    assert [s.item() for s in metric_sums(None, None, None, target, torch.device("cpu"))] == [0.0] * 5


def test_check_score_trains(tiny_model):
    level_ids = SegmentTokens(99, (), tuple(range(20, 30)), 1, (1,))
    check_score_trains(tiny_model, level_ids, args())
    tiny_model.get_output_embeddings().weight.requires_grad_(False)
    with pytest.raises(ValueError, match="self-score would not train.*self_assessment_backbone_grad=1.0"):
        check_score_trains(tiny_model, level_ids, args())
    # Only a teacher-forced segment at a positive weight and no body gradient relies on the LM head's rows alone
    for kwargs in ({"self_assessment_backbone_grad": 1.0}, {"self_assessment_weight": 0.0}):
        check_score_trains(tiny_model, level_ids, args(**kwargs))
    check_score_trains(tiny_model, level_ids, args(self_assessment_mode="generated"))


# Through PCLGRPOTrainer: the loss on real rollouts against plain GRPO's and a hand-written segment NLL
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
    assert_loss_and_gradients_equal_grpo(trainer, plain, pcl)


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
    assert_loss_and_gradients_equal_grpo(trainer, plain, pcl)


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
