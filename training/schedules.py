"""Learning-rate schedules, stepped once per optimiser step.

A schedule is a pure function of the step number, so resuming needs nothing but the step
counter, and the lr every step had can be recomputed (and tested) without an optimiser.

Shape: a linear warm-up over `warmup_steps` from `warmup_start_factor` to 1, then
- cosine:   half a cosine from 1 down to `final_factor` at the last step,
- onecycle: a straight line from 1 down to `final_factor` (airbench's triangle),
- step:     1, multiplied by `gamma` at each milestone step,
- constant: 1.
The factor multiplies each parameter group's base learning rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch.optim import Optimizer

KINDS = ("cosine", "onecycle", "step", "constant")


@dataclass(frozen=True)
class Schedule:
    """Learning-rate factor per optimiser step (0-based) over `total_steps` steps."""

    kind: str
    total_steps: int
    warmup_steps: int = 0
    warmup_start_factor: float = 0.1
    final_factor: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown schedule {self.kind!r} (known: {', '.join(KINDS)})")
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError("total_steps must be >= 1 and warmup_steps >= 0")

    def factor(self, step: int) -> float:
        """The learning-rate factor at optimiser step `step` (0 = the first step)."""
        if step < self.warmup_steps:
            # Step 0 runs at the start factor, the last warm-up step just below 1.
            progress = step / self.warmup_steps
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * progress
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return float(self.gamma ** sum(1 for m in self.milestones if step >= m))
        decay_steps = self.total_steps - self.warmup_steps
        # Progress through the decay phase: 0 at its first step, 1 at the last step.
        progress = min(1.0, (step - self.warmup_steps) / max(1, decay_steps - 1))
        if self.kind == "cosine":
            return self.final_factor + (1.0 - self.final_factor) * 0.5 * (
                1.0 + math.cos(math.pi * progress)
            )
        return 1.0 + (self.final_factor - 1.0) * progress  # onecycle: linear

    def values(self) -> list[float]:
        """The factor at every step (for plots and tests)."""
        return [self.factor(s) for s in range(self.total_steps)]


def build_schedule(
    kind: str,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_start_factor: float = 0.1,
    final_factor: float = 0.0,
    milestone_epochs: Sequence[float] = (),
    gamma: float = 0.1,
) -> Schedule:
    """A schedule whose epoch-valued settings are converted to optimiser steps."""
    total = epochs * steps_per_epoch
    warmup = min(total - 1, round(warmup_epochs * steps_per_epoch)) if warmup_epochs > 0 else 0
    return Schedule(
        kind=kind,
        total_steps=total,
        warmup_steps=max(0, warmup),
        warmup_start_factor=warmup_start_factor,
        final_factor=final_factor,
        milestones=tuple(round(m * steps_per_epoch) for m in milestone_epochs),
        gamma=gamma,
    )


def apply_lr(optimizer: Optimizer, factor: float) -> float:
    """Set every group's lr to its `base_lr` times `factor`; returns the first group's lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return float(optimizer.param_groups[0]["lr"])
