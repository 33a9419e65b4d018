# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Saved PCL checkpoints carry a model card: TRL's (trainer name, paper, citation) plus PCL's section (marker, levels,
readout temperature, how to read the self-score), in every saved directory."""

import inspect
import re

from conftest import addition_rows, cpu_args
from datasets import Dataset
from trl.trainer.base_trainer import _BaseTrainer

from pcl import PCLGRPOConfig, PCLGRPOTrainer, PCLSFTConfig, PCLSFTTrainer
from pcl.readout import self_scores


def test_trl_card_hooks_are_as_expected():
    """What `PCLModelCard` relies on: TRL's `create_model_card(model_name, dataset_name, tags)` writing
    `args.output_dir/README.md`, and transformers' `save_model(output_dir, _internal_call)`."""
    assert list(inspect.signature(_BaseTrainer.create_model_card).parameters) == [
        "self", "model_name", "dataset_name", "tags",
    ]  # fmt: skip
    assert 'os.path.join(self.args.output_dir, "README.md")' in inspect.getsource(_BaseTrainer.create_model_card)
    assert list(inspect.signature(_BaseTrainer.save_model).parameters) == ["self", "output_dir", "_internal_call"]


def card_python(card: str) -> str:
    """The Python block of the card's PCL section (TRL's own "Quick start" block comes before it)."""
    return re.findall(r"```python\n(.*?)```", card.split("## Post-Completion Learning (PCL)")[1], re.S)[0]


