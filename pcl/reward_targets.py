# Copyright 2026 The PCL Authors. Licensed under the Apache License, Version 2.0.
"""Score targets in [0, 1] from GRPO's per-function rewards, whatever their scale.

A self-score predicts a normalised reward, so every reward must become a target in [0, 1]. With a declared range the
weighted sum of the raw rewards is normalised by it (strict or clipped). In auto mode (no declared range) nothing is
refused: each reward function is mapped to [0, 1] on its own (a reward model's raw score through a sigmoid, a
callable by its running range), and the weighted sum is normalised by the bounds of the weights.
"""

import dataclasses
import json
import math
import os
import warnings

import torch

from .segment import SegmentFormat


# Running reward ranges (auto mode), saved in each checkpoint folder
REWARD_STATE = "pcl_reward_ranges.json"


class RewardTargets:
    """Turns the gathered `(num_samples, num_funcs)` rewards of a generation batch into score targets.

    Args:
        fmt ([`SegmentFormat`]): The format; with a declared range, its `reward_range` and `out_of_range` apply.
        weights (`torch.Tensor`): The reward weights, one per function.
        is_model (`list[bool]`): Which reward functions are reward models (`nn.Module`, raw scores).
        names (`list[str]`): The reward functions' names, for warnings.
        auto (`bool`): Auto mode (`self_assessment_reward_range=None`).
        strict (`bool`): Refuse out-of-range rewards with a declared range (`False` with segment weight 0, where the
            parent accepts any finite reward).
    """

    def __init__(
        self,
        fmt: SegmentFormat,
        weights: torch.Tensor,
        is_model: list[bool],
        names: list[str],
        auto: bool,
        strict=True,
    ):
        self.fmt, self.auto, self.strict = fmt, auto, strict
        self.weights = weights.detach().float().cpu()
        self.is_model, self.names = list(is_model), list(names)
        # Running [lo, hi] of each callable, widened by what it returns; saved with checkpoints (see `state_dict`)
        self.ranges = [[0.0, 1.0] for _ in names]
        self._warned: set[int] = set()

    def state_dict(self) -> dict:
        return {"ranges": [list(r) for r in self.ranges]}

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("ranges", [])) == len(self.ranges):
            self.ranges = [[float(lo), float(hi)] for lo, hi in state["ranges"]]

    def save(self, checkpoint: str) -> None:
        """Write the running ranges into the checkpoint folder `checkpoint` (`REWARD_STATE`), to resume the run with."""
        with open(os.path.join(checkpoint, REWARD_STATE), "w") as f:
            json.dump(self.state_dict(), f)

    def load(self, checkpoint: str | None) -> None:
        """Resume the running ranges saved in the checkpoint folder `checkpoint`, if it has them."""
        path = None if checkpoint is None else os.path.join(checkpoint, REWARD_STATE)
        if path is not None and os.path.exists(path):
            with open(path) as f:
                self.load_state_dict(json.load(f))

    def _mapped(self, rewards: torch.Tensor, update: bool) -> torch.Tensor:
        """Each column in [0, 1]; NaN (TRL's "not applicable") and infinite values become NaN. `update=False` maps by
        the current ranges without widening them (outside them the final target is clipped)."""
        rewards = rewards.float().clone()
        rewards[~torch.isfinite(rewards)] = math.nan
        for j in range(rewards.size(1)):
            col = rewards[:, j]
            if self.is_model[j]:
                rewards[:, j] = torch.sigmoid(col)
                continue
            seen = col[~torch.isnan(col)]
            if seen.numel() and update:
                lo, hi = self.ranges[j]
                new_lo, new_hi = min(lo, seen.min().item()), max(hi, seen.max().item())
                if (new_lo, new_hi) != (lo, hi):
                    self.ranges[j] = [new_lo, new_hi]
                    if j not in self._warned:
                        self._warned.add(j)
                        warnings.warn(
                            f"Reward function {self.names[j]!r} returned {seen.min().item():g}..{seen.max().item():g}, "
                            "outside [0, 1]: its self-assessment targets are normalised by the running range of its "
                            "rewards (now [{:g}, {:g}]). Declare `self_assessment_reward_range` for a fixed "
                            "scale.".format(new_lo, new_hi),
                            stacklevel=2,
                        )
            lo, hi = self.ranges[j]
            rewards[:, j] = (col - lo) / (hi - lo)
        return rewards

    def __call__(self, rewards: torch.Tensor, update: bool = True) -> list[float | None]:
        """Targets for every row of the gathered rewards (call it on every process with the same tensor). With
        `update=False` (evaluation) the running ranges are read but not widened: only training moves them."""
        rewards = rewards.detach().float().cpu()
        if not self.auto:
            weighted = (rewards * self.weights).nansum(dim=1)
            weighted[torch.isnan(rewards).all(dim=1)] = math.nan
            fmt = self.fmt if self.strict else dataclasses.replace(self.fmt, out_of_range="clip")
            return [
                None if not math.isfinite(r) and not math.isnan(r) else fmt.normalize(r) for r in weighted.tolist()
            ]
        mapped = self._mapped(rewards, update)
        applicable = ~torch.isnan(mapped)
        w = self.weights.expand_as(mapped)
        lo = (w.clamp(max=0) * applicable).sum(dim=1)
        hi = (w.clamp(min=0) * applicable).sum(dim=1)
        weighted = (mapped * w).nansum(dim=1)
        span = hi - lo
        targets = ((weighted - lo) / span.clamp(min=1e-12)).clamp(0.0, 1.0)
        return [None if s <= 0 else t for t, s in zip(targets.tolist(), span.tolist(), strict=True)]

    @property
    def log_ranges(self) -> dict[str, float]:
        """The running ranges of callables that left [0, 1], as metrics."""
        out = {}
        for name, model, (lo, hi) in zip(self.names, self.is_model, self.ranges, strict=True):
            if not model and (lo, hi) != (0.0, 1.0):
                out[f"self_assessment/range_lo/{name}"], out[f"self_assessment/range_hi/{name}"] = lo, hi
        return out
