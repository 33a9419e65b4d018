# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The marker token: added to the tokenizer, listed as an EOS id of the model, saved with every checkpoint.

Because the marker is one special token in `model.generation_config.eos_token_id`, plain `generate()`, TRL's rollouts
and vLLM (`stop_token_ids`) all stop there with no extra code, and the saved model stops there in any engine.
"""

import contextlib
import json
import os
from dataclasses import asdict, fields

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    TrainingArguments,
)
from trl.trainer.utils import get_config_model_id

from .segment import SegmentFormat, SegmentTokens


# Key under which the segment format is saved in `config.json`, so a checkpoint describes its own segment
CONFIG_KEY = "post_completion"


def resolve_args_and_tokenizer(
    model, args, config_cls: type, suffix: str, processing_class=None, processor: bool = False, **tokenizer_kwargs
):
    """TRL's defaults for a trainer's `args` and `processing_class`, plus a type check of `args`.

    The tokenizer is loaded here rather than by the parent trainer because the marker must be added before the parent
    tokenises datasets or sets up generation in its `__init__`. With `processor=True` it is loaded as `GRPOTrainer`
    loads it: an `AutoProcessor` (a vision-language model's processor, or a tokenizer), left-padded and left-truncated,
    with the `revision` of `model_init_kwargs` and `args.trust_remote_code`; `tokenizer_kwargs` are then unused.
    """
    name = model if isinstance(model, str) else model.config._name_or_path
    if args is None:
        args = config_cls(f"{name.split('/')[-1]}-{suffix}")
    elif isinstance(args, TrainingArguments) and not isinstance(args, config_cls):
        # Like TRL's SFTTrainer does with a plain `TrainingArguments`: keep every value, PCL's options at defaults.
        # Fields are copied directly: `to_dict()` masks every `*_token` value (hub_token, SFTConfig's `eos_token`, ...)
        known = {f.name for f in fields(config_cls) if f.init}
        args = config_cls(**{f.name: getattr(args, f.name) for f in fields(args) if f.init and f.name in known})
    if not isinstance(args, config_cls):
        raise TypeError(f"`args` must be a {config_cls.__name__}, got {type(args).__name__}.")
    if processing_class is None and processor:
        revision = (args.model_init_kwargs or {}).get("revision") if isinstance(model, str) else None
        processing_class = AutoProcessor.from_pretrained(
            name if isinstance(model, str) else get_config_model_id(model.config),
            revision=revision,
            truncation_side="left",
            padding_side="left",
            trust_remote_code=args.trust_remote_code,
        )
    elif processing_class is None:
        processing_class = AutoTokenizer.from_pretrained(name, **tokenizer_kwargs)
    return args, processing_class


def text_tokenizer(processing_class) -> PreTrainedTokenizerBase:
    """The tokenizer the marker is added to: a processor's (`ProcessorMixin.tokenizer`), or the processing class."""
    return processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class


def attach_hook(model: torch.nn.Module, hook, module: torch.nn.Module | None = None, **kwargs) -> None:
    """Register PCL's forward hook on `module` (default: `model`), after removing any PCL hook left anywhere in `model`.

    A model object reused by a second trainer (e.g. PCL-SFT, then PCL-GRPO) would otherwise carry both trainers'
    hooks, on different submodules, and the second trainer's segment would be reweighted by the first's.
    """
    for sub in model.modules():
        old = sub.__dict__.pop("_pcl_hook", None)
        if old is not None:
            old.remove()
    module = model if module is None else module
    module._pcl_hook = module.register_forward_hook(hook, **kwargs)


def add_marker_token(tokenizer: PreTrainedTokenizerBase, marker: str) -> int:
    """Make `marker` a single special token of `tokenizer` (adding it if the vocabulary lacks it); return its id."""
    if marker not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [marker]}, replace_extra_special_tokens=False)
    ids = tokenizer.encode(marker, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"The marker {marker!r} is split into {len(ids)} tokens {ids} by this tokenizer. The marker must be one "
            "token: pick a string that is not in the vocabulary (PCL then adds it as a special token), or the name of "
            "an existing special/reserved token of the base model."
        )
    return ids[0]


def id_list(ids: int | list[int] | None) -> list[int]:
    """A generation config's `eos_token_id` (an int, a list or None) as a list."""
    return [ids] if isinstance(ids, int) else list(ids or [])


