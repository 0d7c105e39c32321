"""Shared pieces of the training-loop tests: a tiny, fast demo recipe."""

from __future__ import annotations

from training.recipes import Recipe, get_recipe


def tiny_recipe(**changes: object) -> Recipe:
    """demo_fastnet at 16 px with small batches: seconds per epoch on a busy 2-core CPU."""
    base = get_recipe("demo_fastnet").override(
        image_size=16,
        epochs=3,
        batch_size=32,
        eval_batch_size=256,
        lr=0.1,
        warmup_epochs=0.5,
        crop_padding=1,
        whiten_images=256,
    )
    return base.override(**changes)
