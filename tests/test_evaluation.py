# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
import json
from types import SimpleNamespace

import numpy as np
import pytest

from pcl import evaluation
from pcl.evaluation import parse_verbalized_confidence, run_calibration
from pcl.features import AnswerFeatures
from pcl.inference import Generation
from pcl.items import load_items, split_metrics
from pcl.tasks import TaskSpec


@pytest.mark.parametrize(
    "text, answer, q",
    [
        ("42 <confidence>0.8</confidence>", "42", 0.8),
        ("<analysis>easy</analysis> 7<confidence> .25 </confidence>", "", 0.25),
        ("42", "42", None),
        ("42 <confidence>1.5</confidence>", "42", None),  # outside [0, 1]
    ],
)
def test_parse_verbalized_confidence(text, answer, q):
    assert parse_verbalized_confidence(text) == (answer, q)


@pytest.mark.slow
def test_run_calibration_on_trained_model(tmp_path, tokenizer):
    """End to end on a really trained model (metric values are pinned by the stub-model tests below): deploy mode stops
    at the marker and writes nothing after it, and every single-pass source is reported on the full and unseen sets."""
    from datasets import Dataset

    from pcl import PCLSFTConfig, PCLSFTTrainer
    from pcl.tasks import load_task
    from pcl.tiny import build_tiny_model

    spec = TaskSpec("chain_sum", size=400, seed=1, config={"min_terms": 2, "max_terms": 2, "max_digits": 1})
    train = load_task(spec)
    rows = [{"prompt": p, "completion": " " + a} for p, a in zip(train["prompt"], train["answer"], strict=True)]
    args = PCLSFTConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none", save_strategy="no",
                        gradient_checkpointing=False, max_steps=60, learning_rate=3e-3, per_device_train_batch_size=32,
                        disable_tqdm=True)  # fmt: skip
    model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2)
    trainer = PCLSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "model"))

    evaluation = TaskSpec("chain_sum", size=60, seed=10**6, config=spec.config)
    metrics = run_calibration(str(tmp_path / "model"), evaluation, str(tmp_path / "cal"),
                              train_prompts=train["prompt"], max_new_tokens=4, n_boot=50, quiet=True)  # fmt: skip
    # 1-digit pairs are only 200 distinct problems: most evaluation items were seen in training
    assert metrics["n_seen_in_training"] > 0
    assert metrics["deploy"]["share"] == 0.0 and metrics["stop_reasons"].get("marker", 0) > 0
    for subset in ("full", "unseen"):
        assert {"pcl_expected", "pcl_written", "sequence_prob", "sequence_prob_no_stop", "min_token_prob"} <= set(
            metrics["sources"][subset]
        )
    # The in-band confidence path, run on a model that never writes <confidence>: unparsed, counted, still reported
    verbal = run_calibration(str(tmp_path / "model"), evaluation, str(tmp_path / "cal_verbal"),
                             max_new_tokens=4, n_boot=0, quiet=True, confidence_model=str(tmp_path / "model"))  # fmt: skip
    assert verbal["verbalized_model"]["parse_rate"] == 0.0 and verbal["verbalized_model"]["mean_tokens"] > 0
    assert "verbalized" in verbal["sources"]["full"]
    saved = json.loads((tmp_path / "cal" / "metrics.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"]
    assert f"{metrics['accuracy']:.3f}" in (tmp_path / "cal" / "report.md").read_text()


# ---------------------------------------------------------------- run_calibration on a stub model
# Five scored questions with known outcomes and confidences, one the reward function does not score, one duplicate.
GOLD = {"1 + 1 =": "2", "2 + 2 =": "4", "3 + 3 =": "6", "4 + 4 =": "8", "5 + 5 =": "10", "6 + 6 =": "12"}
ANSWER = {"1 + 1 =": "2", "2 + 2 =": "4", "3 + 3 =": "7", "4 + 4 =": "8", "5 + 5 =": "11", "6 + 6 =": "12"}
PCL = {"1 + 1 =": 0.9, "2 + 2 =": 0.8, "3 + 3 =": 0.3, "4 + 4 =": 0.6, "5 + 5 =": 0.2, "6 + 6 =": 0.7}
TERMS = {"1 + 1 =": 1, "2 + 2 =": 1, "3 + 3 =": 2, "4 + 4 =": 2, "5 + 5 =": 2, "6 + 6 =": 2}


def _gen(prompt, self_score=False):
    return Generation(ANSWER[prompt], 2, "marker", [1, 2], 0, PCL[prompt] if self_score else None)


# Labelled answers for the fitted baselines: a feature x per row, correct mostly when x > 0.4 (with some noise, so no
# fit is degenerate), and one prompt feature
FIT = {f"{i} ? =": i / 40 for i in range(40)}
FIT_REWARD = {p: float((x > 0.4) != (i % 7 == 0)) for i, (p, x) in enumerate(FIT.items())}


def _features(prompts, completions, hidden_states=True, logprobs=True, levels=True, **kw):
    """Stub `answer_features`: eval answers get self-score q = PCL[p], an answer token of probability .5 and a stop
    token of probability 1 - q; fit rows get x in place of q. The hidden state is (q or x, 1 for eval items, 0 for
    fit rows), so a fit that sees an evaluation item is detectable."""
    q = [PCL[p] if p in PCL else FIT[p] for p in prompts]
    from_eval = [float(p in PCL) for p in prompts]
    return AnswerFeatures(
        token_logprobs=[np.log([0.5, 1 - v]) for v in q] if logprobs else None,
        hidden=np.array([[v, e] for v, e in zip(q, from_eval, strict=True)]) if hidden_states else None,
        level_probs=np.array([[1 - v, v] for v in q]) if levels else None,
    )


@pytest.fixture
def stub_model(monkeypatch):
    """Replace model loading, generation, the features pass, written scores and the reward by functions of the
    prompt."""
    monkeypatch.setattr(evaluation, "load_pcl_model", lambda path: (None, None, None))
    monkeypatch.setattr(evaluation, "format_of", lambda model: SimpleNamespace(normalize=lambda r: r))
    monkeypatch.setattr(evaluation, "generate", lambda m, t, prompts, self_score=False, **kw: [
        _gen(p, self_score) for p in prompts])  # fmt: skip
    monkeypatch.setattr(evaluation, "answer_features", lambda m, t, prompts, answers, **kw: _features(prompts,
                                                                                                      answers, **kw))  # fmt: skip
    monkeypatch.setattr(evaluation, "written_scores", lambda m, t, prompts, answers, **kw: [None] * len(prompts))

    def reward(prompts, completions, **kw):  # "6 + 6 =" is left unscored
        return [None if p == "6 + 6 =" else float(a == GOLD[p]) for p, a in zip(prompts, completions, strict=True)]

    monkeypatch.setattr(evaluation, "make_reward_func", lambda task: reward)


def _jsonl(path, prompts):
    with open(path, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt": p, "answer": GOLD[p.replace("  ", " ")], "difficulty": {"terms": TERMS[
                p.replace("  ", " ")]}}) + "\n")  # fmt: skip
    return TaskSpec(str(path))


