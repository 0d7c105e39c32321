"""fastnet: airbench-style compact CNN (~2M parameters) for CPUs and quick runs.

After Keller Jordan's airbench94 ("94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024):

    stem    conv k x k, 2 * C * k^2 channels, bias, no padding; GELU      (the whitening layer)
    block   conv3x3 - maxpool2 - BN - GELU - conv3x3 - BN - GELU       widths 64, 256, 256
    head    global max pool - linear without bias - fixed scale 1/9

The stem is meant to be set by `init_whitening` from the patch covariance of training images
(its filters are the whitening eigenvectors and their negatives, hence 2 * C * k^2 channels) and
then frozen. Batch norms learn only a bias (scale fixed at 1) and keep 60 % of their running
statistics per batch (airbench's "momentum 0.6"; torch's momentum 0.4), the first
conv of each block starts as a partial identity (Dirac), and the head's 1/9 scale replaces a
temperature on the logits — all as in airbench. Up to 64 px the stem is a 2x2 stride-1 conv;
larger images get a 4x4 stride-4 patch stem so the blocks run at 1/4 of the resolution.
"""

from __future__ import annotations

import torch
from torch import nn

from models.registry import register_model

WIDTHS: tuple[int, int, int] = (64, 256, 256)
HEAD_SCALE = 1 / 9
BN_MOMENTUM = 0.4
"""torch convention: the weight of the new batch's statistics (airbench's 0.6 kept = 0.4 new)."""
BN_EPS = 1e-12
SMALL_INPUT_MAX = 64
WHITENING_EPS = 5e-4


def stem_geometry(image_size: int) -> tuple[int, int]:
    """(kernel, stride) of the whitening stem for square `image_size` inputs."""
    return (2, 1) if image_size <= SMALL_INPUT_MAX else (4, 4)


class ConvGroup(nn.Module):
    """conv3x3 - maxpool2 - BN - GELU - conv3x3 - BN - GELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.activ = nn.GELU()
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad_(False)
        for conv in (self.conv1, self.conv2):
            # Partial identity: the first in_channels filters pass their input through.
            with torch.no_grad():
                nn.init.dirac_(conv.weight[: conv.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        out: torch.Tensor = self.activ(self.norm2(self.conv2(x)))
        return out


class FastNet(nn.Module):
    """airbench94-style network; see the module docstring."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        widths: tuple[int, ...] = WIDTHS,
    ) -> None:
        super().__init__()
        kernel, stride = stem_geometry(image_size)
        whiten_width = 2 * in_channels * kernel * kernel
        self.whiten = nn.Conv2d(in_channels, whiten_width, kernel, stride=stride, bias=True)
        assert self.whiten.bias is not None  # bias=True
        nn.init.zeros_(self.whiten.bias)
        self.activ = nn.GELU()
        groups: list[nn.Module] = []
        channels = whiten_width
        for width in widths:
            groups.append(ConvGroup(channels, width))
            channels = width
        self.blocks = nn.Sequential(*groups)
        self.head = nn.Linear(channels, num_classes, bias=False)
        self.head_scale = HEAD_SCALE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.activ(self.whiten(x)))
        logits: torch.Tensor = self.head(x.amax(dim=(2, 3)))
        return logits * self.head_scale


def _find_fastnet(model: nn.Module) -> FastNet:
    for module in model.modules():
        if isinstance(module, FastNet):
            return module
    raise TypeError(f"init_whitening needs a FastNet (or a module holding one), got {type(model)}")


@torch.no_grad()
def init_whitening(
    model: nn.Module, images: torch.Tensor, *, eps: float = WHITENING_EPS, chunk: int = 512
) -> None:
    """Set the fastnet stem to whiten the patches of `images`, then freeze its weight.

    images: normalised float NCHW training images (a few thousand are plenty; airbench uses
    5,000), on any device. The stem's filters become the eigenvectors of the patch second-moment
    matrix scaled by 1 / sqrt(eigenvalue + eps), followed by their negatives, so after the GELU
    both signs of every whitened direction survive. `model` may be a FastNet or a module
    holding one (e.g. behind a Normalize).
    """
    net = _find_fastnet(model)
    stem = net.whiten
    c, k, stride = stem.in_channels, stem.kernel_size[0], stem.stride[0]
    if images.dim() != 4 or images.shape[1] != c:
        raise ValueError(f"expected NCHW images with {c} channels, got shape {list(images.shape)}")
    if not images.is_floating_point():
        raise ValueError("expected normalised float images, got dtype " + str(images.dtype))
    if images.shape[2] < k or images.shape[3] < k:
        raise ValueError(f"images smaller than the {k}x{k} stem")
    dim = c * k * k
    moment = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
    count = 0
    # Chunked so memory stays bounded however many images come in.
    for batch in torch.split(images, chunk):
        patches = batch.unfold(2, k, stride).unfold(3, k, stride)  # N, C, H', W', k, k
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, dim).to(torch.float64)
        moment += flat.T @ flat
        count += flat.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(moment / count)
    # Largest eigenvalue first, as airbench orders the filters.
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)).T.reshape(dim, c, k, k)
    weight = torch.cat((filters, -filters)).to(stem.weight.dtype)
    stem.weight.copy_(weight.to(stem.weight.device))
    stem.weight.requires_grad_(False)


@register_model("fastnet")
def fastnet(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """airbench94-style CNN (whitening stem, widths 64/256/256), ~2M parameters."""
    return FastNet(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
