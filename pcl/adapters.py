# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""PEFT adapters (LoRA, ...): the marker's embedding and LM-head rows trainable, saved, merged and synced to vLLM.

A marker that PCL adds to the vocabulary starts as a copy of EOS's rows, so a LoRA on attention/MLP alone could never
tell the two apart (their logits stay equal). It gets trainable rows the way TRL's `SFTTrainer` treats the tokens
`clone_chat_template` adds: the marker id joins `trainable_token_indices` of the input embeddings, and the LM head
joins `modules_to_save`. A model with tied embeddings keeps them tied: PEFT ties the LM-head row to the trainable
embedding row, and the head is not copied. The user's config is copied, never mutated. The score levels are existing
tokens (digits), read through the same LM head, so the adapter learns them without extra rows. A marker that already
is a token of the base model (a reserved special token) is left to the user's config.
"""

import contextlib
import copy
import json
import logging
import os

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .marker import CONFIG_KEY, embedding_rows, format_of, resize_for_marker, resize_instance, segment_tokens
from .segment import SegmentTokens


logger = logging.getLogger(__name__)


def is_peft_model(model) -> bool:
    """Whether `model` is wrapped by PEFT (it has `get_base_model`, as `PeftModel` has)."""
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def unwrapped(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model under a PEFT wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _module_path(model: torch.nn.Module, module: torch.nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _entry_for(path: str, names) -> str | None:
    """The entry of `names` (`modules_to_save`, `trainable_token_indices` keys) that names the module at `path`,
    matched as PEFT matches them: by the end of the module's path."""
    return next((name for name in names or [] if path.endswith(name)), None)


def _with_row(indices, path: str, marker_id: int):
    """`trainable_token_indices` with the marker among the rows of the layer at `path` (a list: the input
    embeddings')."""
    if isinstance(indices, dict):
        key = _entry_for(path, indices) or path.rsplit(".", 1)[-1]
        rows = indices.get(key, [])
        return {**indices, key: rows if marker_id in rows else [*rows, marker_id]}
    if indices is None:
        return {path.rsplit(".", 1)[-1]: [marker_id]}
    return indices if marker_id in indices else [*indices, marker_id]


def _adapted(config, path: str) -> bool:
    """Whether the PEFT `config` puts an adapter (e.g. a LoRA) on the module at `path`."""
    from peft.tuners.tuners_utils import check_target_module_exists

    return bool(getattr(config, "target_modules", None)) and bool(check_target_module_exists(config, path))


def train_marker_rows(config, model: PreTrainedModel, marker_id: int):
    """A copy of the PEFT `config` under which the marker's input-embedding and LM-head rows of `model` train.

    Like TRL's SFTTrainer for added tokens: the marker id joins `trainable_token_indices` (of the input embeddings),
    and an untied LM head joins `modules_to_save` (TRL's fused LM head reads `lm_head.weight` directly, which a
    `modules_to_save` copy serves trainable). With tied embeddings PEFT ties the head's row to the embedding's. What
    the config trains already is kept as it is (PEFT refuses a layer both in `modules_to_save` and with trainable
    tokens): a fully trained layer (`modules_to_save`) holds the marker's row, and a head with trainable tokens of
    its own gets the marker among them instead of a full copy. Input embeddings with a LoRA of their own (in
    `target_modules`) learn the marker's row through it (PEFT cannot add trainable tokens there); with tied embeddings
    that LoRA does not reach the head, whose marker row would stay EOS's, which is refused.
    """
    if not hasattr(config, "trainable_token_indices"):
        raise ValueError(
            f"The marker is a new token, so its embedding and LM-head rows must train, which {type(config).__name__} "
            "cannot do (it has no `trainable_token_indices`). Use `peft.LoraConfig`, or set `self_assessment_marker` "
            "to an existing special (e.g. reserved) token of the base model."
        )
    config = copy.deepcopy(config)
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    embed_path = _module_path(model, embed)
    indices = config.trainable_token_indices

    embed_adapted = _adapted(config, embed_path)
    tied = head is not None and head.weight is embed.weight
    if tied and embed_adapted:
        raise ValueError(
            f"`target_modules` puts an adapter on the input embeddings ({embed_path!r}), which are tied to the LM head: "
            "the new marker's output row would stay a copy of EOS's, so the model could never prefer the marker. "
            f"Remove {embed_path.rsplit('.', 1)[-1]!r} from `target_modules` (PCL trains the marker's rows as trainable "
            "tokens), or set `self_assessment_marker` to an existing special (e.g. reserved) token of the base model."
        )
    if _entry_for(embed_path, config.modules_to_save) is None and not embed_adapted:
        indices = _with_row(indices, embed_path, marker_id)
    if head is not None and not tied:
        head_path = _module_path(model, head)
        if isinstance(indices, dict) and _entry_for(head_path, indices) is not None:
            indices = _with_row(indices, head_path, marker_id)
        elif _entry_for(head_path, config.modules_to_save) is None:
            config.modules_to_save = [*(config.modules_to_save or []), head_path.rsplit(".", 1)[-1]]
    config.trainable_token_indices = indices
    logger.info(
        "PCL: the new marker's rows train with the adapter: trainable_token_indices=%s, modules_to_save=%s.",
        config.trainable_token_indices,
        config.modules_to_save,
    )
    return config