def test_run_calibration_exact_metrics_on_stub_model(tmp_path, stub_model):
    prompts = [*GOLD, "1  + 1 ="]  # the last one duplicates the first after whitespace normalisation
    metrics = run_calibration("stub", _jsonl(tmp_path / "eval.jsonl", prompts), str(tmp_path / "out"),
                              train_prompts=["2 + 2 ="], n_boot=50, quiet=True)  # fmt: skip
    assert metrics["duplicates_dropped"] == 1 and metrics["n"] == 6
    assert metrics["n_scored"] == 5 and metrics["n_seen_in_training"] == 1 and metrics["n_unseen"] == 5
    assert metrics["accuracy"] == pytest.approx(3 / 5) and metrics["accuracy_unseen"] == pytest.approx(2 / 4)
    full, unseen = metrics["sources"]["full"], metrics["sources"]["unseen"]
    assert {r["n"] for r in full.values()} == {5} and {r["n"] for r in unseen.values()} == {4}  # unscored left out
    # PCL: q = .9 .8 .3 .6 .2 on c = 1 1 0 1 0 -> ranks perfectly; Brier (.01 + .04 + .09 + .16 + .04) / 5;
    # ECE-10: every item alone in its bin -> (.1 + .2 + .3 + .4 + .2) / 5
    assert full["pcl_expected"]["auroc"] == 1.0
    assert full["pcl_expected"]["brier"] == pytest.approx(0.34 / 5)
    assert full["pcl_expected"]["ece_10"] == pytest.approx(1.2 / 5)
    assert unseen["pcl_expected"]["brier"] == pytest.approx(0.30 / 4)  # without the seen "2 + 2 =" (q .8, c 1)
    # without the stop token, every answer is one token of probability .5: a constant .5, AUROC .5, Brier .25,
    # ECE |3 - 2.5| / 5; AURC averages over the tie: (1 - 3/5) at every k
    seq = full["sequence_prob_no_stop"]
    assert seq["auroc"] == 0.5 and seq["brier"] == pytest.approx(0.25)
    assert seq["ece_10"] == pytest.approx(0.1) and seq["aurc"] == pytest.approx(0.4)
    # with the stop token (probability 1 - q): .5 (1 - q), and min(.5, 1 - q) which ranks correct items below wrong
    assert full["sequence_prob"]["brier"] == pytest.approx(np.mean((0.5 * (1 - np.array([.9, .8, .3, .6, .2]))
                                                                   - np.array([1, 1, 0, 1, 0])) ** 2))  # fmt: skip
    assert full["min_token_prob"]["auroc"] == 0.0
    assert full["pcl_written"]["brier"] == pytest.approx(0.25)  # unparsed written scores count as .5
    paired = metrics["paired"]["full"]
    # PCL's own written score is not a baseline; no fit rows, no self-consistency: the single-pass sources only
    assert set(paired) == {f"{s}{v}" for s in ("mean_token_prob", "sequence_prob", "min_token_prob")
                           for v in ("", "_no_stop")}  # fmt: skip
    assert paired["sequence_prob_no_stop"]["auroc"]["diff"] == pytest.approx(0.5)
    assert paired["sequence_prob_no_stop"]["brier"]["diff"] == pytest.approx(0.34 / 5 - 0.25)
    assert paired["min_token_prob"]["auroc"]["verdict"] == "win"  # AUROC 1 vs 0 on every two-class resample
    assert metrics["by_difficulty"]["terms=1"]["n"] == 2 and metrics["by_difficulty"]["terms=1"]["n_seen"] == 1
    assert metrics["by_difficulty"]["terms=2"]["accuracy"] == pytest.approx(1 / 3)
    # `seen` as a score: 1 of 3 correct items seen, 0 of 2 wrong ones -> 6 pairs, 2 won, 4 tied -> (2 + 4/2) / 6
    assert metrics["seen_auroc"] == pytest.approx(2 / 3)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| sequence prob (no stop) |" in report and "**win**" in report and "terms=2" in report
    assert "Skipped: no fit rows given" in report and "Self-consistency: off" in report
    assert metrics["fitted_baselines"] == {"skipped": "no fit rows given (`fit_rows=` / `pcl calibrate --fit_rows`)"}


