# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""The calibration benchmark's results, sent to the experiment trackers a recipe's `report_to` names.

During training the `self_assessment/*` metrics reach every tracker through TRL's metric logging (they are logged like
TRL's own); the benchmark runs after the last trainer is gone, so `pcl train` sends its headline numbers and pictures
here: one scalar per split, subset, confidence source and metric (`calibration/heldout/unseen/pcl_expected/auroc`),
each split's accuracy, and the reliability diagrams and risk-coverage curve as images.

TensorBoard gets them under `$TENSORBOARD_LOGGING_DIR` (where transformers' callback writes too) or
`<output_dir>/runs/calibration`; wandb and trackio get a run of their own (or the active wandb run) through their
`init` / `log` / `Image` API. A tracker named in `report_to` that is not installed, or that PCL does not know, is
skipped with a warning: the numbers are in `metrics.json` either way.
"""

import importlib.util
import logging
import math
import os
from collections.abc import Sequence
from typing import Any


logger = logging.getLogger(__name__)

__all__ = ["HEADLINE_METRICS", "IMAGES", "calibration_scalars", "log_calibration"]

HEADLINE_METRICS = ("ece_10", "brier", "auroc", "aurc")
# The benchmark's pictures (pcl.plots), by tracker tag
IMAGES = {
    "calibration/reliability_pcl": "reliability_pcl.png",
    "calibration/reliability_all": "reliability_all.png",
    "calibration/risk_coverage": "risk_coverage.png",
}


def calibration_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a `run_calibration` result, flat: `calibration/<split>/<subset>/<source>/<metric>`
    for each split (`heldout`, and `shifted` when measured) and subset (`full`, `unseen`), plus each split's
    `accuracy` and `n`. Undefined values (e.g. AUROC when every answer is right) are left out."""
    out: dict[str, float] = {}
    splits = [("heldout", metrics)] + ([("shifted", metrics["shifted"])] if metrics.get("shifted") else [])
    for split, m in splits:
        for key in ("accuracy", "accuracy_unseen", "n"):
            if m.get(key) is not None:
                out[f"calibration/{split}/{key}"] = float(m[key])
        for subset, sources in (m.get("sources") or {}).items():
            for source, report in sources.items():
                for name in HEADLINE_METRICS:
                    value = report.get(name)
                    if value is not None and math.isfinite(value):
                        out[f"calibration/{split}/{subset}/{source}/{name}"] = float(value)
    return out


def _images(calibration_dir: str) -> dict[str, str]:
    return {tag: os.path.join(calibration_dir, f) for tag, f in IMAGES.items()
            if os.path.isfile(os.path.join(calibration_dir, f))}  # fmt: skip


def _tensorboard(scalars: dict[str, float], images: dict[str, str], log_dir: str, step: int) -> None:
    import matplotlib.image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=log_dir)
    try:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        for tag, path in images.items():
            writer.add_image(tag, matplotlib.image.imread(path)[..., :3], step, dataformats="HWC")  # RGBA PNG -> RGB
    finally:
        writer.close()


def _run_api(name: str, scalars: dict[str, float], images: dict[str, str], project: str, run_name: str) -> None:
    """wandb and trackio share one API: `init(project=, name=)`, `log(dict)`, `Image(path)`, `finish()`."""
    module = importlib.import_module(name)
    active = getattr(module, "run", None) is not None  # wandb keeps the training's run open after `train()`
    if not active:
        module.init(project=project, name=run_name)
    try:
        module.log({**scalars, **{tag: module.Image(path) for tag, path in images.items()}})
    finally:
        if not active:
            module.finish()


def log_calibration(
    metrics: dict[str, Any], calibration_dir: str, report_to: Sequence[str], output_dir: str, step: int = 0
) -> list[str]:
    """Send a calibration result (`run_calibration`'s return value, its PNGs in `calibration_dir`) to the trackers
    in `report_to` (a `TrainingArguments.report_to` list); returns the trackers it was sent to.

    `output_dir` is the recipe's: TensorBoard writes under `<output_dir>/runs/calibration` unless
    `$TENSORBOARD_LOGGING_DIR` is set; wandb and trackio runs are named `<output_dir's name>-calibration` in the
    project their callbacks use (`$WANDB_PROJECT`, `$TRACKIO_PROJECT`, default `huggingface`).
    """
    trackers = [t for t in report_to if t != "none"]
    if not trackers:
        return []
    scalars, images = calibration_scalars(metrics), _images(calibration_dir)
    run_name = f"{os.path.basename(os.path.normpath(output_dir))}-calibration"
    sent = []
    for tracker in trackers:
        if tracker == "tensorboard":
            if importlib.util.find_spec("tensorboard") is None:
                logger.warning("report_to names tensorboard, which is not installed: calibration results not logged.")
                continue
            log_dir = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(output_dir, "runs", "calibration")
            _tensorboard(scalars, images, log_dir, step)
        elif tracker in ("wandb", "trackio"):
            if importlib.util.find_spec(tracker) is None:
                logger.warning(f"report_to names {tracker}, which is not installed: calibration results not logged.")
                continue
            project = os.environ.get(f"{tracker.upper()}_PROJECT", "huggingface")
            _run_api(tracker, scalars, images, project, run_name)
        else:
            logger.warning(
                f"Calibration results are not sent to {tracker!r} (PCL sends them to tensorboard, wandb and trackio); "
                f"they are in {os.path.join(calibration_dir, 'metrics.json')}."
            )
            continue
        sent.append(tracker)
    return sent
