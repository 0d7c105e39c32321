"""Fixed-seed, stratified train / validation splits for data sets that ship without one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def stratified_split(
    labels: torch.Tensor | Sequence[int], fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into (train, val), keeping each class's share in both parts.

    Each class with n samples gives `round(n * fraction)` of them to validation, but at least
    one when n >= 2 and never all of them, so every class stays trainable and (where possible)
    measurable. The choice depends only on `labels`, `fraction` and `seed`. Both index tensors
    are int64 and sorted ascending, so the split keeps the data set's order.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    # numpy for the bookkeeping (torch.unique / nonzero are slow on a busy CPU); the draws come
    # from a seeded torch generator, one permutation per class in ascending class order.
    target = np.asarray(torch.as_tensor(labels, dtype=torch.int64).reshape(-1).numpy())
    generator = torch.Generator().manual_seed(seed)
    is_val = np.zeros(target.shape[0], dtype=bool)
    for cls in np.unique(target).tolist():
        members = np.flatnonzero(target == cls)
        n = members.size
        if n < 2:
            continue
        n_val = min(max(round(n * fraction), 1), n - 1)
        order = torch.randperm(n, generator=generator).numpy()
        is_val[members[order[:n_val]]] = True
    train = torch.from_numpy(np.flatnonzero(~is_val).astype(np.int64))
    val = torch.from_numpy(np.flatnonzero(is_val).astype(np.int64))
    return train, val
