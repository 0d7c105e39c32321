"""fastnet's whitening initialisation (the training loop calls it on normalised images)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import get_model
from models.fastnet import FastNet, init_whitening, stem_geometry
from models.preprocess import Normalize


def _correlated_images(n: int, channels: int, size: int) -> torch.Tensor:
    """Smooth images with correlated channels: far from white, like real photos."""
    noise = torch.randn(n, channels, size, size)
    blurred = F.avg_pool2d(F.pad(noise, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    mix = torch.eye(channels) + 0.5
    return torch.einsum("dc,nchw->ndhw", mix, blurred) + 0.3


def _stem_output_moment(net: FastNet, images: torch.Tensor) -> torch.Tensor:
    stem = net.whiten
    out = F.conv2d(images, stem.weight, None, stride=stem.stride)
    half = out.shape[1] // 2
    flat = out[:, :half].permute(0, 2, 3, 1).reshape(-1, half).double()
    return flat.T @ flat / flat.shape[0]


@pytest.mark.parametrize(("in_channels", "image_size"), [(3, 32), (1, 48), (3, 224)])
def test_whitening_decorrelates_patches(in_channels: int, image_size: int) -> None:
    net = get_model("fastnet", num_classes=10, in_channels=in_channels, image_size=image_size)
    assert isinstance(net, FastNet)
    images = _correlated_images(64 if image_size < 100 else 8, in_channels, image_size)
    before = _stem_output_moment(net, images)
    init_whitening(net, images, eps=1e-6)
    after = _stem_output_moment(net, images)

    kernel, _ = stem_geometry(image_size)
    dim = in_channels * kernel * kernel
    assert net.whiten.out_channels == 2 * dim
    identity = torch.eye(dim, dtype=torch.float64)
    assert (before - identity).abs().max() > 0.1  # the random stem did not whiten
    torch.testing.assert_close(after, identity, atol=2e-3, rtol=0)
    # The second half of the filters are the negatives of the first.
    weight = net.whiten.weight
    torch.testing.assert_close(weight[dim:], -weight[:dim])
    assert not weight.requires_grad


def test_whitening_is_chunk_invariant_and_finds_a_wrapped_net() -> None:
    images = _correlated_images(40, 3, 32)
    a = get_model("fastnet", num_classes=10)
    b = get_model("fastnet", num_classes=10)
    init_whitening(a, images, chunk=512)
    init_whitening(nn.Sequential(Normalize([0.5] * 3, [0.25] * 3), b), images, chunk=7)
    assert isinstance(a, FastNet) and isinstance(b, FastNet)
    torch.testing.assert_close(a.whiten.weight, b.whiten.weight, atol=1e-5, rtol=1e-4)


def test_whitened_net_still_trains() -> None:
    net = get_model("fastnet", num_classes=10)
    images = _correlated_images(8, 3, 32)
    init_whitening(net, images)
    loss = F.cross_entropy(net(images), torch.arange(8) % 10)
    loss.backward()
    assert net.whiten.weight.grad is None  # frozen
    assert net.whiten.bias is not None and net.whiten.bias.grad is not None
    assert net.head.weight.grad is not None and net.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("images", "error", "fragment"),
    [
        (torch.zeros(4, 3, 32, 32, dtype=torch.uint8), ValueError, "normalised float"),
        (torch.zeros(4, 1, 32, 32), ValueError, "3 channels"),
        (torch.zeros(3, 32, 32), ValueError, "NCHW"),
    ],
)
def test_whitening_rejects_bad_images(
    images: torch.Tensor, error: type[Exception], fragment: str
) -> None:
    net = get_model("fastnet", num_classes=10)
    with pytest.raises(error, match=fragment):
        init_whitening(net, images)


def test_whitening_needs_a_fastnet() -> None:
    with pytest.raises(TypeError, match="needs a FastNet"):
        init_whitening(nn.Conv2d(3, 8, 3), torch.zeros(2, 3, 32, 32))


@pytest.mark.parametrize("image_size", [16, 17, 63, 64, 65, 100])
def test_any_image_size_from_16(image_size: int) -> None:
    net = get_model("fastnet", num_classes=3, in_channels=2, image_size=image_size).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, image_size, image_size)).shape == (1, 3)
