"""Parameter budgets and FLOP counting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import count_flops, count_parameters, get_model, list_models


def test_count_parameters_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 5))
    expected = (3 * 8 * 9 + 8) + (8 + 8) + (8 * 5 + 5)
    assert count_parameters(model) == expected
    model[1].weight.requires_grad_(False)
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=True) == expected - 8


def test_count_parameters_counts_shared_once() -> None:
    layer = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(layer, layer)) == 20


def test_count_flops_by_hand() -> None:
    # A multiply-add is 2 FLOPs: conv 2*Cin*Cout*k*k*H*W, linear 2*in*out.
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 5)
    )
    expected = 2 * 3 * 8 * 9 * 16 * 16 + 2 * 8 * 16 * 16 * 5
    assert count_flops(model, in_channels=3, image_size=16) == expected


def test_count_flops_restores_training_mode() -> None:
    model = get_model("fastnet", num_classes=10)
    model.train()
    count_flops(model, in_channels=3, image_size=32)
    assert model.training
    model.eval()
    count_flops(model, in_channels=3, image_size=32)
    assert not model.training


# Not fastnet: its unpadded 2x2 stem and floor-rounding pools (31-15-7-3 px at 32 px input,
# 63-31-15-7 at 64) make its FLOPs grow 4.5x.
@pytest.mark.parametrize("name", ["resnet18", "resnet_small", "vgg19"])
def test_count_flops_scales_with_pixels(name: str) -> None:
    """Padded fully convolutional nets: 4x the pixels, ~4x the FLOPs (the head is tiny)."""
    with torch.device("meta"):
        model = get_model(name, num_classes=10, in_channels=3, image_size=64)
    small = count_flops(model, in_channels=3, image_size=32)
    large = count_flops(model, in_channels=3, image_size=64)
    assert 3.8 < large / small < 4.4


@pytest.mark.parametrize("name", list_models())
def test_meta_device_counts_match_real_ones(name: str) -> None:
    with torch.device("meta"):
        meta = get_model(name, num_classes=10, in_channels=1, image_size=32)
    real = get_model(name, num_classes=10, in_channels=1, image_size=32)
    assert count_parameters(meta) == count_parameters(real)
    assert count_flops(meta, in_channels=1, image_size=32) == count_flops(
        real, in_channels=1, image_size=32
    )


@pytest.mark.parametrize(
    ("in_channels", "image_size", "num_classes"), [(3, 32, 10), (1, 48, 7), (3, 224, 100)]
)
def test_small_nets_stay_within_budget(in_channels: int, image_size: int, num_classes: int) -> None:
    kwargs = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    with torch.device("meta"):
        small = count_parameters(get_model("resnet_small", **kwargs))
        fast = count_parameters(get_model("fastnet", **kwargs))
    assert 3_000_000 < small < 5_000_000
    assert 1_500_000 < fast < 2_500_000


def test_large_nets_match_torchvision() -> None:
    """Same trunk as torchvision's networks; only the head differs (catches a wrong config)."""
    import torchvision

    with torch.device("meta"):
        ours = {n: get_model(n, num_classes=10, image_size=224) for n in ("resnet18", "resnet50")}
        vgg = get_model("vgg19", num_classes=10, image_size=224)
        theirs = {n: torchvision.models.get_model(n, num_classes=10) for n in ours}
        tv_vgg = torchvision.models.vgg19_bn()
    for name, model in ours.items():
        assert count_parameters(model) == count_parameters(theirs[name]), name
    assert count_parameters(vgg.features) == count_parameters(tv_vgg.features)
    # Head: 512 x 2 x 2 pooled features -> 512 -> 10.
    assert count_parameters(vgg) - count_parameters(vgg.features) == (
        (512 * 4 * 512 + 512) + (512 * 10 + 10)
    )
