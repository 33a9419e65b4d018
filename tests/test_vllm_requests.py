# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""What PCL hands to vLLM. vLLM needs a GPU, so TRL's vLLM back-end runs here against a recording stand-in for the
engine (colocate: `vllm.LLM` / `SamplingParams`; server: TRL's `VLLMClient`), and the deploy-mode score is checked
against `pcl.readout` with logprobs computed by transformers. The real engine runs in the GPU check
(`recipes/deploy_vllm.py`)."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import grpo_args, grpo_trainer, readme_python_block
from trl.generation import vllm_generation
from trl.generation.vllm_client import VLLMClient

from pcl.features import answer_ids
from pcl.inference import encode_prompt
from pcl.marker import prepare_model
from pcl.readout import self_scores
from pcl.segment import SegmentFormat
from pcl.vllm_requests import (
    answer_sampling_kwargs,
    checkpoint_segment,
    rollout_sampling_kwargs,
    score_prompt_ids,
    score_sampling_kwargs,
    self_score_from_logprobs,
)


MODES = ["teacher_forced", "generated", "both"]
# Keyword arguments of vLLM's `SamplingParams` and fields of its OpenAI `/v1/completions` request (vLLM 0.2x): the
# stand-in engines refuse anything else. `SamplingParams` would raise too; the server only logs unknown fields and
# ignores them, so there a misspelt key would silently change nothing
SAMPLING_PARAMS = {
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k", "min_p",
    "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs",
    "detokenize", "skip_special_tokens", "spaces_between_special_tokens", "logits_processors",
    "include_stop_str_in_output", "truncate_prompt_tokens", "output_kind", "structured_outputs", "logit_bias",
    "allowed_token_ids", "extra_args", "bad_words",
}  # fmt: skip
COMPLETION_REQUEST = (SAMPLING_PARAMS - {"detokenize", "output_kind", "extra_args", "bad_words"}) | {
    "model", "prompt", "echo", "stream", "suffix", "user", "use_beam_search", "length_penalty", "return_token_ids",
    "return_tokens_as_token_ids", "response_format", "priority", "vllm_xargs",
}  # fmt: skip
PROMPTS = [{"prompt": f"{a} + {b} ="} for a in range(4) for b in range(4)]


class TestRolloutSamplingKwargs:
    def test_teacher_forced_stops_at_marker(self):
        kwargs = {"stop_token_ids": [5, 9], "seed": 3}
        out = rollout_sampling_kwargs(kwargs, marker_id=9, eos_ids=[2], stop_at_marker=True)
        assert out == {"stop_token_ids": [5, 9], "seed": 3}
        assert kwargs == {"stop_token_ids": [5, 9], "seed": 3}  # the user's dict (TRL's args) is not changed

    def test_generated_stops_at_eos_only(self):
        out = rollout_sampling_kwargs({"stop_token_ids": [5, 9], "top_k": 4}, 9, [2, 9, 7], stop_at_marker=False)
        # The checkpoint's generation config lists the marker as an EOS id: vLLM must not read it
        assert out == {"stop_token_ids": [5, 2, 7], "top_k": 4, "ignore_eos": True}

    def test_users_ignore_eos_is_kept(self):
        out = rollout_sampling_kwargs({"ignore_eos": True}, 9, [2], stop_at_marker=False)
        assert out == {"ignore_eos": True, "stop_token_ids": []}


# ---- TRL's vLLM back-end with a recording engine ------------------------------------------------------------------


def fake_completion(tokens, tokenizer, mode, index):
    """What the engine returns for the `index`-th completion: `answer MARKER` (teacher-forced rollouts stop at the
    marker) or `answer MARKER [prefix] LEVEL EOS` (generated rollouts stop at EOS)."""
    answer = tokenizer.encode(f" {index % 10}", add_special_tokens=False)
    if mode == "teacher_forced":
        return [*answer, tokens.marker_id]
    level = index % len(tokens.level_ids)
    return [*answer, tokens.marker_id, *tokens.assessment_ids(level)]


class Engine:
    """Records the sampling arguments TRL hands to vLLM and answers with `fake_completion`."""

    def __init__(self, mode):
        self.mode, self.calls, self.tokens, self.tokenizer = mode, [], None, None

    def completions(self, n):
        return [fake_completion(self.tokens, self.tokenizer, self.mode, i) for i in range(n)]

    # colocate: `vllm.LLM` and `vllm.SamplingParams`
    def LLM(self, **init):
        engine = self

        class LLM:
            llm_engine = SimpleNamespace(
                model_executor=SimpleNamespace(
                    driver_worker=SimpleNamespace(
                        model_runner=SimpleNamespace(model=SimpleNamespace(load_weights=lambda weights: None))
                    )
                )
            )

            def reset_prefix_cache(self):
                pass

            def generate(self, prompts, sampling_params, use_tqdm=False):
                engine.calls.append(sampling_params)
                outs = engine.completions(len(prompts))
                return [
                    SimpleNamespace(
                        prompt_token_ids=p["prompt_token_ids"],
                        outputs=[
                            SimpleNamespace(
                                token_ids=ids, logprobs=[{t: SimpleNamespace(logprob=-1.0, rank=1)} for t in ids]
                            )
                        ],
                    )
                    for p, ids in zip(prompts, outs, strict=True)
                ]

        return LLM()

    @staticmethod
    def SamplingParams(**kwargs):
        assert set(kwargs) <= SAMPLING_PARAMS, set(kwargs) - SAMPLING_PARAMS
        return dict(kwargs)

    # server: TRL's own `VLLMClient` (it builds the request body), posting to a recording OpenAI-style server
    def VLLMClient(self, **init):
        engine = self

        class Client(VLLMClient):
            def __init__(self, **kwargs):
                self.model, self.base_url = "ckpt", "http://server:8000"

            def init_communicator(self, device):
                pass

            def get_server_info(self):
                return {"model_config": {"logprobs_mode": "processed_logprobs"}}

            def update_named_params(self, metadata, params):
                for _ in params:
                    pass

            def reset_prefix_cache(self):
                pass

            def _post(self, url, json):
                assert url.endswith("/v1/completions") and set(json) <= COMPLETION_REQUEST, set(json)
                engine.calls.append(json)  # the JSON body the vLLM server receives
                outs = engine.completions(len(json["prompt"]) * json["n"])
                return {"choices": [
                    {"prompt_token_ids": json["prompt"][i // json["n"]], "token_ids": ids, "logprobs": {
                        "tokens": [f"token_id:{t}" for t in ids], "token_logprobs": [-1.0] * len(ids),
                        "top_logprobs": [None] * len(ids)}}
                    for i, ids in enumerate(outs)
                ]}  # fmt: skip

        return Client(**init)


@pytest.fixture
def engine_patch(monkeypatch):
    def patch(mode):
        engine = Engine(mode)
        monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda *a, **k: True)
        monkeypatch.setattr(vllm_generation, "LLM", engine.LLM, raising=False)
        monkeypatch.setattr(vllm_generation, "SamplingParams", engine.SamplingParams, raising=False)
        monkeypatch.setattr(vllm_generation, "VLLMClient", engine.VLLMClient)
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "localhost",
                           "MASTER_PORT": "29511"}.items():  # fmt: skip
            monkeypatch.setenv(key, value)  # colocate mode sets them; restored after the test
        return engine

    return patch


