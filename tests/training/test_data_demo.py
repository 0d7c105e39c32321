"""The embedded demo data set: deterministic, balanced, distinct splits, loadable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.datasets import load_data
from training.demo_data import DEMO_LABELS, demo_labels, generate_demo, write_demo_images


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_differs() -> None:
    images, labels = generate_demo(300, seed=11)
    again, labels_again = generate_demo(300, seed=11)
    other, _ = generate_demo(300, seed=12)
    assert _digest(images) == _digest(again)
    assert np.array_equal(labels, labels_again)
    assert _digest(images) != _digest(other)
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64


def test_classes_balanced_and_images_varied() -> None:
    images, labels = generate_demo(803, seed=1)
    counts = np.bincount(labels, minlength=len(DEMO_LABELS))
    assert counts.max() - counts.min() <= 1 and counts.sum() == 803
    # No two images alike, and each has real contrast (a shape on a background).
    assert len({_digest(img) for img in images}) == 803
    assert (images.reshape(803, -1).std(axis=1) > 10).all()


def test_load_demo_bundle() -> None:
    bundle = load_data("demo", progress=False)
    assert bundle.info.labels == demo_labels() == list(DEMO_LABELS)
    assert (bundle.info.height, bundle.info.width, bundle.info.channels) == (32, 32, 3)
    assert bundle.info.root is None and bundle.skipped == 0
    assert (len(bundle.train), len(bundle.val)) == (4000, 800)
    assert bundle.test is not None and len(bundle.test) == 800
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert split.images.shape[1:] == (3, 32, 32)
        assert split.class_counts(8) == [len(split) // 8] * 8
    # Three independent draws: no image of val or test appears in train.
    train = {hashlib.sha256(x.numpy().tobytes()).digest() for x in bundle.train.images}
    assert not any(hashlib.sha256(x.numpy().tobytes()).digest() in train for x in bundle.val.images)
    # mean / std are those of the train split, in [0, 1] units.
    pixels = bundle.train.images.double() / 255
    assert bundle.info.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    assert bundle.info.std == pytest.approx(pixels.std(dim=(0, 2, 3)).tolist(), abs=1e-4)


def test_demo_other_size_grayscale_and_limit() -> None:
    bundle = load_data("demo", image_size=48, channels=1, limit_per_class=5, progress=False)
    assert bundle.train.images.shape == (40, 1, 48, 48)
    assert bundle.val.images.shape == (40, 1, 48, 48)
    assert len(bundle.info.mean) == len(bundle.info.std) == 1
    assert bundle.info.height == bundle.info.width == 48


def test_write_demo_images(tmp_path: Path) -> None:
    paths = write_demo_images(tmp_path / "out", 12, seed=3)
    images, labels = generate_demo(12, seed=3)
    assert [p.name for p in paths] == [f"{DEMO_LABELS[y]}_{i}.png" for i, y in enumerate(labels)]
    for path, expected in zip(paths, images, strict=True):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert np.array_equal(np.asarray(image), expected)


def test_early_stop_is_a_prefix_of_the_full_set() -> None:
    full, full_labels = generate_demo(1200, seed=9)
    part, part_labels = generate_demo(1200, seed=9, enough_per_class=3)
    assert 24 <= len(part) < 1200
    assert np.bincount(part_labels, minlength=8).min() >= 3
    assert np.array_equal(part, full[: len(part)])
    assert np.array_equal(part_labels, full_labels[: len(part)])
