# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Local stand-ins for the Hub models TRL's trainer tests load (no downloads).

Each model is built from its config at the tiny size TRL's own generator scripts use (hidden size 8, 2 layers) with a
byte-level BPE tokenizer trained here on the Zen of Python, the model family's special tokens and TRL's copy of the
family's real chat template (so TRL recognises the template and swaps in its training variant, as with the real
tokenizer). They are written in the Hugging Face Hub cache layout, so `from_pretrained("trl-internal-testing/...")`
resolves them with `HF_HUB_OFFLINE=1` for every class (Auto*, the trainers' own string loading) without patching.
"""

import ast
import codecs
import importlib.util
import json
import string
from pathlib import Path

import torch
import trl
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)


# Bump when the stand-ins change, so a cache built by an older harness is rebuilt rather than reused.
STANDIN_VERSION = "1"
_REVISION = "0" * 39 + STANDIN_VERSION  # a fixed commit hash for the Hub cache layout
_TEMPLATES = Path(trl.__file__).parent / "chat_templates"


def _zen_of_python() -> list[str]:
    """The aphorisms of the Zen of Python, read from the `this` module's source (importing it prints them)."""
    source = Path(importlib.util.find_spec("this").origin).read_text()
    assign = next(node for node in ast.parse(source).body if isinstance(node, ast.Assign))
    return [line for line in codecs.decode(ast.literal_eval(assign.value), "rot13").splitlines()[2:] if line]


ZEN_LINES = _zen_of_python()

_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
_QWEN3_SPECIALS = [*_QWEN_SPECIALS, "<think>", "</think>", "<tool_response>", "</tool_response>"]
_LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
_LLAMA_SPECIALS += ["<|finetune_right_pad_id|>", "<|python_tag|>", "<|eom_id|>"]

# family -> (special tokens, chat template file, eos, pad, bos added to every sequence or None)
_FAMILIES = {
    "qwen2.5": (_QWEN_SPECIALS, "qwen2_5.jinja", "<|im_end|>", "<|endoftext|>", None),
    "qwen3": (_QWEN3_SPECIALS, "qwen3.jinja", "<|im_end|>", "<|endoftext|>", None),
    "llama3.2": (_LLAMA_SPECIALS, "llama3_2.jinja", "<|eot_id|>", "<|finetune_right_pad_id|>", "<|begin_of_text|>"),
}


def _corpus(template: str) -> list[str]:
    """Text the BPE merges are learned from: the data the tests use, the template's literal text, ASCII."""
    return [*ZEN_LINES, template, string.printable, json.dumps({"name": "get_weather", "arguments": {"city": "x"}})]


def build_tokenizer(family: str, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with the family's special tokens, eos/pad/bos and real chat template."""
    specials, template_file, eos, pad, bos = _FAMILIES[family]
    template = (_TEMPLATES / template_file).read_text()
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(_corpus(template), trainer)
    if bos is not None:  # Llama 3 prepends <|begin_of_text|> to every encoded sequence
        bos_id = backend.token_to_id(bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=pad, bos_token=bos)
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in (eos, pad, bos)]})
    tokenizer.chat_template = template
    tokenizer.model_max_length = 32768
    return tokenizer


# The sizes of TRL's own tiny-model generator scripts, shared by every family
_TINY = dict(hidden_size=8, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=32)


def _qwen2(tok, cls):
    return Qwen2Config(vocab_size=len(tok), **_TINY), cls


def _qwen3(tok, cls):
    return Qwen3Config(vocab_size=len(tok), head_dim=4, **_TINY), cls


def _qwen3_moe(tok, cls):
    cfg = Qwen3MoeConfig(
        vocab_size=len(tok), head_dim=4, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2, **_TINY
    )
    return cfg, cls


def _llama(tok, cls):
    return LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, **_TINY), cls


# Hub id -> (tokenizer family, config builder, model class)
MODELS = {
    "trl-internal-testing/tiny-Qwen2ForCausalLM-2.5": ("qwen2.5", _qwen2, Qwen2ForCausalLM),
    "trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5": (
        "qwen2.5",
        _qwen2,
        Qwen2ForSequenceClassification,
    ),
    "trl-internal-testing/tiny-Qwen3ForCausalLM": ("qwen3", _qwen3, Qwen3ForCausalLM),
    "trl-internal-testing/tiny-Qwen3ForSequenceClassification": ("qwen3", _qwen3, Qwen3ForSequenceClassification),
    "trl-internal-testing/tiny-Qwen3MoeForCausalLM": ("qwen3", _qwen3_moe, Qwen3MoeForCausalLM),
    "trl-internal-testing/tiny-LlamaForSequenceClassification-3.2": (
        "llama3.2",
        _llama,
        LlamaForSequenceClassification,
    ),
}


def _snapshot_dir(hub_cache: Path, repo_id: str, kind: str = "models") -> Path:
    """Create the Hub cache skeleton for `repo_id` and return its snapshot folder."""
    repo_dir = hub_cache / f"{kind}--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(_REVISION)
    snapshot = repo_dir / "snapshots" / _REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def build_model(repo_id: str, hub_cache: Path, seed: int = 42) -> None:
    """Build one stand-in and save it (tokenizer, config, bf16 weights, generation config) into the Hub cache."""
    family, make_config, cls = MODELS[repo_id]
    tokenizer = build_tokenizer(family)
    config, cls = make_config(tokenizer, cls)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    if cls.__name__.endswith("ForSequenceClassification"):
        config.num_labels = 1  # TRL's tiny reward models score with a single logit
    torch.manual_seed(seed)
    model = cls(config).to(torch.bfloat16)  # TRL's tiny models are stored in their source model's bf16
    snapshot = _snapshot_dir(hub_cache, repo_id)
    if not cls.__name__.endswith("ForSequenceClassification"):
        eos_ids = [tokenizer.eos_token_id, tokenizer.pad_token_id]
        model.generation_config = GenerationConfig(
            eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id
        )
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)


def build_all(hub_cache: Path) -> list[str]:
    """Build every model stand-in not yet in `hub_cache`; return the ids available."""
    for repo_id in MODELS:
        marker = _snapshot_dir(hub_cache, repo_id) / "config.json"
        if not marker.exists():
            build_model(repo_id, hub_cache)
    return list(MODELS)