def vllm_config(tmp_path, mode, vllm_mode, **config):
    return grpo_args(tmp_path, use_vllm=True, vllm_mode=vllm_mode, self_assessment_mode=mode, **config)


def vllm_trainer(model_dir, tokenizer, args, seen):
    def reward(completions, **kwargs):
        seen.extend(completions)
        return [float(len(c) % 2) for c in completions]

    return grpo_trainer(model_dir, tokenizer, args, reward, PROMPTS)


@pytest.mark.parametrize("vllm_mode", ["colocate", "server"])
@pytest.mark.parametrize("mode", MODES)
def test_trainer_hands_vllm_its_stops_and_parses_the_written_segment(
    engine_patch, model_dir, tokenizer, tmp_path, mode, vllm_mode
):
    engine = engine_patch(mode)
    seen = []
    kwargs = {"seed": 7, "presence_penalty": 0.5, "stop_token_ids": [5]}
    trainer = vllm_trainer(
        model_dir, tokenizer, vllm_config(tmp_path, mode, vllm_mode, generation_kwargs=kwargs), seen
    )
    tokens = trainer.segment_tokens
    engine.tokens, engine.tokenizer = tokens, tokenizer
    assert trainer.args.generation_kwargs == {"seed": 7, "presence_penalty": 0.5, "stop_token_ids": [5]}

    batch = next(iter(trainer.get_train_dataloader()))
    output = trainer._generate_and_score_completions(batch)

    (sampling,) = engine.calls
    # TRL's own sampling parameters and the user's `generation_kwargs` pass through
    assert sampling["max_tokens"] == 16 and sampling["seed"] == 7 and sampling["presence_penalty"] == 0.5
    assert sampling["n"] == (4 if vllm_mode == "server" else 1)
    if mode == "teacher_forced":
        assert sampling["stop_token_ids"] == [5, tokens.marker_id] and "ignore_eos" not in sampling
        assert output["self_assessment_mask"].any(-1).all()  # the true score appended after each marker
        return
    # Generated modes: the marker is no stop; vLLM must stop at the real EOS ids only
    assert sampling["ignore_eos"] is True
    assert sampling["stop_token_ids"] == [5, *tokens.eos_ids] and tokens.marker_id not in sampling["stop_token_ids"]
    n = output["completion_ids"].size(0)
    expected = [i % len(tokens.level_ids) for i in range(n)]
    assert trainer._pcl_written_levels == expected  # each written level, parsed from vLLM's token ids
    # The task rewards saw the answers only, not the written assessment
    assert seen == [f" {i % 10}" for i in range(n)]
    # The score position: after `answer MARKER [prefix]`, in the completion's columns
    answer_len = [len(tokenizer.encode(f" {i % 10}", add_special_tokens=False)) + 1 for i in range(n)]
    score_index = output["self_assessment_score_index"].tolist()
    assert score_index == [a + len(tokens.prefix_ids) for a in answer_len]
    ids = output["completion_ids"]
    assert [ids[i, score_index[i]].item() for i in range(n)] == [tokens.level_ids[e] for e in expected]
    # Per-token advantages: one value on the answer (the task's), another on the written segment (consistency's)
    adv, mask = output["advantages"], output["completion_mask"]
    for i, a in enumerate(answer_len):
        end = int(mask[i].sum())
        assert end == a + len(tokens.prefix_ids) + 2  # the segment ends with EOS
        assert torch.all(adv[i, :a] == adv[i, 0]) and torch.all(adv[i, a:end] == adv[i, a])