def test_run_calibration_invariant_under_item_order(tmp_path, stub_model):
    runs = []
    for name, prompts in (("a", list(GOLD)), ("b", list(reversed(GOLD)))):
        runs.append(run_calibration("stub", _jsonl(tmp_path / f"{name}.jsonl", prompts), str(tmp_path / name),
                                    train_prompts=["2 + 2 ="], n_boot=20, quiet=True))  # fmt: skip
    for subset in ("full", "unseen"):
        for source, a in runs[0]["sources"][subset].items():
            b = runs[1]["sources"][subset][source]
            for key in ("ece_10", "ece_15", "ece_10_quantile", "brier", "auroc", "aurc"):
                assert a[key] == pytest.approx(b[key]), (subset, source, key)


def test_items_jsonl_round_trip(tmp_path, stub_model):
    shifted = _jsonl(tmp_path / "shifted.jsonl", ["5 + 5 =", "6 + 6 =", "3 + 3 ="])
    metrics = run_calibration("stub", _jsonl(tmp_path / "eval.jsonl", list(GOLD)), str(tmp_path / "out"),
                              train_prompts=["2 + 2 ="], shifted_task=shifted, train_tasks=[TaskSpec("chain_sum")],
                              n_boot=30, quiet=True)  # fmt: skip
    rows = load_items(tmp_path / "out" / "items.jsonl")
    assert len(rows) == 6 + 3 and {r["split"] for r in rows} == {"heldout", "shifted"}
    row = next(r for r in rows if r["prompt"] == "3 + 3 =" and r["split"] == "heldout")
    assert row == {"split": "heldout", "prompt": "3 + 3 =", "answer": "7", "gold": "6", "correct": 0.0, "seen": False,
                   "difficulty": {"terms": 2}, "stop": "marker",
                   "confidence": {"pcl_expected": pytest.approx(0.3), "pcl_written": 0.5,
                                  "mean_token_prob": pytest.approx(0.35**0.5), "mean_token_prob_no_stop": 0.5,
                                  "sequence_prob": pytest.approx(0.35), "sequence_prob_no_stop": 0.5,
                                  "min_token_prob": 0.5, "min_token_prob_no_stop": 0.5}}  # fmt: skip
    assert next(r for r in rows if r["prompt"] == "6 + 6 =")["correct"] is None
    # every metric recomputes from the file alone
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    again = split_metrics(load_items(tmp_path / "out" / "items.jsonl", split="heldout"), n_boot=30)
    for key in ("sources", "paired", "by_difficulty", "accuracy", "n_unseen"):
        assert again[key] == saved[key] == json.loads(json.dumps(metrics[key]))
    shifted_again = split_metrics(load_items(tmp_path / "out" / "items.jsonl", split="shifted"), n_boot=30)
    assert shifted_again["sources"] == saved["shifted"]["sources"]
    assert "chain_sum" in saved["shifted"]["shift"] and saved["shifted"]["n"] == 3


