"""torchrun / DDP plumbing: who am I, which batches are mine, and summing metrics over ranks.

Launched by torchrun (`torch.distributed.is_torchelastic_launched()`), training joins the
process group (nccl on CUDA, gloo on the CPU); otherwise everything here degrades to a single
process with rank 0 of 1, so the engine has one code path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; anything else as torch spells it."""
    from training.errors import TrainingError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} asked for but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise TrainingError(f"device {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return device


def setup(device_name: str) -> DistContext:
    """Join the torchrun job if there is one; pick this process's device."""
    if not dist.is_torchelastic_launched() or dist.is_initialized():
        if dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
            return DistContext(rank, world, rank, resolve_device(device_name), False)
        return DistContext(device=resolve_device(device_name))
    device = resolve_device(device_name)
    local_rank = dist.get_node_local_rank(fallback_rank=0)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    ctx = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, True)
    if ctx.world_size > 1:
        log.info("DDP rank %d of %d on %s", ctx.rank, ctx.world_size, device)
    return ctx


def teardown(ctx: DistContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(indices: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's part of a global batch (DistributedSampler-style interleaving)."""
    return indices[ctx.rank :: ctx.world_size] if ctx.enabled else indices


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Sum a few scalars over ranks (float64 so image counts stay exact)."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]


def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Make rank 0's parameters and buffers everyone's (BatchNorm statistics drift per rank)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
