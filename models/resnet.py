"""ResNet-18 and ResNet-50: torchvision's ResNet, adapted to small and grayscale inputs.

For inputs up to `SMALL_INPUT_MAX` px the 7x7 stride-2 stem and its max-pool would shrink a
32 px image to 8 px before the first residual stage, so the stem becomes a 3x3 stride-1
convolution without max-pool (the usual CIFAR adaptation); the last stage then still sees 4x4
at 32 px. Layer names stay torchvision's, so its ImageNet weights load by name.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from models.registry import register_model

SMALL_INPUT_MAX = 64
"""Largest image size that gets the 3x3 stride-1 stem without max-pool."""

STEM_WIDTH = 64

# Architecture as data: block type and blocks per stage (He et al. 2016, table 1).
RESNET_CONFIGS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def build_resnet(config: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """torchvision ResNet `config` with the stem adapted to `in_channels` and `image_size`."""
    block, layers = RESNET_CONFIGS[config]
    # zero_init_residual: each residual branch starts as identity, which trains faster from
    # scratch; ImageNet weights overwrite it anyway.
    model = ResNet(block, layers, num_classes=num_classes, zero_init_residual=True)
    if image_size <= SMALL_INPUT_MAX:
        model.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, STEM_WIDTH, 7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    built: nn.Module = model
    return built


@register_model("resnet18", imagenet_weights="ResNet18_Weights.IMAGENET1K_V1")
def resnet18(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """ResNet-18 (torchvision, BasicBlocks [2, 2, 2, 2]), 3x3 stem up to 64 px."""
    return build_resnet(
        "resnet18", num_classes=num_classes, in_channels=in_channels, image_size=image_size
    )


@register_model("resnet50", imagenet_weights="ResNet50_Weights.IMAGENET1K_V2")
def resnet50(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """ResNet-50 (torchvision, Bottlenecks [3, 4, 6, 3]), 3x3 stem up to 64 px."""
    return build_resnet(
        "resnet50", num_classes=num_classes, in_channels=in_channels, image_size=image_size
    )