def _fit_rows(path):
    with open(path, "w") as f:
        for i, (p, x) in enumerate(FIT.items()):
            f.write(json.dumps({"prompt": p, "completion": f" {i}", "reward": FIT_REWARD[p],
                                "difficulty": {"terms": 1 + (x > 0.5)}}) + "\n")  # fmt: skip
    return str(path)


def test_fitted_baselines_fit_on_fit_rows_only(tmp_path, stub_model, monkeypatch):
    """Every fitted baseline sees fit rows only (never an evaluation item), and its predictions become confidence
    columns of items.jsonl with paired verdicts in the report."""
    from pcl import baselines, fitted_baselines
    from pcl.fitted_baselines import FITTED_SOURCES, fit_baselines

    seen_by_fit = []
    for cls in (baselines.TemperatureScaling, baselines.PlattScaling, baselines.IsotonicCalibration,
                baselines.HiddenStateProbe, baselines.DifficultyBaseline):  # fmt: skip

        def fit(self, x, y, _fit=cls.fit):
            seen_by_fit.append(x)
            return _fit(self, x, y)

        monkeypatch.setattr(cls, "fit", fit)
    path = _fit_rows(tmp_path / "self_labelled.jsonl")
    shifted = _jsonl(tmp_path / "shifted.jsonl", ["5 + 5 =", "6 + 6 =", "3 + 3 ="])
    metrics = run_calibration("stub", _jsonl(tmp_path / "eval.jsonl", list(GOLD)), str(tmp_path / "out"),
                              train_prompts=["2 + 2 ="], shifted_task=shifted, fit_rows=path, n_boot=20,
                              quiet=True)  # fmt: skip
    summary = metrics["fitted_baselines"]
    assert metrics["n_seen_in_training"] == 1  # "2 + 2 =" only: no fit row asks an evaluation question
    assert (
        summary["n_rows"] == 40 and summary["n_fit"] + summary["n_validation"] == 40 and summary["n_validation"] >= 2
    )
    assert summary["paths"] == [path] and set(summary["validation_brier"]) == set(FITTED_SOURCES)
    # 12 scalings + probe + difficulty, each fit once per C tried on the fit part and once on all rows
    assert len(seen_by_fit) == 12 * 2 + 2 * (len(fitted_baselines.C_GRID) + 1)
    for x in seen_by_fit:
        assert len(x) in (summary["n_fit"], 40)
        if isinstance(x, AnswerFeatures):
            assert (x.hidden[:, 1] == 0).all()  # column 1 is 1 for evaluation items
        else:
            assert all(set(d) == {"terms"} for d in x)
    # The columns are the baselines refit on all fit rows, predicting the evaluation items
    rows = load_items(tmp_path / "out" / "items.jsonl")
    eval_prompts = [r["prompt"] for r in rows]
    refit = fit_baselines(evaluation.answer_features(None, None, list(FIT), [""] * 40),
                          np.array(list(FIT_REWARD.values())), [{"terms": 1 + (x > 0.5)} for x in FIT.values()])  # fmt: skip
    expected = refit.predict(_features(eval_prompts, eval_prompts), [r["difficulty"] for r in rows])
    for name in FITTED_SOURCES:
        np.testing.assert_allclose([r["confidence"][name] for r in rows], expected[name])
    assert np.ptp(expected["hidden_probe"]) > 0.1  # the probe reads x: it is not a constant
    for split in (metrics, metrics["shifted"]):
        assert set(FITTED_SOURCES) <= set(split["paired"]["full"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Fitted baselines" in report and "never on evaluation items" in report
    for name in ("| Platt-scaled min token prob (no stop) |", "| hidden-state probe |", "| difficulty only |"):
        assert report.count(name) >= 3  # validation table, source tables, verdict tables
    assert summary["best_on_validation"] in FITTED_SOURCES


def test_fit_rows_that_are_not_0_1_are_refused_before_generating(tmp_path, stub_model, monkeypatch):
    monkeypatch.setattr(evaluation, "generate", lambda *a, **kw: pytest.fail("generated before checking fit rows"))
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": " 1", "reward": 0.5}) + "\n" for p in FIT))
    with pytest.raises(ValueError, match="not 0/1 correctness"):
        run_calibration("stub", _jsonl(tmp_path / "eval.jsonl", list(GOLD)), str(tmp_path / "out"),
                        fit_rows=str(path), quiet=True)  # fmt: skip


def test_too_few_labelled_answers_skip_the_fitted_baselines(tmp_path, stub_model):
    """A model too weak to answer two questions right still gets its benchmark; the report says why no baseline was
    fitted."""
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": " 1", "reward": float(i == 0)}) + "\n"
                            for i, p in enumerate(FIT)))  # fmt: skip
    metrics = run_calibration("stub", _jsonl(tmp_path / "eval.jsonl", list(GOLD)), str(tmp_path / "out"),
                              fit_rows=str(path), n_boot=0, quiet=True)  # fmt: skip
    assert metrics["fitted_baselines"] == {"skipped": "the 40 fit rows have 1 correct answers; fitting and validating "
                                                      "a calibrator needs at least 2 correct and 2 wrong ones"}  # fmt: skip
    assert "Skipped: the 40 fit rows have 1 correct" in (tmp_path / "out" / "report.md").read_text()


