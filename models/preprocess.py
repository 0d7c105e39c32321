"""Input normalisation shared by training and the exported graph.

Training feeds `Normalize` uint8 NCHW batches after augmentation; export puts the same module
behind an NHWC -> NCHW permute. One implementation, so training and serving cannot disagree
about scaling or mean / std.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """uint8 (or float in [0, 255]) NCHW -> float32 `(x / 255 - mean) / std`, per channel.

    mean and std are in [0, 1] units. Folded into one multiply-add: x * scale + shift.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ValueError("mean and std need the same, non-zero number of channels")
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * s), persistent=False)
        self.register_buffer("shift", -m / s, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32) * self.scale + self.shift


class NHWCToNCHW(nn.Module):
    """The graph input is NHWC (what image decoders produce); torch convolutions want NCHW."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)
