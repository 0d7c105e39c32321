"""Shared pieces of the training tests: a tiny, fast demo recipe, recipes shrunk to seconds,
one thread."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from training.datasets import dataset_spec
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


@dataclass(frozen=True)
class Shrink:
    """How a recipe is cut down for the test."""

    image_size: int
    epochs: int
    batch_size: int
    limit_per_class: int
    lr_scale: float = 1.0
    """Factor on the recipe's peak lr (1: the recipe's own)."""


def shrink_for(recipe: Recipe) -> Shrink:
    if recipe.model == "vgg19":  # five max-pools: 32 px is its floor
        # Batch 8 instead of 256: at the recipe's peak lr of 0.1 the loss jumps (0.69 -> 3.3
        # in the second epoch) and 8 steps end above where they began; at a quarter of it 16
        # steps bring it from 0.69 to 0.50 (measured; a few seconds on one thread).
        return Shrink(image_size=32, epochs=8, batch_size=8, limit_per_class=12, lr_scale=0.25)
    if recipe.model == "resnet50":
        # As VGG-19: batch 8 at the recipe's SGD peak lr of 0.1 ends above its first loss.
        return Shrink(image_size=16, epochs=4, batch_size=8, limit_per_class=12, lr_scale=0.25)
    if recipe.model == "resnet18":
        return Shrink(image_size=16, epochs=3, batch_size=16, limit_per_class=60)
    return Shrink(image_size=16, epochs=3, batch_size=16, limit_per_class=80)


def _shrunk_epoch_sizes(recipe: Recipe, s: Shrink, scale: float) -> tuple[int, ...]:
    """Progressive resizing kept in proportion: the same share of low-resolution epochs (at
    least one, and the last epoch at full size), their sides scaled with the image, 12 px at
    the least (fastnet's three max-pools need it)."""
    sizes = recipe.epoch_sizes
    if not sizes:
        return ()
    count = max(1, min(s.epochs - 1, round(len(sizes) * s.epochs / recipe.epochs)))
    picks = [sizes[i * len(sizes) // count] for i in range(count)]
    return tuple(min(s.image_size, max(12, round(size * scale))) for size in picks)


def shrunk(recipe: Recipe, s: Shrink) -> Recipe:
    # Pixel-sized augmentation shrinks with the image: butterfly's 16 px cutout at 16 px
    # would erase the whole picture.
    native = recipe.image_size or dataset_spec(recipe.dataset).image_size
    scale = s.image_size / native
    return recipe.override(
        image_size=s.image_size,
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=recipe.lr * s.lr_scale,
        crop_padding=round(recipe.crop_padding * scale),
        epoch_sizes=_shrunk_epoch_sizes(recipe, s, scale),
        cutout=round(recipe.cutout * scale),
        eval_batch_size=128,
        warmup_epochs=min(recipe.warmup_epochs, 0.5),
        whiten_images=min(recipe.whiten_images, 256),
        val_fraction=0.3,
        # An EMA horizon of 1,000 steps suits a 60-epoch run; for ~30 steps, shrink it alike.
        ema_decay=min(recipe.ema_decay, 0.8),
        # float32 so the exported graph and the checkpoint's figures agree exactly.
        amp="off",
        channels_last=False,
        compile=False,
    )