def test_evaluation_questions_among_fit_rows_count_as_seen(tmp_path, stub_model):
    path = _fit_rows(tmp_path / "rows.jsonl")
    with open(path, "a") as f:  # one labelled question is also an evaluation question
        f.write(json.dumps({"prompt": "3 + 3 =", "completion": " 6", "reward": 1.0}) + "\n")
    metrics = run_calibration("stub", _jsonl(tmp_path / "eval.jsonl", list(GOLD)), str(tmp_path / "out"),
                              fit_rows=path, n_boot=0, quiet=True)  # fmt: skip
    assert metrics["n_seen_in_training"] == 1 and metrics["fitted_baselines"]["n_rows"] == 41
    assert [r["prompt"] for r in load_items(tmp_path / "out" / "items.jsonl") if r["seen"]] == ["3 + 3 ="]


# Known samples: each prompt's k = 4 sampled answers, compared with the greedy answer as the JSONL verifier compares
SAMPLES = {"1 + 1 =": ["2", " 2 ", "2.0", "3"], "2 + 2 =": ["4"] * 4, "3 + 3 =": ["6", "6", "7", "8"],
           "4 + 4 =": ["9"] * 4, "5 + 5 =": ["11", "10", "11", "11"], "6 + 6 =": ["12", "x", "y", "z"]}  # fmt: skip
