"""Stratified validation splits: proportions per class, determinism, a true partition."""

from __future__ import annotations

import pytest
import torch

from training.splits import stratified_split


def _labels() -> torch.Tensor:
    counts = {0: 500, 1: 120, 2: 37, 3: 2, 4: 1}
    labels = torch.cat([torch.full((n,), c) for c, n in counts.items()])
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]


def test_partition_and_proportions_per_class() -> None:
    labels = _labels()
    train, val = stratified_split(labels, 0.2, seed=3)
    assert train.dtype == val.dtype == torch.int64
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(labels.numel()))
    assert torch.equal(train, torch.sort(train).values)
    assert torch.equal(val, torch.sort(val).values)
    val_counts = torch.bincount(labels[val], minlength=5).tolist()
    # round(n * 0.2), at least 1 where a class has 2+, none where it has 1.
    assert val_counts == [100, 24, 7, 1, 0]


def test_same_seed_same_split_other_seed_differs() -> None:
    labels = _labels()
    first = stratified_split(labels, 0.1, seed=5)
    again = stratified_split(labels.tolist(), 0.1, seed=5)
    other = stratified_split(labels, 0.1, seed=6)
    assert torch.equal(first[1], again[1]) and torch.equal(first[0], again[0])
    assert not torch.equal(first[1], other[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5])
def test_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        stratified_split([0, 1, 0, 1], fraction, seed=0)
