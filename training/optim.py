"""Optimisers with weight decay only where it belongs, optionally wrapped in Lookahead."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from training.lookahead import Lookahead
from training.muon import Muon
from training.recipes import Recipe, sgd_hyperparameters

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
    decay, norm, other = split_parameter_kinds(model)
    return decay, norm + other


def split_parameter_kinds(
    model: nn.Module,
) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(weights, normalisation parameters, other biases and 1-d tensors), trainable only."""
    weights: list[nn.Parameter] = []
    norm: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _NORM_TYPES):
                norm.append(param)
            elif name.endswith("bias") or param.ndim <= 1:
                other.append(param)
            else:
                weights.append(param)
    return weights, norm, other


def build_optimizer(
    model: nn.Module, recipe: Recipe, *, total_steps: int | None = None
) -> tuple[Optimizer, Lookahead | None]:
    """The recipe's optimiser over up to four groups, each with its `base_lr`.

    Groups: weights (decayed); normalisation parameters (lr times `norm_bias_lr_scale`); other
    biases (lr times `bias_lr_scale`). The last two are decayed only with `decay_all`, by the
    same fraction per step as the weights. With `muon`, convolution filters (4-d weights) form
    a fourth group that Muon steps at `muon_lr` with `muon_momentum`, undecayed (Muon
    renormalises them instead); the other groups take SGD steps. Returns the inner optimiser
    (for the schedule and the gradient scaler) and the Lookahead wrapper when the recipe turns
    it on (`total_steps`, the run's optimiser steps, sets the pace of a ramped Lookahead step
    size).
    """
    weights, norm, other = split_parameter_kinds(model)
    filters = [p for p in weights if p.dim() == 4] if recipe.optimizer == "muon" else []
    weights = [p for p in weights if p.dim() != 4] if filters else weights
    lr, decay = sgd_hyperparameters(recipe)
    scale = recipe.norm_bias_lr_scale
    bias_scale = recipe.bias_lr_scale
    groups: list[dict[str, Any]] = [
        {"params": weights, "weight_decay": decay, "base_lr": lr},
        {
            "params": norm,
            "weight_decay": decay / scale if recipe.decay_all else 0.0,
            "base_lr": lr * scale,
        },
        {
            "params": other,
            "weight_decay": decay / bias_scale if recipe.decay_all else 0.0,
            "base_lr": lr * bias_scale,
        },
        {
            "params": filters,
            "weight_decay": 0.0,
            "base_lr": recipe.muon_lr,
            "momentum": recipe.muon_momentum,
            "orthogonalize": True,
        },
    ]
    groups = [g for g in groups if g["params"]]
    for group in groups:
        group["lr"] = group["base_lr"]
    optimizer: Optimizer
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            groups,
            lr=lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
        )
    elif recipe.optimizer == "muon":
        optimizer = Muon(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    elif recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=lr, betas=(recipe.momentum, recipe.beta2))
    elif recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(recipe.momentum, recipe.beta2))
    else:  # Recipe validation rules this out; kept for a clear message if it changes.
        raise ValueError(f"unknown optimizer {recipe.optimizer!r}")
    lookahead = (
        Lookahead(
            optimizer,
            k=recipe.lookahead_k,
            alpha=recipe.lookahead_alpha,
            alpha_power=recipe.lookahead_alpha_power,
            total_steps=total_steps,
            buffers=_float_buffers(model) if recipe.lookahead_buffers else (),
        )
        if recipe.lookahead_k > 0
        else None
    )
    return optimizer, lookahead


def _float_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Floating-point buffers (running statistics); integer counters are left alone."""
    return [b for b in model.buffers() if b.is_floating_point()]
