"""Input preparation shared by training and the exported graph.

Training feeds `InputPreprocess` uint8 NCHW batches after augmentation; export puts the same
module behind an NHWC -> NCHW permute. One implementation, so training and serving cannot
disagree about scaling, mean / std, or the colour resolution the network sees.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
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


# JPEG's RGB -> YCbCr (ITU-R BT.601, full range; the constant offsets cancel out below).
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)

CHROMA_SUBSAMPLING_FACTORS = (1, 2, 4)


class ChromaLowPass(nn.Module):
    """RGB NCHW (float, 0-255): colour detail reduced to 1 / `factor` of the resolution; luma kept.

    Cb and Cr are averaged over `factor` x `factor` blocks and brought back by bilinear
    upsampling, as a JPEG 4:2:0 encoder and decoder do for `factor` 2 (box downsampling,
    libjpeg's "fancy" triangle upsampling). A network trained on 4:2:0 JPEGs at its input size
    never saw colour sharper than that; this gives served photos the same colour resolution.
    Linear: `x + P (lowpass(c) - c)` with `c` the chroma of `x` and `P` its way back to RGB.
    """

    to_chroma: torch.Tensor
    from_chroma: torch.Tensor

    def __init__(self, factor: int) -> None:
        super().__init__()
        if factor not in CHROMA_SUBSAMPLING_FACTORS[1:]:
            raise ValueError(f"chroma factor must be one of {CHROMA_SUBSAMPLING_FACTORS[1:]}")
        self.factor = factor
        forward = torch.tensor(_RGB_TO_YCBCR, dtype=torch.float64)
        back = torch.linalg.inv(forward)
        self.register_buffer(
            "to_chroma", forward[1:].to(torch.float32).view(2, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "from_chroma", back[:, 1:].to(torch.float32).reshape(3, 2, 1, 1), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chroma = F.conv2d(x, self.to_chroma)
        blocks = F.avg_pool2d(chroma, self.factor)
        smooth = F.interpolate(
            blocks, scale_factor=float(self.factor), mode="bilinear", align_corners=False
        )
        return x + F.conv2d(smooth - chroma, self.from_chroma)


class InputPreprocess(nn.Module):
    """uint8 NCHW -> the network's float32 input: optional `ChromaLowPass`, then `Normalize`.

    `chroma_subsampling` 1 leaves colour as it is; 2 or 4 need 3 channels and a height and
    width divisible by it (checked by the training engine, which knows the input size).
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], *, chroma_subsampling: int = 1
    ) -> None:
        super().__init__()
        if chroma_subsampling not in CHROMA_SUBSAMPLING_FACTORS:
            raise ValueError(f"chroma_subsampling must be one of {CHROMA_SUBSAMPLING_FACTORS}")
        if chroma_subsampling > 1 and len(mean) != 3:
            raise ValueError("chroma_subsampling needs RGB input (3 channels)")
        self.chroma = ChromaLowPass(chroma_subsampling) if chroma_subsampling > 1 else None
        self.normalize = Normalize(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.chroma is not None:
            x = self.chroma(x.to(torch.float32))
        out: torch.Tensor = self.normalize(x)
        return out


class NHWCToNCHW(nn.Module):
    """The graph input is NHWC (what image decoders produce); torch convolutions want NCHW."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)
