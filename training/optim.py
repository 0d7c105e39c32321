"""Optimisers with weight decay only where it belongs, optionally wrapped in Lookahead."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from training.lookahead import Lookahead
from training.recipes import Recipe

# Normalisation layers' affine weights are scales, not filters: decaying them only fights the
# normalisation, so they (and every bias) get no weight decay.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def split_decay_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decay, no_decay): norm-layer parameters, biases and other 1-d tensors go to no_decay."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            skip = isinstance(module, _NORM_TYPES) or name.endswith("bias") or param.ndim <= 1
            (no_decay if skip else decay).append(param)
    return decay, no_decay


def build_optimizer(model: nn.Module, recipe: Recipe) -> tuple[Optimizer, Lookahead | None]:
    """The recipe's optimiser over two groups (with / without decay), each with `base_lr`.

    Returns the inner optimiser (for the schedule and the gradient scaler) and the Lookahead
    wrapper when the recipe turns it on.
    """
    decay, no_decay = split_decay_parameters(model)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    optimizer: Optimizer
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            groups,
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
        )
    elif recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=recipe.lr, betas=(recipe.momentum, recipe.beta2))
    elif recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.momentum, recipe.beta2))
    else:  # Recipe validation rules this out; kept for a clear message if it changes.
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
    for group in optimizer.param_groups:
        group["base_lr"] = recipe.lr
    lookahead = (
        Lookahead(optimizer, k=recipe.lookahead_k, alpha=recipe.lookahead_alpha)
        if recipe.lookahead_k > 0
        else None
    )
    return optimizer, lookahead
