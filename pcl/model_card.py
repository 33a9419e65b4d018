# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The model card of a PCL checkpoint: TRL's card (which names the trainer and cites the paper through the trainer's
`_name` and `_paper`), followed by a section a user of the checkpoint needs: the marker, the score levels and reward
range, the readout temperature, and how to read the self-score.

TRL writes its card only into `args.output_dir` (from `_save_checkpoint` and `push_to_hub`), so a checkpoint
directory, or a model saved elsewhere with `save_model(path)`, would carry none; `PCLModelCard.save_model` writes it
beside every saved model (its snippet loading that directory), but leaves a README.md there that is not a generated
model card (the user's own) as it is. `push_to_hub` is TRL's, unchanged: it calls `create_model_card`, which adds the section.
"""

import logging
from pathlib import Path

from .marker import format_of, readout_temperature, text_tokenizer


logger = logging.getLogger(__name__)

__all__ = ["PCLModelCard", "pcl_card_section"]

SECTION_TITLE = "## Post-Completion Learning (PCL)"


def _auto_reward_range(targets) -> str | None:
    """PCL-GRPO's auto mapping of rewards to the score, when it is not the identity on one reward in [0, 1] (the
    config's `reward_range` is then (0, 1), the mapped range, which alone would misstate what the score predicts)."""
    if targets is None or not targets.auto:
        return None
    if len(targets.names) == 1 and not targets.is_model[0] and list(targets.ranges[0]) == [0.0, 1.0]:
        return None
    funcs = ", ".join(
        f"`{name}` through a sigmoid" if is_model else f"`{name}` by its range [{lo:g}, {hi:g}]"
        for name, is_model, (lo, hi) in zip(targets.names, targets.is_model, targets.ranges, strict=True)
    )
    weights = ", ".join(f"{w:g}" for w in targets.weights.tolist())
    return (f"auto: each reward mapped to [0, 1] ({funcs}), their sum weighted by [{weights}] normalised by the "
            "weights' bounds")  # fmt: skip


def pcl_card_section(model, tokenizer, load_from: str, hub_model_id: str | None = None, reward_targets=None) -> str:
    """The card's PCL section, from the format saved in the model's config; the snippet loads `hub_model_id` (through
    `snapshot_download`) when given, else the directory `load_from`. `reward_targets` (PCL-GRPO's
    `pcl.reward_targets.RewardTargets`) describes an auto reward mapping."""
    fmt = format_of(model)
    lo, hi = fmt.reward_range
    reward_range = _auto_reward_range(reward_targets) or f"[{lo:g}, {hi:g}] (normalised to [0, 1])"
    marker_id = tokenizer.convert_tokens_to_ids(fmt.marker)
    if hub_model_id:
        imports, path = "from huggingface_hub import snapshot_download\n", f'snapshot_download("{hub_model_id}")'
    else:
        imports, path = "", f'"{load_from}"'
    prefix = f"`{fmt.prefix}`" if fmt.prefix else "none"
    return f"""{SECTION_TITLE}

This model was trained with Post-Completion Learning ([Post-Completion Learning for Language
Models](https://huggingface.co/papers/2507.20252), arXiv 2507.20252) using `pcl`, a TRL plugin. In training it
wrote, after each answer, `MARKER [prefix] SCORE EOS`, where SCORE predicts the reward of its own answer. The marker
is an EOS id in `generation_config.json`, so generation stops at it: the self-assessment is never generated at
inference and costs nothing. The self-score is read from the model's distribution over the score levels right after
`answer MARKER [prefix]`.

| | |
|---|---|
| Marker | `{fmt.marker}` (token id {marker_id}) |
| Score levels | {fmt.levels} (level k means a normalised reward of k / {fmt.levels - 1}) |
| Reward range | {reward_range} |
| Prefix after the marker | {prefix} |
| Readout temperature | {readout_temperature(model):g} |

Read the self-score (`pip install` the `pcl` package):

```python
{imports}from pcl.inference import generate
from pcl.marker import load_pcl_model

model, tokenizer, tokens = load_pcl_model({path})
out = generate(model, tokenizer, ["What is 12 + 7?"], max_new_tokens=64, self_score=True)
print(out[0].text, out[0].self_score)  # the answer, and its predicted reward in [0, 1]
```

`pcl.readout.self_scores(model, tokenizer, prompts, answers)` scores answers that were generated elsewhere (e.g. by
vLLM, which stops at the marker through the same generation config).
"""


class PCLModelCard:
    """Mixin of the PCL trainers (listed before the TRL trainer): overrides `create_model_card` (TRL's card, with
    [`pcl_card_section`] before its "Training procedure") and `save_model` (TRL's, plus the card in the saved
    directory, whose snippet loads that directory). Nothing else."""

    def _pcl_section(self, load_from: str) -> str:
        return pcl_card_section(self.model, text_tokenizer(self.processing_class), load_from, self.args.hub_model_id,
                                getattr(self, "_pcl_reward_targets", None))  # fmt: skip

    def _with_pcl_section(self, card: str, load_from: str) -> str:
        section = self._pcl_section(load_from)
        # Before TRL's training details and citations, where a reader of the card looks for how to use the model
        anchor = "\n## Training procedure"
        return card.replace(anchor, f"\n{section}{anchor}", 1) if anchor in card else f"{card.rstrip()}\n\n{section}"

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        readme = Path(self.args.output_dir) / "README.md"
        card = readme.read_text(encoding="utf-8")  # written afresh by TRL just now
        readme.write_text(self._with_pcl_section(card, self.args.output_dir), encoding="utf-8")

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        target, own = Path(output_dir or self.args.output_dir), Path(self.args.output_dir)
        # Read before saving: PEFT's `save_pretrained` writes or updates a README.md of its own there
        users = {}
        for readme in (target / "README.md", own / "README.md"):
            if readme.is_file() and not _generated_card(text := readme.read_text(encoding="utf-8")):
                users[readme.resolve()] = text
        super().save_model(output_dir, _internal_call)
        if not self.is_world_process_zero():
            return
        name = self.args.hub_model_id.split("/")[-1] if self.args.hub_model_id else own.name
        self.create_model_card(model_name=name)  # like TRL's `_save_checkpoint`: into args.output_dir
        if target.resolve() != own.resolve():
            # TRL's card as written for args.output_dir, with the snippet loading the directory the card is in
            card = (own / "README.md").read_text(encoding="utf-8")
            card = card.replace(self._pcl_section(self.args.output_dir), self._pcl_section(str(target)), 1)
            (target / "README.md").write_text(card, encoding="utf-8")
        for readme, text in users.items():  # TRL's `save_model` writes no card: a README of the user's stays theirs
            readme.write_text(text, encoding="utf-8")
            logger.warning(f"{readme} is not a generated model card: left as it is (no PCL model card there).")


def _generated_card(text: str) -> bool:
    """Whether a README.md is a card a trainer wrote (TRL's and transformers' carry `generated_from_trainer`; PCL's its
    section), not the user's own."""
    return "generated_from_trainer" in text or SECTION_TITLE in text