def test_sft_checkpoint_and_final_model_carry_the_card(tiny_model, tokenizer, tmp_path):
    out = tmp_path / "run"
    args = PCLSFTConfig(output_dir=str(out), per_device_train_batch_size=8, self_assessment_levels=5,
                        **{**cpu_args(max_steps=2), "save_strategy": "steps", "save_steps": 2})  # fmt: skip
    trainer = PCLSFTTrainer(tiny_model, args, train_dataset=Dataset.from_list(addition_rows(16)),
                            processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.save_model()
    marker_id = tokenizer.convert_tokens_to_ids("<|post_completion|>")
    for directory in (out / "checkpoint-2", out):
        card = (directory / "README.md").read_text()
        # TRL's card: the trainer, the paper and its citation, PCL's tag
        assert "This model was trained with PCL-SFT, a method introduced in [Post-Completion Learning for Language " \
               "Models](https://huggingface.co/papers/2507.20252)" in card  # fmt: skip
        assert "eprint       = {arXiv:2507.20252}" in card and "- pcl" in card.split("---")[1]
        # PCL's section, once, before TRL's training details
        assert card.count("## Post-Completion Learning (PCL)") == 1
        assert card.index("## Quick start") < card.index("## Post-Completion Learning") < card.index("## Training")
        assert f"| Marker | `<|post_completion|>` (token id {marker_id}) |" in card
        assert "| Score levels | 5 (level k means a normalised reward of k / 4) |" in card
        assert "| Readout temperature | 1 |" in card and "| Reward range | [0, 1] (normalised to [0, 1]) |" in card
        # The snippet loads the directory the card is in (`out` holds no model until the final save)
        assert f'load_pcl_model("{directory}")' in card_python(card)
    # The card's snippet runs as written on the saved model (a shorter generation for the tiny model)
    namespace = {}
    exec(card_python(card).replace("max_new_tokens=64", "max_new_tokens=4"), namespace)
    assert f'load_pcl_model("{out}")' in card_python(card) and len(namespace["out"]) == 1
    (score,) = self_scores(namespace["model"], namespace["tokenizer"], ["What is 12 + 7?"], [namespace["out"][0].text])
    assert 0.0 <= score <= 1.0


def test_grpo_card_in_a_model_saved_elsewhere(model_dir, tokenizer, tmp_path):
    args = PCLGRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=4,
                         max_completion_length=8, log_completions=False, temperature=0.7,
                         hub_model_id="someone/pcl-model", **cpu_args(max_steps=1))  # fmt: skip
    prompts = Dataset.from_list([{"prompt": f"{a} + 1 ="} for a in range(4)])
    trainer = PCLGRPOTrainer(model_dir, reward_funcs=lambda completions, **kw: [1.0] * len(completions), args=args,
                             train_dataset=prompts, processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.save_model(str(tmp_path / "elsewhere"))
    card = (tmp_path / "elsewhere" / "README.md").read_text()
    assert "This model was trained with PCL-GRPO" in card and "2507.20252" in card
    assert "| Readout temperature | 0.7 |" in card  # the sampling temperature the score was trained at
    code = card_python(card)
    assert 'load_pcl_model(snapshot_download("someone/pcl-model"))' in code
    assert "from huggingface_hub import snapshot_download" in code
    assert card == (tmp_path / "run" / "README.md").read_text()


def test_card_beside_a_model_saved_elsewhere_runs_there_and_keeps_a_users_readme(tiny_model, tokenizer, tmp_path):
    args = PCLSFTConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, **cpu_args(max_steps=1))
    trainer = PCLSFTTrainer(tiny_model, args, train_dataset=Dataset.from_list(addition_rows(8)),
                            processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.save_model(str(tmp_path / "elsewhere"))
    code = card_python((tmp_path / "elsewhere" / "README.md").read_text())
    assert f'load_pcl_model("{tmp_path / "elsewhere"}")' in code
    namespace = {}
    exec(code.replace("max_new_tokens=64", "max_new_tokens=4"), namespace)  # runs on the model beside the card
    assert len(namespace["out"]) == 1
    trainer.save_model(str(tmp_path / "elsewhere"))  # a generated card is replaced
    assert (tmp_path / "elsewhere" / "README.md").read_text().count("## Post-Completion Learning (PCL)") == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("# My notes on this model\n")
    trainer.save_model(str(tmp_path / "mine"))  # the user's README stays, as TRL leaves it
    assert (tmp_path / "mine" / "README.md").read_text() == "# My notes on this model\n"
    assert (tmp_path / "mine" / "config.json").is_file() and "## Post-Completion" in (
        tmp_path / "run" / "README.md"
    ).read_text()
    # In output_dir too: with save_strategy "no" TRL writes no card there, so a README of the user's stays
    (tmp_path / "run" / "README.md").write_text("# Run notes\n")
    trainer.save_model()
    trainer.save_model(str(tmp_path / "again"))  # a card elsewhere still gets made from TRL's
    assert (tmp_path / "run" / "README.md").read_text() == "# Run notes\n"
    assert f'load_pcl_model("{tmp_path / "again"}")' in card_python((tmp_path / "again" / "README.md").read_text())


def test_grpo_card_states_an_auto_reward_mapping(model_dir, tokenizer, tmp_path):
    """Auto mode with two rewards, one of them on [0, 2]: the score predicts their mapped, weighted sum, not a reward
    in the config's [0, 1], and the card says so (the ranges as the run saw them)."""

    def correct(completions, **kwargs):
        return [1.0] * len(completions)

    def stars(completions, **kwargs):
        return [2.0] * len(completions)

    args = PCLGRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, num_generations=4,
                         max_completion_length=8, log_completions=False, **cpu_args(max_steps=1))  # fmt: skip
    prompts = Dataset.from_list([{"prompt": f"{a} + 1 ="} for a in range(4)])
    trainer = PCLGRPOTrainer(model_dir, reward_funcs=[correct, stars], args=args, train_dataset=prompts,
                             processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "run" / "README.md").read_text()
    assert ("| Reward range | auto: each reward mapped to [0, 1] (`correct` by its range [0, 1], `stars` by its range "
            "[0, 2]), their sum weighted by [1, 1] normalised by the weights' bounds |") in card  # fmt: skip


def test_adapter_directory_gets_the_card(model_dir, tmp_path):
    """PEFT's `save_pretrained` writes a README.md of its own into an adapter directory: that generated card is
    replaced by the PCL card (only a README.md that was there before the save, the user's, is kept)."""
    from peft import LoraConfig

    args = PCLSFTConfig(output_dir=str(tmp_path / "sft"), **cpu_args(max_steps=1, per_device_train_batch_size=8))
    trainer = PCLSFTTrainer(model_dir, args=args, train_dataset=Dataset.from_list(addition_rows(8)),
                            peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))  # fmt: skip
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "## Post-Completion Learning (PCL)" in card
    assert f'load_pcl_model("{tmp_path / "adapter"}")' in card_python(card)
    namespace = {}
    exec(card_python(card).replace("max_new_tokens=64", "max_new_tokens=4"), namespace)  # the adapter on its base
    assert type(namespace["model"]).__name__ == "PeftModel" and 0 <= namespace["out"][0].self_score <= 1