# ---- deploy mode -------------------------------------------------------------------------------------------------


def test_answer_sampling_kwargs(fmt, tokenizer, tiny_model):
    tokens = prepare_model(tiny_model, tokenizer, fmt)
    out = answer_sampling_kwargs(tokens, temperature=0.0, max_tokens=8, stop_token_ids=[3, tokens.marker_id])
    assert out == {"temperature": 0.0, "max_tokens": 8, "stop_token_ids": [3, tokens.marker_id]}
    assert score_sampling_kwargs(tokens) == {
        "max_tokens": 1, "temperature": 0.0, "logprobs": len(tokens.level_ids),
        "allowed_token_ids": list(tokens.level_ids), "repetition_penalty": 1.0, "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }  # fmt: skip


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("normalised_over", ["levels", "vocabulary"])
def test_self_score_equals_readout(tokenizer, tiny_model, tmp_path, temperature, normalised_over):
    """The deploy script's score, from the logprobs vLLM would report for the request it builds, equals
    `pcl.readout.self_scores` on the same answers."""
    fmt = SegmentFormat(prefix=" score:") if normalised_over == "levels" else SegmentFormat()
    tokens = prepare_model(tiny_model, tokenizer, fmt)
    tiny_model.config.post_completion["readout_temperature"] = temperature
    tiny_model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    tok, ckpt_tokens, ckpt_temperature = checkpoint_segment(str(tmp_path / "ckpt"))
    assert ckpt_tokens == tokens and ckpt_temperature == temperature

    prompts = ["1 + 2 =", "3 + 4 =", "9 + 9 ="]
    answers = [" 3", " 7", " 18"]
    expected = self_scores(tiny_model, tokenizer, prompts, answers)
    # As vLLM returns them: stopped at the marker, at EOS, or cut at max_tokens
    ends = [[tokens.marker_id], [tokens.eos_id], []]
    scores = []
    for prompt, answer, end in zip(prompts, answers, ends, strict=True):
        generated = tokenizer.encode(answer, add_special_tokens=False) + end
        ids = score_prompt_ids(encode_prompt(tokenizer, prompt), generated, tokens)
        assert ids == answer_ids(tokenizer, prompt, answer, tokens)[0] + list(tokens.prefix_ids)  # what readout reads
        with torch.no_grad():
            logits = tiny_model(torch.tensor([ids])).logits[0, -1].double()
        if normalised_over == "levels":  # vLLM's processed logprobs: masked to `allowed_token_ids`
            masked = torch.full_like(logits, -math.inf)
            masked[list(tokens.level_ids)] = logits[list(tokens.level_ids)]
            logprobs = masked.log_softmax(-1)
            reported = {i: SimpleNamespace(logprob=logprobs[i].item(), rank=1) for i in tokens.level_ids}
        else:  # raw logprobs over the whole vocabulary
            reported = dict(enumerate(logits.log_softmax(-1).tolist()))
        scores.append(self_score_from_logprobs(reported, ckpt_tokens, ckpt_temperature))
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len({round(s, 6) for s in scores}) > 1  # distinct answers, distinct scores: the comparison can fail


def test_score_request_of_an_eos_stop(fmt, tokenizer, tiny_model):
    tokens = prepare_model(tiny_model, tokenizer, fmt)
    assert score_prompt_ids([1, 2], [7, 8, tokens.eos_id], tokens) == [1, 2, 7, 8, tokens.marker_id]
    assert score_prompt_ids([1, 2], [7, 8, tokens.marker_id], tokens) == [1, 2, 7, 8, tokens.marker_id]
    assert score_prompt_ids([1], [7, 8], tokens) == [1, 7, 8, tokens.marker_id]  # cut at max_tokens


# What `vllm serve` does with a completions request that leaves a sampling field unset: it takes it from the
# checkpoint's generation config (`--generation-config auto`, the default), else from SamplingParams' default
# (vLLM's `CompletionRequest.to_sampling_params`)
SERVER_DEFAULTS = {"repetition_penalty": 1.0, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0}


def served_top_logprobs(model, request: dict) -> dict:
    """`choices[0]["logprobs"]["top_logprobs"][0]` of a one-token `/v1/completions` request to `vllm serve
    --logprobs-mode processed_logprobs`, computed with transformers in vLLM's sampler order: the allowed-token mask,
    then the penalties (repetition over prompt and output tokens; presence and frequency over the output, empty
    here), then, for a greedy request, the log-softmax of those processed logits."""
    saved = model.generation_config
    params = {k: request.get(k, getattr(saved, k, None) or v) for k, v in SERVER_DEFAULTS.items()}
    assert params["temperature"] == 0.0 and request["max_tokens"] == 1  # the greedy path: no temperature, no top-p/k
    with torch.no_grad():
        logits = model(torch.tensor([request["prompt"]])).logits[0, -1].double()
    masked = torch.full_like(logits, -math.inf)
    masked[request["allowed_token_ids"]] = logits[request["allowed_token_ids"]]
    seen = list(set(request["prompt"]))
    penalty = params["repetition_penalty"]
    masked[seen] = torch.where(masked[seen] > 0, masked[seen] / penalty, masked[seen] * penalty)
    logprobs = masked.log_softmax(-1)
    top = sorted(request["allowed_token_ids"], key=lambda i: -logprobs[i].item())[: request["logprobs"]]
    return {f"token_id:{i}": logprobs[i].item() for i in top}


def test_served_score_ignores_the_checkpoints_sampling_defaults(tokenizer, tiny_model, tmp_path):
    """Behind `vllm serve`, fields a request leaves unset come from the checkpoint's generation config (Qwen2.5
    instruct models set `repetition_penalty` 1.05-1.1), and processed logprobs include the repetition penalty, which
    hits the level digits a math prompt holds: the score request must pin every penalty to neutral."""
    fmt = SegmentFormat()
    tokens = prepare_model(tiny_model, tokenizer, fmt)
    tiny_model.generation_config.repetition_penalty = 1.3
    tiny_model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    _, ckpt_tokens, temperature = checkpoint_segment(str(tmp_path / "ckpt"))

    prompts, answers = ["12 + 30 =", "7 + 6 =", "99 - 1 ="], [" 42", " 13", " 98"]
    expected = self_scores(tiny_model, tokenizer, prompts, answers)
    scores = []
    for prompt, answer in zip(prompts, answers, strict=True):
        generated = tokenizer.encode(answer, add_special_tokens=False) + [tokens.marker_id]
        request = {
            "model": "ckpt", "prompt": score_prompt_ids(encode_prompt(tokenizer, prompt), generated, ckpt_tokens),
            "return_tokens_as_token_ids": True, **score_sampling_kwargs(ckpt_tokens),
        }  # fmt: skip
        assert set(request) <= COMPLETION_REQUEST, set(request) - COMPLETION_REQUEST
        top = served_top_logprobs(tiny_model, request)
        scores.append(self_score_from_logprobs({int(k.split(":")[1]): v for k, v in top.items()}, ckpt_tokens,
                                               temperature))  # fmt: skip
    assert scores == pytest.approx(expected, abs=1e-5)


def test_missing_level_logprob_is_refused(fmt, tokenizer, tiny_model):
    tokens = prepare_model(tiny_model, tokenizer, fmt)
    with pytest.raises(ValueError, match="logprobs_mode='processed_logprobs'"):
        self_score_from_logprobs({tokens.level_ids[0]: -0.1}, tokens)


def test_vllm_extra_pins_trls_range():
    """`pip install pcl[vllm]` installs the vLLM versions the installed TRL supports (its own `vllm` extra)."""
    import importlib.metadata
    from pathlib import Path

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    ours = {
        Requirement(r).name: Requirement(r).specifier for r in pyproject["project"]["optional-dependencies"]["vllm"]
    }
    trls = [Requirement(r) for r in importlib.metadata.requires("trl")]
    (vllm,) = [r for r in trls if r.name == "vllm" and r.marker is not None and r.marker.evaluate({"extra": "vllm"})]
    assert ours["vllm"] == vllm.specifier


def fake_vllm(tokenizer):
    """A stand-in `vllm` module that runs requests with transformers, as vLLM would answer them: greedy answers that
    stop at `stop_token_ids` or the checkpoint's EOS ids (kept in the token ids, dropped from the text), and processed
    logprobs masked to `allowed_token_ids`."""
    import types

    from pcl.marker import load_pcl_model

    module = types.ModuleType("vllm")

    class SamplingParams:
        def __init__(self, **kwargs):
            assert set(kwargs) <= SAMPLING_PARAMS, set(kwargs) - SAMPLING_PARAMS
            self.__dict__.update({"stop_token_ids": None, "allowed_token_ids": None, **kwargs})

    class LLM:
        def __init__(self, model, logprobs_mode="raw_logprobs"):
            self.model, _, _ = load_pcl_model(model)
            self.logprobs_mode = logprobs_mode

        def generate(self, requests, params):
            outs = []
            for request in requests:
                ids = torch.tensor([request["prompt_token_ids"]])
                with torch.no_grad():
                    if params.allowed_token_ids:
                        assert self.logprobs_mode == "processed_logprobs"
                        logits = self.model(ids).logits[0, -1]
                        masked = torch.full_like(logits, -math.inf)
                        masked[params.allowed_token_ids] = logits[params.allowed_token_ids]
                        lp = masked.log_softmax(-1)
                        top = sorted(params.allowed_token_ids, key=lambda i: -lp[i].item())[: params.logprobs]
                        out = SimpleNamespace(token_ids=top[:1], text="", logprobs=[
                            {i: SimpleNamespace(logprob=lp[i].item(), rank=r + 1) for r, i in enumerate(top)}])  # fmt: skip
                    else:
                        stops = set(params.stop_token_ids or []) | set(self.model.generation_config.eos_token_id)
                        # A random tiny model writes special tokens, which a decoded answer would lose
                        bad = [[i] for i in tokenizer.all_special_ids if i not in stops]
                        gen = self.model.generate(ids, max_new_tokens=params.max_tokens, do_sample=False,
                                                  eos_token_id=sorted(stops), bad_words_ids=bad)  # fmt: skip
                        row = gen[0, ids.size(1) :].tolist()
                        row = row[: next((j + 1 for j, t in enumerate(row) if t in stops), len(row))]
                        out = SimpleNamespace(token_ids=row, text=tokenizer.decode(row, skip_special_tokens=True))
                outs.append(SimpleNamespace(outputs=[out]))
            return outs

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def test_deploy_script(tokenizer, tiny_model, tmp_path, monkeypatch, capsys):
    """`recipes/deploy_vllm.py` end to end on a stand-in engine: answers stop at the marker or EOS, and the score it
    reads from the engine's logprobs equals `pcl.readout`'s (its own `--check`)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    prepare_model(tiny_model, tokenizer, SegmentFormat(prefix=" score:"))
    tiny_model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(tokenizer))
    path = Path(__file__).resolve().parents[1] / "recipes" / "deploy_vllm.py"
    spec = importlib.util.spec_from_file_location("deploy_vllm", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    prompts = ["1 + 2 =", "3 + 4 =", "9 + 9 =", "5 + 0 ="]
    rows = script.main([str(tmp_path / "ckpt"), *[a for p in prompts for a in ("--prompt", p)], "--max_tokens", "6",
                        "--check"])  # fmt: skip
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed == rows
    assert [r["prompt"] for r in rows] == prompts
    for row in rows:
        assert row["self_score"] == pytest.approx(row["readout_self_score"], abs=1e-5)
        assert row["num_tokens"] <= 6 and "<|" not in row["answer"]


def test_readme_vllm_config(engine_patch, model_dir, tokenizer, tmp_path):
    code = readme_python_block("### vLLM", 0).replace(
        'output_dir="outputs/pcl-grpo",',
        f'output_dir="{tmp_path}", bf16=False, use_cpu=True, report_to="none", per_device_train_batch_size=8, '
        "num_generations=4, max_completion_length=16, max_steps=1,",
    )
    namespace = {}
    exec(code, namespace)
    engine = engine_patch("generated")
    trainer = vllm_trainer(model_dir, tokenizer, namespace["args"], [])
    engine.tokens, engine.tokenizer = trainer.segment_tokens, tokenizer
    trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    (sampling,) = engine.calls
    assert sampling["seed"] == 0 and sampling["top_k"] == 50 and sampling["ignore_eos"] is True
    assert sampling["stop_token_ids"] == list(trainer.segment_tokens.eos_ids)
    assert namespace["args"].generation_kwargs == {"seed": 0, "top_k": 50}


def test_readme_vllm_deploy(tokenizer, tiny_model, tmp_path, monkeypatch):
    import sys

    prepare_model(tiny_model, tokenizer, SegmentFormat())
    tiny_model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(tokenizer))
    code = readme_python_block("### vLLM", 1)
    code = code.replace('checkpoint = "outputs/quickstart/assess"', f'checkpoint = "{tmp_path / "ckpt"}"')
    namespace = {}
    exec(code, namespace)
    expected = self_scores(tiny_model, tokenizer, ["12 + 30 ="], [namespace["answer"].text])
    assert 0 < len(namespace["answer"].token_ids) <= 64
    assert namespace["self_score"] == pytest.approx(expected[0], abs=1e-5)
