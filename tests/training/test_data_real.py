"""The real data sets (../shared/data) through their loaders: classes, shapes, splits.

Skips with a reason when the tarballs are absent (see tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.datasets import load_data

pytestmark = pytest.mark.shared_data

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def test_cifar10_subset(cifar10_subset: Path, tmp_path: Path) -> None:
    bundle = load_data("cifar10", cifar10_subset, cache_dir=tmp_path, progress=False)
    assert bundle.info.labels == CIFAR10_CLASSES
    assert bundle.train.images.shape == (1800, 3, 32, 32)
    assert bundle.val.images.shape == (200, 3, 32, 32)
    assert bundle.val.class_counts(10) == [20] * 10  # stratified 10 % of 200 per class
    assert bundle.test is None and bundle.skipped == 0
    # Natural photos: channel means near CIFAR-10's published (0.49, 0.48, 0.45).
    assert bundle.info.mean == pytest.approx([0.49, 0.48, 0.45], abs=0.03)
    assert all(0.2 < s < 0.3 for s in bundle.info.std)


def test_fer2013_subset(fer2013_subset: Path, tmp_path: Path) -> None:
    bundle = load_data("fer2013", fer2013_subset, cache_dir=tmp_path, progress=False)
    assert bundle.info.labels == FER2013_CLASSES
    assert (bundle.info.channels, bundle.info.height, bundle.info.width) == (1, 48, 48)
    assert bundle.train.images.shape[1:] == (1, 48, 48)
    assert len(bundle.train) + len(bundle.val) == 7 * 40
    assert bundle.val.class_counts(7) == [4] * 7


def test_butterfly_sample_native_and_resized(butterfly_sample: Path, tmp_path: Path) -> None:
    native = load_data("butterfly", butterfly_sample, limit_per_class=1, progress=False)
    assert len(native.info.labels) == 100
    assert any(" " in label for label in native.info.labels)  # e.g. "LUNA MOTH"
    assert native.train.images.shape == (100, 3, 224, 224)
    assert native.val.images.shape == (100, 3, 224, 224)  # the official `valid` split

    small = load_data(
        "butterfly", butterfly_sample, image_size=64, cache_dir=tmp_path, progress=False
    )
    assert small.info.labels == native.info.labels
    assert (small.info.height, small.info.width) == (64, 64)
    assert small.train.images.shape == (600, 3, 64, 64)
    assert small.val.images.shape == (500, 3, 64, 64)
    assert small.train.class_counts(100) == [6] * 100
    assert small.val.class_counts(100) == [5] * 100
    # Downscaled, not cropped to a corner: the mean colour of an image survives resizing.
    first_native = native.train.images[0].double().mean(dim=(1, 2))
    first_small = small.train.images[0].double().mean(dim=(1, 2))
    assert torch.allclose(first_native, first_small, atol=4.0)
