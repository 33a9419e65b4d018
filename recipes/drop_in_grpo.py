# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""A plain TRL GRPO script turned into PCL by swapping two class names (marked `# PCL`) and adding PCL options.

    # GPU, e.g. with the paper's setting:
    accelerate launch --config_file recipes/accelerate/zero3.yaml recipes/drop_in_grpo.py \
        --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --output_dir outputs/drop-in --use_vllm true \
        --self_assessment_weight 0.5
    # CPU smoke test with a tiny local model (no download):
    python recipes/drop_in_grpo.py --tiny true --output_dir outputs/drop-in --bf16 false --max_steps 5 \
        --per_device_train_batch_size 8 --num_generations 4 --max_completion_length 8

Everything else is TRL's own: `TrlParser`, `ModelConfig`, `ScriptArguments`, `GRPOTrainer`'s options and logging.
"""

from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser

from pcl import PCLGRPOConfig as GRPOConfig  # PCL
from pcl import PCLGRPOTrainer as GRPOTrainer  # PCL
from pcl.tasks import TaskSpec, load_task, make_reward_func


@dataclass
class TaskArguments:
    task: str = field(default="chain_sum", metadata={"help": "reasoning-gym dataset name (bundled, no download)."})
    task_size: int = field(default=2000, metadata={"help": "Number of training questions."})
    tiny: bool = field(default=False, metadata={"help": "Train a tiny model built locally instead of a hub model."})


def main():
    parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig, TaskArguments))
    script_args, training_args, model_args, task_args = parser.parse_args_and_config()
    task = TaskSpec(task_args.task, size=task_args.task_size, seed=training_args.seed)
    dataset = load_task(task)
    model, tokenizer = model_args.model_name_or_path, None
    if task_args.tiny:
        from pcl.tiny import build_char_tokenizer, build_tiny_model

        tokenizer = build_char_tokenizer()
        model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=make_reward_func(task),
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
