"""VGG-19 with batch norm: torchvision's configuration "E" and layer layout, a right-sized head.

The feature extractor is torchvision's `vgg19_bn` layer for layer (conv-BN-ReLU per entry,
2x2 max-pool per "M"), so its ImageNet weights load by name; only the first convolution takes
`in_channels`. torchvision's head (a 7x7 adaptive pool and two 4096-wide layers, 120M
parameters) is sized for 224 px ImageNet; here the final feature map is pooled to at most 2x2
and fed to one 512-wide hidden layer, so the head stays under 1.2M parameters at any size.
"""

from __future__ import annotations

import torch
from torch import nn

from imgzoo.errors import UserError
from models.registry import register_model

# torchvision.models.vgg.cfgs["E"]: output channels per 3x3 conv, "M" for a 2x2 max-pool.
VGG19_CONFIG: list[int | str] = [
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, 256, "M",
    512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
]  # fmt: skip

HEAD_GRID = 2
"""The final feature map is average-pooled to at most HEAD_GRID x HEAD_GRID."""
HIDDEN_WIDTH = 512
DROPOUT = 0.5


def make_features(config: list[int | str], in_channels: int) -> nn.Sequential:
    """Conv(3x3, pad 1)-BN-ReLU per int entry and MaxPool(2) per "M", as torchvision does."""
    layers: list[nn.Module] = []
    channels = in_channels
    for entry in config:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(entry, int)
            layers += [
                nn.Conv2d(channels, entry, kernel_size=3, padding=1),
                nn.BatchNorm2d(entry),
                nn.ReLU(inplace=True),
            ]
            channels = entry
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG feature extractor + pooled head; `features` / `classifier` names as torchvision's."""

    def __init__(
        self, config: list[int | str], *, num_classes: int, in_channels: int, image_size: int
    ) -> None:
        super().__init__()
        pools = config.count("M")
        feature_size = image_size >> pools
        if feature_size < 1:
            raise UserError(
                f"VGG needs image_size >= {1 << pools} px ({pools} max-pools), got {image_size}"
            )
        width = next(e for e in reversed(config) if isinstance(e, int))
        grid = min(feature_size, HEAD_GRID)
        self.features = make_features(config, in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(grid)
        self.classifier = nn.Sequential(
            nn.Linear(width * grid * grid, HIDDEN_WIDTH),
            nn.ReLU(inplace=True),
            nn.Dropout(DROPOUT),
            nn.Linear(HIDDEN_WIDTH, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        logits: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return logits


@register_model("vgg19", imagenet_weights="VGG19_BN_Weights.IMAGENET1K_V1")
def vgg19(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """VGG-19 with batch norm (torchvision cfg "E"), head pooled to <= 2x2 + one 512 layer."""
    return VGG(
        VGG19_CONFIG, num_classes=num_classes, in_channels=in_channels, image_size=image_size
    )
