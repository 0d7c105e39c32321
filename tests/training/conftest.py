"""Shared pieces of the training-loop tests: a tiny, fast demo recipe, one thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from training.recipes import Recipe, get_recipe


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared, oversubscribed 2-core box, two spinning OpenMP
    threads per process run several times slower than one (measured 11 vs 59 images/s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_recipe(**changes: object) -> Recipe:
    """demo_fastnet with small batches and a short warm-up: seconds per epoch on a CPU."""
    base = get_recipe("demo_fastnet").override(
        epochs=3,
        batch_size=32,
        eval_batch_size=256,
        lr=0.1,
        warmup_epochs=0.5,
        whiten_images=256,
    )
    return base.override(**changes)
