"""Lookahead (Zhang et al., 2019): k fast steps of any optimiser, then pull slow weights along.

Every `k` steps of the inner optimiser: `slow += alpha * (fast - slow)`, then `fast = slow`.
A small wrapper rather than an `Optimizer` subclass: the learning-rate schedule and the
gradient scaler talk to the inner optimiser (`.optimizer`), Lookahead only adds `sync()`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer


class Lookahead:
    """Wraps an optimiser; call `step()` (or the inner step followed by `after_step()`)."""

    def __init__(self, optimizer: Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if k < 1:
            raise ValueError("lookahead k must be >= 1")
        if not 0.0 < alpha <= 1.0:
            raise ValueError("lookahead alpha must be in (0, 1]")
        self.optimizer = optimizer
        self.k = k
        self.alpha = alpha
        self.fast_steps = 0
        self.slow: list[list[torch.Tensor]] = [
            [p.detach().clone() for p in group["params"]] for group in optimizer.param_groups
        ]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        """One inner step, then the slow update when k fast steps have passed."""
        self.optimizer.step()
        self.after_step()

    @torch.no_grad()
    def after_step(self) -> None:
        """Count a fast step done elsewhere (e.g. by a gradient scaler) and sync when due."""
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        """slow += alpha * (fast - slow); fast = slow."""
        for group, slow_group in zip(self.optimizer.param_groups, self.slow, strict=True):
            for fast, slow in zip(group["params"], slow_group, strict=True):
                slow.lerp_(fast.detach(), self.alpha)
                fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "fast_steps": self.fast_steps,
            "slow": [[t.clone() for t in g] for g in self.slow],
            "k": self.k,
            "alpha": self.alpha,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.fast_steps = int(state["fast_steps"])
        for slow_group, saved_group in zip(self.slow, state["slow"], strict=True):
            for slow, saved in zip(slow_group, saved_group, strict=True):
                slow.copy_(saved)
