"""Composite graphs: test-time augmentation and ensembles exported as one network.

The validation figures of the recipes come with test-time augmentation (TTA), and the best
FER2013 figure from two networks together. Exporting them as one graph makes the served model
answer exactly what was measured, with no serving-side logic:

    TTANetwork(network, level)        training.evaluate.tta_logits in the graph (flips, shifts)
    LogProbEnsemble([m1, m2, ...])    mean of the members' log-probabilities

Both take and return what a network does (normalised float NCHW in, `[N, K]` out), so they
sit inside `ExportWrapper` like any network and parity checks them against eager PyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import fields

import torch
from torch import nn

from export.errors import ExportError
from training.checkpoint import Checkpoint, DataInfo
from training.evaluate import TTA_VIEWS, tta_logits

# DataInfo fields that may differ between ensemble members: where the files were.
_FREE_FIELDS = frozenset({"root"})
_STAT_TOLERANCE = 1e-6  # mean / std are recomputed from the same split by each run


class TTANetwork(nn.Module):
    """`network` under airbench's test-time augmentation of `level` (0, 1 or 2)."""

    def __init__(self, network: nn.Module, level: int) -> None:
        super().__init__()
        if level not in TTA_VIEWS:
            raise ExportError(f"--tta must be one of {sorted(TTA_VIEWS)}, got {level}")
        self.network = network
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The very function the training evaluation uses, so served == measured.
        return tta_logits(self.network, x, self.level)


class LogProbEnsemble(nn.Module):
    """The mean of the members' log-softmax outputs.

    Averaging log-probabilities (a normalised geometric mean after the service's softmax)
    rather than logits keeps a member with larger logits from outvoting the others.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ExportError("an ensemble needs at least two networks")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logprobs = [torch.log_softmax(member(x).float(), dim=1) for member in self.members]
        return torch.stack(logprobs).mean(0)


def compose(networks: Sequence[nn.Module], tta: int) -> nn.Module:
    """One network, or the ensemble of several, each under TTA `tta` (0: as it is)."""
    members = [TTANetwork(n, tta) if tta else n for n in networks]
    module = members[0] if len(members) == 1 else LogProbEnsemble(members)
    return module.eval()


def _same(a: object, b: object) -> bool:
    """Equal; number lists (mean, std) within a rounding error."""
    if (
        isinstance(a, list | tuple)
        and isinstance(b, list | tuple)
        and len(a) == len(b)
        and all(isinstance(v, float | int) for v in (*a, *b))
    ):
        return all(
            math.isclose(float(x), float(y), abs_tol=_STAT_TOLERANCE)
            for x, y in zip(a, b, strict=True)
        )
    return a == b


def check_members(checkpoints: Sequence[Checkpoint], names: Sequence[str]) -> None:
    """Refuse members that do not take the same input or answer with the same labels.

    The validation split (`val_fraction`, `split_seed`) must match too: a member trained on
    another member's validation images would make the ensemble's measured accuracy a lie.
    """
    first = checkpoints[0].data
    for checkpoint, name in zip(checkpoints[1:], names[1:], strict=True):
        for spec in fields(DataInfo):
            if spec.name in _FREE_FIELDS:
                continue
            mine, theirs = getattr(first, spec.name), getattr(checkpoint.data, spec.name)
            if not _same(mine, theirs):
                raise ExportError(
                    f"{name} cannot join an ensemble with {names[0]}: its {spec.name} is "
                    f"{_short(theirs)}, not {_short(mine)}"
                )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def views_per_image(tta: int, members: int) -> int:
    """Network forward passes the composite graph runs per input image."""
    return TTA_VIEWS[tta] * members
