"""Lookahead (Zhang et al., 2019): k fast steps of any optimiser, then pull slow weights along.

Every `k` steps of the inner optimiser: `slow += alpha_t * (fast - slow)`, then `fast = slow`.
`alpha_t = 1 - (1 - alpha) * (t / total_steps) ** alpha_power` at fast step t: a power of 0
keeps `alpha`; airbench's power 3 starts as a no-op and averages more and more strongly towards
the end, which makes the slow weights an EMA of the late trajectory. `buffers` (BatchNorm
running statistics) can be averaged alongside the parameters. `finish()` hands the network the
slow weights after the last step.

A small wrapper rather than an `Optimizer` subclass: the learning-rate schedule and the
gradient scaler talk to the inner optimiser (`.optimizer`), Lookahead only adds `sync()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.optim import Optimizer


class Lookahead:
    """Wraps an optimiser; call `step()` (or the inner step followed by `after_step()`)."""

    def __init__(
        self,
        optimizer: Optimizer,
        k: int = 5,
        alpha: float = 0.5,
        *,
        alpha_power: float = 0.0,
        total_steps: int | None = None,
        buffers: Sequence[torch.Tensor] = (),
    ) -> None:
        if k < 1:
            raise ValueError("lookahead k must be >= 1")
        if not 0.0 < alpha <= 1.0:
            raise ValueError("lookahead alpha must be in (0, 1]")
        if alpha_power < 0:
            raise ValueError("lookahead alpha_power must be >= 0")
        if alpha_power > 0 and (total_steps is None or total_steps < 1):
            raise ValueError("a ramped lookahead step size (alpha_power > 0) needs total_steps")
        self.optimizer = optimizer
        self.k = k
        self.alpha = alpha
        self.alpha_power = alpha_power
        self.total_steps = total_steps
        self.fast_steps = 0
        self.slow: list[list[torch.Tensor]] = [
            [p.detach().clone() for p in group["params"]] for group in optimizer.param_groups
        ]
        self.buffers = list(buffers)
        self.slow_buffers = [b.detach().clone() for b in self.buffers]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def alpha_at(self, fast_steps: int) -> float:
        """The slow-weight step size of a sync after `fast_steps` fast steps."""
        if self.alpha_power == 0 or self.total_steps is None:
            return self.alpha
        progress = min(1.0, fast_steps / self.total_steps)
        return 1.0 - (1.0 - self.alpha) * float(progress**self.alpha_power)

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

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = [
            (fast, slow)
            for group, slow_group in zip(self.optimizer.param_groups, self.slow, strict=True)
            for fast, slow in zip(group["params"], slow_group, strict=True)
        ]
        return pairs + list(zip(self.buffers, self.slow_buffers, strict=True))

    @torch.no_grad()
    def sync(self) -> None:
        """slow += alpha_t * (fast - slow); fast = slow."""
        alpha = self.alpha_at(self.fast_steps)
        for fast, slow in self._pairs():
            slow.lerp_(fast.detach(), alpha)
            fast.copy_(slow)

    @torch.no_grad()
    def finish(self) -> None:
        """End of training: the network takes the slow weights (fast steps since the last sync
        are dropped, as in the Lookahead paper and airbench)."""
        for fast, slow in self._pairs():
            fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "fast_steps": self.fast_steps,
            "slow": [[t.clone() for t in g] for g in self.slow],
            "slow_buffers": [t.clone() for t in self.slow_buffers],
            "k": self.k,
            "alpha": self.alpha,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.fast_steps = int(state["fast_steps"])
        for slow_group, saved_group in zip(self.slow, state["slow"], strict=True):
            for slow, saved in zip(slow_group, saved_group, strict=True):
                slow.copy_(saved)
        saved_buffers = state.get("slow_buffers", [])
        if len(saved_buffers) != len(self.slow_buffers):
            raise ValueError(
                f"lookahead state has {len(saved_buffers)} averaged buffers, "
                f"this run averages {len(self.slow_buffers)}"
            )
        for slow, saved in zip(self.slow_buffers, saved_buffers, strict=True):
            slow.copy_(saved)