@contextlib.contextmanager
def marker_rows(
    module,
    model,
    tokenizer: PreTrainedTokenizerBase,
    tokens: SegmentTokens,
    peft_config=None,
    marker_added: bool = False,
    train_rows: bool = True,
):
    """Within the block (the parent trainer's `__init__`), the policy gets its marker rows before anything wraps it.

    A model instance is resized for a newly added marker now; models that `module.create_model_from_path` loads (TRL's
    policy and reference models) as they are created, before TRL wraps them (PEFT, DeepSpeed, FSDP), which a resize
    cannot follow. Yields the `peft_config` to hand to the parent: a copy with the marker's rows trainable when the
    marker is new to the model (`marker_added`: PCL added it to the tokenizer; or the model needed a resize) and the
    trainer trains the segment (`train_rows`; at weight 0 the config is used as given, so that the trained parameters
    are the parent's: an LM-head copy would otherwise train on the answers alone).
    """
    config = None if peft_config is None else copy.deepcopy(peft_config)
    filled = []

    def ready(model: PreTrainedModel) -> None:
        new = marker_added or len(tokenizer) > embedding_rows(model)
        resize_for_marker(model, tokenizer, tokens, new_marker=new)
        if config is not None and new and train_rows and not filled:
            # The parent wraps the model right after creating it: fill the config it was handed, in place
            config.__dict__.update(train_marker_rows(config, model, tokens.marker_id).__dict__)
            filled.append(True)

    if not isinstance(model, str):
        if is_peft_model(model):
            resize_instance(model, tokenizer, tokens)  # refuses a PEFT model that would need a resize
        else:
            ready(model)
        yield config
        return
    original = module.create_model_from_path

    def create(*args, **kwargs):
        created = original(*args, **kwargs)
        ready(created)
        return created

    module.create_model_from_path = create
    try:
        yield config
    finally:
        module.create_model_from_path = original


def expose_head_bias(model: torch.nn.Module) -> None:
    """Give an LM head wrapped by PEFT's trainable tokens (tied embeddings) the `bias` TRL's fused LM head reads.

    The wrapper serves `weight` (with the trained rows) but raises on `bias`; the bias is the wrapped layer's (`None`
    for the usual bias-free head), set on the instance so that nothing is registered twice.
    """
    head = unwrapped(model).get_output_embeddings()
    if head is not None and not hasattr(head, "bias") and hasattr(head, "original_module"):
        object.__setattr__(head, "bias", head.original_module.bias)


# ---- saving and loading an adapter ----------------------------------------------------------------------------------

# An adapter directory holds no `config.json` (transformers would take it for a complete model): the segment format is
# saved beside the adapter in this file, and the generation config (the marker among the EOS ids) as usual
FORMAT_FILE = f"{CONFIG_KEY}.json"


def save_adapter_format(model: torch.nn.Module, output_dir: str) -> None:
    """Next to a saved adapter, the PCL facts the base model's config carries: the segment format (`FORMAT_FILE`)
    and the generation config that stops at the marker. Does nothing for a model not wrapped by PEFT."""
    if not is_peft_model(model):
        return
    base = unwrapped(model)
    saved = getattr(base.config, CONFIG_KEY, None)
    if saved is None:
        return
    base.generation_config.save_pretrained(output_dir)
    with open(os.path.join(output_dir, FORMAT_FILE), "w") as f:
        json.dump(saved, f, indent=2)


def load_adapter(path: str, base_model: str | None = None, **model_kwargs):
    """Load a PCL adapter directory onto its base model: `(PeftModel, tokenizer, SegmentTokens)`.

    The base model is `base_model`, else the adapter's `base_model_name_or_path`. It is resized for a newly added
    marker as in training (the adapter then restores the trained rows), and gets the saved format and generation
    config, so it stops at the marker and the readout finds its levels. `merge_and_unload()` gives a plain model that
    saves as a complete PCL checkpoint.
    """
    from peft import PeftModel

    files = set(os.listdir(path))
    missing = [f for f in (FORMAT_FILE, "generation_config.json") if f not in files]
    if not any(f.startswith("tokenizer") for f in files):
        missing.append("tokenizer files (tokenizer.json / tokenizer_config.json)")
    if missing:
        raise FileNotFoundError(
            f"{path!r} is a PEFT adapter but not a PCL one: missing {', '.join(missing)}. Save it with a PCL trainer "
            "(`trainer.save_model()`), or merge the adapter (`merge_and_unload()`) and save the merged model."
        )
    with open(os.path.join(path, "adapter_config.json")) as f:
        base_model = base_model or json.load(f).get("base_model_name_or_path")
    if not base_model:
        raise ValueError(f"The adapter in {path!r} does not name its base model: pass `base_model=` (a path or id).")
    with open(os.path.join(path, FORMAT_FILE)) as f:
        saved = json.load(f)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(base_model, **model_kwargs)
    setattr(model.config, CONFIG_KEY, saved)
    model.generation_config = GenerationConfig.from_pretrained(path)
    tokens = segment_tokens(tokenizer, format_of(model), model)
    resize_for_marker(model, tokenizer, tokens)
    return PeftModel.from_pretrained(model, path), tokenizer, tokens


# ---- vLLM weight sync -----------------------------------------------------------------------------------------------


def fix_vllm_sync_names(vllm_generation) -> None:
    """Make TRL's vLLM weight sync of a PEFT model send a trainable marker row under names vLLM knows.

    TRL merges the adapter and renames PEFT's parameters (drops `base_model.model.` and `.base_layer`, skips `lora_*`
    and `original_module`, unwraps `modules_to_save.default.`), but PEFT's trainable tokens are left as
    `model.embed_tokens.token_adapter.weight` plus the raw `...trainable_tokens_delta.default`, which vLLM's
    `load_weights` rejects. Their merged weight (the trained marker row included) goes as `model.embed_tokens.weight`;
    the delta and the saved originals are not sent.
    """
    original = vllm_generation._iter_named_params

    def named_params():
        for name, param in original():
            if ".trainable_tokens_" in name:
                continue  # merged into the weight already
            yield name.replace(".token_adapter", ""), param

    vllm_generation._iter_named_params = named_params
