"""Muon for convolution filters, SGD with Nesterov momentum for everything else, in one optimiser.

Muon (Keller Jordan, 2024; used by airbench94_muon to reach 94 % on CIFAR-10 in fewer epochs
than airbench94) replaces a filter bank's momentum by its nearest semi-orthogonal matrix: the
update has all singular values near 1, so every direction of the bank moves at the same rate
whatever the gradient's scale. Each bank is also renormalised to Frobenius norm
sqrt(out_channels) before its step, which makes `lr` a relative step length and takes the
place of weight decay for those tensors.

Groups with `orthogonalize=True` take the Muon step; the others take exactly
`torch.optim.SGD`'s step (dampening 0, L2 `weight_decay`, Nesterov when asked). Keeping both in
one `Optimizer` lets the learning-rate schedule, Lookahead, checkpoints and DDP see one object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

# Quintic Newton-Schulz coefficients chosen for the steepest slope at zero (Muon's): three
# iterations push every singular value into roughly [0.5, 1.5], which trains as well as exact
# orthogonalisation at a fraction of an SVD's cost.
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 3


def orthogonalize(matrix: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with `matrix`'s singular vectors (U S' V^T).

    Computed in bfloat16 on CUDA (fast and accurate enough there), in float32 elsewhere: CPUs
    without native bf16 run bfloat16 matmuls far slower than float32, and the matrices are small.
    """
    if matrix.dim() != 2:
        raise ValueError(f"orthogonalize needs a 2-d matrix, got shape {tuple(matrix.shape)}")
    a, b, c = _NS_COEFFICIENTS
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    x = x / (x.norm() + 1e-7)  # top singular value <= 1, where the iteration converges
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    out: torch.Tensor = (x.T if tall else x).to(matrix.dtype)
    return out


class Muon(Optimizer):
    """Muon on the groups marked `orthogonalize=True`, SGD (momentum, Nesterov) on the rest."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "orthogonalize": False,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["orthogonalize"]:
                for p in group["params"]:
                    if p.dim() < 2:
                        shape = tuple(p.shape)
                        raise ValueError(
                            f"Muon orthogonalises matrices and filter banks, got shape {shape}"
                        )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["orthogonalize"] and group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad)
                direction = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                if group["orthogonalize"]:
                    p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
                    update = orthogonalize(direction.reshape(len(p), -1)).view_as(p)
                    p.add_(update, alpha=-lr)
                else:
                    p.add_(direction, alpha=-lr)
        return loss