def eos_ids_of(
    model: PreTrainedModel | GenerationConfig | None, tokenizer: PreTrainedTokenizerBase, marker_id: int
) -> list[int]:
    """Every id that ends a sequence (tokenizer EOS and the model's EOS ids), excluding the marker.

    `model` may also be a bare `GenerationConfig` (a model given by path, before it is loaded).
    """
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    if model is not None:
        ids += id_list(getattr(model, "generation_config", model).eos_token_id)
    ids = [i for i in dict.fromkeys(ids) if i != marker_id]
    if not ids:
        raise ValueError("The tokenizer has no `eos_token`: PCL needs an EOS token to close the self-assessment.")
    return ids


def segment_tokens(
    tokenizer: PreTrainedTokenizerBase, fmt: SegmentFormat, model: PreTrainedModel | GenerationConfig | None = None
) -> SegmentTokens:
    """Resolve a [`SegmentFormat`] to token ids, checking that it tokenises the same alone and in context."""
    marker_id = add_marker_token(tokenizer, fmt.marker)
    for role in ("eos", "pad"):
        if marker_id == getattr(tokenizer, f"{role}_token_id"):
            raise ValueError(
                f"The marker {fmt.marker!r} is the tokenizer's {role} token: the marker must be a token of its own "
                f"(the segment ends at EOS, and padding must not read as markers). Pick another marker."
            )
    prefix_ids = tokenizer.encode(fmt.prefix, add_special_tokens=False) if fmt.prefix else []
    level_ids = []
    for text in fmt.level_texts():
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"Score level {text!r} is {len(ids)} tokens with this tokenizer; each level must be a single token so "
                f"the self-score can be read in one forward pass. Use `self_assessment_levels` <= 10 (digits 0-9)."
            )
        in_context = tokenizer.encode(fmt.marker + fmt.prefix + text, add_special_tokens=False)
        if in_context != [marker_id, *prefix_ids, ids[0]]:
            raise ValueError(
                f"The assessment {fmt.prefix + text!r} tokenises differently after the marker ({in_context}) than "
                f"alone ({[marker_id, *prefix_ids, ids[0]]}). Change `self_assessment_prefix` (e.g. end it with a "
                "space or ':' so it does not merge with the score)."
            )
        level_ids.append(ids[0])
    eos_ids = eos_ids_of(model, tokenizer, marker_id)
    return SegmentTokens(
        marker_id=marker_id,
        prefix_ids=tuple(prefix_ids),
        level_ids=tuple(level_ids),
        eos_id=tokenizer.eos_token_id,
        eos_ids=tuple(eos_ids),
    )


def prepare_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, fmt: SegmentFormat) -> SegmentTokens:
    """Resize the embeddings for a newly added marker, make the marker a stop id, and record the format.

    `resize_token_embeddings` gathers partitioned parameters itself under DeepSpeed ZeRO-3.
    """
    new = fmt.marker not in tokenizer.get_vocab()
    tokens = segment_tokens(tokenizer, fmt, model)
    resize_for_marker(model, tokenizer, tokens, new_marker=new)
    gen = model.generation_config
    eos = gen.eos_token_id
    eos = id_list(eos)
    for i in (*tokens.eos_ids, tokens.marker_id):
        if i not in eos:
            eos.append(i)
    gen.eos_token_id = eos
    if gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    setattr(model.config, CONFIG_KEY, {**asdict(fmt), "reward_range": list(fmt.reward_range)})
    return tokens


def embedding_rows(model: PreTrainedModel) -> int:
    """The number of rows of the input embeddings (read from the module, so partitioned under ZeRO-3 or wrapped by
    PEFT's trainable tokens / `modules_to_save` alike)."""
    embed = model.get_input_embeddings()
    return getattr(embed, "original_module", embed).num_embeddings


def resize_for_marker(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tokens: SegmentTokens, new_marker: bool = False
) -> bool:
    """Resize the embeddings when the tokenizer outgrew them (a newly added marker); return whether it resized.

    The marker's new input and output rows start as copies of EOS's rather than the default mean init: the marker
    takes the place of EOS as the stop, and a mean-initialised output row would take ~1/V of the probability mass at
    every position (on a small vocabulary that stops rollouts mid-answer). A model whose embeddings have spare rows
    (Qwen2.5: 152064 rows for 151665 tokens) needs no resize, but a `new_marker` lands on an untrained padding row,
    so it gets EOS's rows too. `resize_token_embeddings` gathers partitioned parameters itself under DeepSpeed ZeRO-3;
    the copy gathers them too.
    """
    resize = len(tokenizer) > embedding_rows(model)
    if not (resize or new_marker):
        return False
    if resize:
        model.resize_token_embeddings(len(tokenizer))
    rows = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not rows[0]:
        rows.append(out.weight)
    if out is not None and out.bias is not None:
        rows.append(out.bias)
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    gather = contextlib.nullcontext()
    if is_deepspeed_zero3_enabled():
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(rows, modifier_rank=0)
    with gather, torch.no_grad():
        for weight in rows:
            weight[tokens.marker_id] = weight[tokens.eos_id]
    return resize