AGREEMENT = {"1 + 1 =": 0.75, "2 + 2 =": 1.0, "3 + 3 =": 0.25, "4 + 4 =": 0.0, "5 + 5 =": 0.75, "6 + 6 =": 0.25}


def test_self_consistency_on_stub_with_known_samples(tmp_path, stub_model, monkeypatch):
    calls = []

    def generate(m, t, prompts, self_score=False, do_sample=False, **kw):
        if not do_sample:
            return [_gen(p, self_score) for p in prompts]
        calls.append(list(prompts))
        drawn = {p: iter(SAMPLES[p]) for p in prompts}
        return [Generation(next(drawn[p]), 2, "marker", [1, 2], 0) for p in prompts]

    monkeypatch.setattr(evaluation, "generate", generate)
    metrics = run_calibration("stub", _jsonl(tmp_path / "eval.jsonl", list(GOLD)), str(tmp_path / "out"),
                              self_consistency_k=4, n_boot=20, quiet=True)  # fmt: skip
    assert calls == [[p for p in GOLD for _ in range(4)]]  # k copies per item, sampled
    rows = load_items(tmp_path / "out" / "items.jsonl")
    assert {r["prompt"]: r["confidence"]["self_consistency"] for r in rows} == AGREEMENT
    assert "self_consistency" in metrics["paired"]["full"]
    sc = metrics["self_consistency"]
    assert sc["k"] == 4 and sc["sampling_s"] >= 0 and "sampling_over_generation" in sc
    assert "Cost: 4x the generation" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(ValueError, match="self_consistency_k"):
        run_calibration("stub", TaskSpec("chain_sum"), str(tmp_path / "x"), self_consistency_k=1)


def test_answer_key_compares_like_the_verifier():
    jsonl, gym = evaluation.answer_key(TaskSpec("x.jsonl")), evaluation.answer_key(TaskSpec("chain_sum"))
    assert jsonl(" 12 ") == jsonl("12.0") != jsonl("12.5") and jsonl("abc ") == "abc"
    assert gym(" 12 ") == "12" != gym("12.0")  # reasoning-gym compares the stripped strings


def test_answer_key_under_math_verify_compares_final_numbers():
    """Self-consistency on worked solutions (GSM8K): samples agree when math-verify reads the same final number from
    them, as the reward would; their different working must not make every sample a different answer."""
    spec = TaskSpec(dataset_name="openai/gsm8k", dataset_test_split="test", prompt_column="question")
    key = evaluation.answer_key(spec, "pcl.rewards:math_verify_accuracy")
    same = ["She has 3 + 4 = <<3+4=7>>7.\n#### 1,007", "1000 + 7 = 1007 apples\n#### 1007", "\\boxed{1007.0}"]
    assert len({key(t) for t in same}) == 1
    assert key("She has 3 + 4 = 7.\n#### 1,008") != key(same[0]) and key("no number") == "no number"
    assert key("so 9^9^9^9") == "9^9^9^9"  # the extracted text: its value is never computed
    assert evaluation.answer_key(spec)(same[0]) != evaluation.answer_key(spec)(same[1])  # reward: task
