# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Self-label a recipe stage's task with a tiny model, as one process or under `accelerate launch`, for
test_self_labelling.py:

    python tests/distributed/self_label_tiny.py /tmp/out
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no tests/distributed/self_label_tiny.py /tmp/out

Runs the quickstart recipe's `assess` stage labelling twice: fresh, then resumed. Each rank writes
OUTPUT_DIR/rank{i}.json: the prompts it generated answers for and the answers it scored in each run (recorded around
`pcl.inference.generate` and the reward call), the rows it got back, and the world size.
"""

import json
import os
import sys
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from accelerate import PartialState  # noqa: E402

import pcl.inference  # noqa: E402
import pcl.self_labelling  # noqa: E402
from pcl.recipe import load_recipe  # noqa: E402
from pcl.self_labelling import cached_self_labelled_rows  # noqa: E402
from pcl.tiny import build_char_tokenizer, build_tiny_model  # noqa: E402


RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"


def labelled_stage(output_dir: str):
    """The quickstart's self-labelling stage, on 30 prompts with short answers."""
    argv = ["--output_dir", output_dir, "--stages.assess.self_labelled.task.size", "30",
            "--stages.assess.self_labelled.max_new_tokens", "3", "--stages.assess.self_labelled.batch_size", "4",
            "--use_cpu", "true", "--bf16", "false"]  # fmt: skip
    _, stages = load_recipe(str(RECIPE), argv)
    (stage,) = [s for s in stages if s.self_labelled is not None]
    return stage


def main(output_dir: str) -> None:
    stage = labelled_stage(output_dir)
    state = PartialState()
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)

    generated, scored = [], []
    real_generate, real_score = pcl.inference.generate, pcl.self_labelling.score_completions

    def recording_generate(model, tokenizer, prompts, **kwargs):
        generated[-1].extend(prompts)
        return real_generate(model, tokenizer, prompts, **kwargs)

    def recording_score(func, data, completions):
        scored[-1].extend(zip(data["prompt"], completions, strict=True))
        return real_score(func, data, completions)

    pcl.inference.generate, pcl.self_labelling.score_completions = recording_generate, recording_score
    runs = []
    for resume in (False, True):
        generated.append([])
        scored.append([])
        runs.append(cached_self_labelled_rows(stage, model, tokenizer, resume=resume))
    with open(os.path.join(output_dir, f"rank{state.process_index}.json"), "w") as f:
        json.dump({"world": state.num_processes, "generated": generated, "scored": scored, "rows": runs}, f)


if __name__ == "__main__":
    main(sys.argv[1])