def resize_instance(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, tokens: SegmentTokens) -> None:
    """Resize a model instance handed to a trainer for a newly added marker, before the trainer's `__init__` wraps or
    casts it (e.g. `cast_lm_head_to_fp32` replaces the LM head, which a later resize would silently undo).

    A PEFT-wrapped model cannot be resized safely (its adapters and saved-module lists are built for the old
    vocabulary): it is refused with the fix.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if len(tokenizer) <= embedding_rows(base):
        return
    if base is not model:
        raise ValueError(
            f"The marker {tokenizer.convert_ids_to_tokens(tokens.marker_id)!r} is not in the vocabulary of "
            "this PEFT model, so its embeddings would need a resize, which a model already wrapped by PEFT cannot "
            "take. Set `self_assessment_marker` to an existing special (e.g. reserved) token of the base model, or "
            "pass the base model with `peft_config=` so PCL resizes it before PEFT wraps it."
        )
    resize_for_marker(model, tokenizer, tokens)


def format_of(model: PreTrainedModel) -> SegmentFormat:
    """The [`SegmentFormat`] a PCL checkpoint was trained with (saved in its `config.json`)."""
    saved = getattr(model.config, CONFIG_KEY, None)
    if saved is None:
        raise ValueError(
            f"This model has no `{CONFIG_KEY}` entry in its config: it was not trained with PCL (or was saved without "
            "`pcl.marker.prepare_model`), so its marker and score format are unknown."
        )
    # The entry also carries trainer facts (e.g. `readout_temperature`) next to the format's own fields
    known = {f.name for f in fields(SegmentFormat)}
    return SegmentFormat(**{k: tuple(v) if k == "reward_range" else v for k, v in saved.items() if k in known})


def readout_temperature(model: PreTrainedModel) -> float:
    """Temperature the score logits were trained at (PCL-GRPO records its sampling temperature), default 1.0."""
    saved = getattr(model.config, CONFIG_KEY, None) or {}
    return float(saved.get("readout_temperature", 1.0))


def load_pcl_model(
    path: str, base_model: str | None = None, **model_kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, SegmentTokens]:
    """Load a PCL checkpoint for deployment or introspection, refusing ones whose marker setup is broken.

    A PEFT adapter directory saved by a PCL trainer loads onto its base model (`base_model`, default the adapter's
    `base_model_name_or_path`) as a `PeftModel`; see `pcl.adapters.load_adapter`.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No model directory at {path!r}.")
    files = set(os.listdir(path))
    if "adapter_config.json" in files:
        from .adapters import load_adapter  # PEFT is optional

        return load_adapter(path, base_model, **model_kwargs)
    missing = [f for f in ("config.json", "generation_config.json") if f not in files]
    if not any(f.endswith(".safetensors") or (f.startswith("pytorch_model") and f.endswith(".bin")) for f in files):
        missing.append("model weights (*.safetensors)")
    if not any(f.startswith("tokenizer") for f in files):
        missing.append("tokenizer files (tokenizer.json / tokenizer_config.json)")
    if missing:
        raise FileNotFoundError(f"{path!r} is not a complete checkpoint: missing {', '.join(missing)}.")
    with open(os.path.join(path, "config.json")) as f:
        saved = json.load(f).get(CONFIG_KEY)
    if saved is None:
        raise ValueError(f"{path!r} was not trained with PCL: its config.json has no `{CONFIG_KEY}` entry.")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if saved["marker"] not in tokenizer.get_vocab():
        raise ValueError(
            f"The tokenizer saved in {path!r} lacks the marker {saved['marker']!r}: it would be split into ordinary "
            "tokens. Save the tokenizer the PCL trainer used (the trainer saves it with each checkpoint)."
        )
    model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
    fmt = format_of(model)
    tokens = segment_tokens(tokenizer, fmt, model)
    gen_eos = model.generation_config.eos_token_id
    if tokens.marker_id not in id_list(gen_eos):
        raise ValueError(
            f"The generation config in {path!r} does not list the marker id {tokens.marker_id} as an EOS id, so "
            "generation would write the self-assessment. Re-save with `pcl.marker.prepare_model`."
        )
    return model, tokenizer, tokens
