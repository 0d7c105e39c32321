"""Exponential moving average of a network's weights (and its normalisation statistics).

`ema = decay_t * ema + (1 - decay_t) * weights` after every optimiser step, with the warm-up
`decay_t = min(decay, (1 + t) / (10 + t))` (t = updates so far) so the average is not dominated
by the random initialisation early on. Integer buffers (BatchNorm's batch counter) are copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """Keeps `module`, an averaged copy of the network, in eval mode and without gradients."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError("EMA decay must be in (0, 1)")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses (warm-up on the number of updates)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.is_floating_point():
                target.lerp_(value.detach().to(target.dtype), 1.0 - decay)
            else:
                target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
