"""Size and cost of a network: parameter count and forward FLOPs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones once); frozen ones too unless `trainable_only`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, *, in_channels: int, image_size: int) -> int:
    """Forward FLOPs of `model` for one `in_channels` x `image_size` x `image_size` image.

    Counted by `torch.utils.flop_counter.FlopCounterMode`, whose convention is that one
    multiply-add is 2 FLOPs; it counts convolutions and matrix products only (batch norm,
    activations, pooling and additions are not counted). Runs one forward pass in eval mode
    without gradients on the model's device and dtype (a model on the "meta" device costs no
    compute), and restores the training mode afterwards.
    """
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    image = torch.zeros(1, in_channels, image_size, image_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(image)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
