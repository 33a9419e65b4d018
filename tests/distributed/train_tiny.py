# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Train PCLSFTTrainer or PCLGRPOTrainer on a tiny character-level Llama (pcl.tiny), for the distributed and resume
tests. Runs as one process or under `accelerate launch`:

    python tests/distributed/train_tiny.py sft /tmp/out
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no tests/distributed/train_tiny.py grpo /tmp/out
    accelerate launch --config_file recipes/accelerate/zero3_cpu.yaml tests/distributed/train_tiny.py sft /tmp/out \
        --no-marker

The base model (hidden 32, 2 layers) is built in `--base` (default OUTPUT_DIR/base) unless it is there already; it is
loaded by path, so under ZeRO-3 it is partitioned as it loads. `--no-marker` builds its tokenizer without the marker,
so the trainer adds it and resizes the embeddings; `--lora` trains a LoRA adapter. `--config '{"max_steps": 4}'` overrides any config field. At the
end the model is saved with `trainer.save_model(OUTPUT_DIR/final)` and the main process writes `--result` (default
OUTPUT_DIR/result.json): the trainer's `state.log_history`, the global step, the world size and a checksum of the
saved parameters.
"""

import argparse
import json
import os
import sys
import time


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402

from pcl import PCLGRPOConfig, PCLGRPOTrainer, PCLSFTConfig, PCLSFTTrainer  # noqa: E402
from pcl.segment import DEFAULT_MARKER  # noqa: E402
from pcl.tiny import build_char_tokenizer, build_tiny_model  # noqa: E402


def build_base(path: str, marker: bool = True) -> None:
    """Save the tiny base model and its tokenizer (with or without the marker) to `path`."""
    tokenizer = build_char_tokenizer(marker=DEFAULT_MARKER if marker else None)
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    tmp = f"{path}.tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, path)  # atomic: other processes never see a half-written directory


def sft_rows() -> list[dict]:
    # Some rows without a reward: they train `completion MARKER` only
    return [
        {"prompt": f"{a} + {b} =", "completion": f" {a + b}", "reward": None if (a + b) % 5 == 0 else float(a < 4)}
        for a in range(8)
        for b in range(4)
    ]


def grpo_rows() -> list[dict]:
    return [{"prompt": f"{a} + {b} ="} for a in range(8) for b in range(4)]


def digit_reward(completions, **kwargs):
    # Fraction of digits: mixed rewards (and score levels) on an untrained model, so advantages are non-zero
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def saved_params(path: str) -> dict[str, torch.Tensor]:
    params = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            params.update(load_file(os.path.join(path, name)))
    return params


class PauseAfterSave(TrainerCallback):
    """Sleeps after the checkpoint of step `step` is complete, so a test can kill the process there."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            print(f"PAUSED after checkpoint-{self.step}", flush=True)  # noqa: T201
            time.sleep(600)


class RecordOptimizerState(TrainerCallback):
    """Records the optimizer state seen by the first optimisation step of this process (restored when resuming)."""

    def __init__(self):
        self.record = None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        # Single-process runs only: a ZeRO optimizer's state_dict is partitioned across ranks
        if self.record is not None or optimizer is None or args.world_size > 1:
            return
        opt_state = optimizer.state_dict().get("state", {})
        self.record = {
            "global_step": state.global_step,
            "num_tensors": len(opt_state),
            "exp_avg_abs_sum": sum(float(s["exp_avg"].abs().sum()) for s in opt_state.values() if "exp_avg" in s),
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trainer", choices=["sft", "grpo"])
    parser.add_argument("output_dir")
    parser.add_argument("--base", default=None, help="Base model directory (built if missing).")
    parser.add_argument("--no-marker", action="store_true", help="Build the base tokenizer without the marker.")
    parser.add_argument("--lora", action="store_true", help="Train a LoRA adapter (`peft_config`).")
    parser.add_argument("--config", type=json.loads, default={}, help="JSON dict of config overrides.")
    parser.add_argument("--resume", nargs="?", const=True, default=None, help="resume_from_checkpoint (path or last).")
    parser.add_argument(
        "--pause-after-save", type=int, default=None, help="Sleep after saving this step's checkpoint."
    )
    parser.add_argument("--result", default=None, help="JSON result file (default OUTPUT_DIR/result.json).")
    args = parser.parse_args(argv)

    common = dict(
        output_dir=args.output_dir, bf16=False, report_to="none", logging_steps=1, max_steps=3, seed=0,
        save_strategy="no", gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
        learning_rate=1e-3, per_device_train_batch_size=4,
    )  # fmt: skip
    # CPU processes talk over gloo; DeepSpeed on CPU needs it named (PartialState finds no backend otherwise)
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        common["ddp_backend"] = "gloo"
    if args.trainer == "sft":
        config = PCLSFTConfig(**{**common, "max_length": 32, **args.config})
    else:
        config = PCLGRPOConfig(
            **{**common, "num_generations": 4, "max_completion_length": 8, "log_completions": False, **args.config}
        )

    base = args.base or os.path.join(args.output_dir, "base")
    # The local main process builds the base; the others wait for it (by rank, not by the process group, so this
    # also holds when a misconfigured launch leaves each process with a world of its own)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        if not os.path.isdir(base):
            build_base(base, marker=not args.no_marker)
    else:
        deadline = time.monotonic() + 300
        while not os.path.isdir(base):
            if time.monotonic() > deadline:
                raise TimeoutError(f"The local main process did not build the base model in {base}.")
            time.sleep(0.2)
    tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
    if args.trainer == "grpo" and "generation_kwargs" not in args.config:
        # An untrained model rarely stops within 8 tokens, and truncated rollouts get no segment: force the last
        # token to EOS so every step has segments to train (rollouts that stop earlier are unchanged)
        config.generation_kwargs = {"forced_eos_token_id": tokenizer.eos_token_id}

    recorder = RecordOptimizerState()
    callbacks = [recorder] + ([PauseAfterSave(args.pause_after_save)] if args.pause_after_save else [])
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    if args.trainer == "sft":
        trainer = PCLSFTTrainer(
            model=base, args=config, train_dataset=Dataset.from_list(sft_rows()), processing_class=tokenizer,
            callbacks=callbacks, peft_config=peft_config,
        )  # fmt: skip
    else:
        trainer = PCLGRPOTrainer(
            model=base, reward_funcs=digit_reward, args=config, train_dataset=Dataset.from_list(grpo_rows()),
            processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config,
        )  # fmt: skip
    resume = args.resume
    if resume in ("true", "True"):
        resume = True
    trainer.train(resume_from_checkpoint=resume)
    final = os.path.join(args.output_dir, "final")
    trainer.save_model(final)
    trainer.accelerator.wait_for_everyone()

    if trainer.accelerator.is_main_process:
        params = saved_params(final)
        # An adapter (--lora) saves no embedding matrix
        embed = next((v for k, v in params.items() if k.endswith("embed_tokens.weight")), None)
        result = {
            "log_history": trainer.state.log_history,
            "global_step": trainer.state.global_step,
            "num_processes": trainer.accelerator.num_processes,
            "distributed_type": getattr(trainer.accelerator.distributed_type, "value", None),
            "marker_id": trainer.segment_tokens.marker_id,
            "len_tokenizer": len(tokenizer),
            "embedding_rows": None if embed is None else embed.shape[0],
            "checksum": sum(float(v.double().abs().sum()) for v in params.values()),
            "optimizer_at_first_step": recorder.record,
            "final_dir": final,
        }
        path = args.result or os.path.join(args.output_dir, "result.json")
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=1, default=str)
        os.replace(path + ".tmp", path)
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
