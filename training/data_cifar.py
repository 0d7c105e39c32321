"""CIFAR-10 in torchvision's `cifar-10-batches-py` format, and its download.

The format: pickled dicts `data_batch_1..5` (train) and `test_batch`, each with `data`
(N x 3072 uint8, channel-major: 1024 red, 1024 green, 1024 blue values per image) and
`labels`; `batches.meta` holds `label_names`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.data_errors import DataError

BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"


@dataclass(frozen=True)
class CifarArrays:
    """The decoded format: NCHW uint8 images and int64 labels per split."""

    classes: list[str]
    train_images: npt.NDArray[np.uint8]
    train_labels: npt.NDArray[np.int64]
    test_images: npt.NDArray[np.uint8] | None
    test_labels: npt.NDArray[np.int64] | None


def find_batches_dir(root: Path) -> Path | None:
    """`root` itself or `root/cifar-10-batches-py`, whichever holds the batches; else None."""
    for candidate in (root, root / BATCHES_DIR):
        if (candidate / META).is_file() or (candidate / TRAIN_BATCHES[0]).is_file():
            return candidate
    return None


def _unpickle(path: Path) -> dict[Any, Any]:
    try:
        with path.open("rb") as handle:
            # The format is pickled by its publishers; only load directories the user points at.
            raw = pickle.load(handle, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path.parent}: incomplete {BATCHES_DIR} (missing {path.name})") from None
    except Exception as exc:  # pickle raises many types for damaged files
        raise DataError(f"{path}: unreadable CIFAR batch ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: not a CIFAR batch (expected a pickled dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _read_batch(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    batch = _unpickle(path)
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if labels.shape != (images.shape[0],):
        raise DataError(f"{path}: {images.shape[0]} images but {labels.size} labels")
    return images, labels


def read_batches(directory: Path) -> CifarArrays:
    """Read every batch of the format; the test batch is optional."""
    meta = _unpickle(directory / META)
    names = meta.get("label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{directory / META}: has no label_names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    parts = [_read_batch(directory / name) for name in TRAIN_BATCHES]
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    test_images = test_labels = None
    if (directory / TEST_BATCH).is_file():
        test_images, test_labels = _read_batch(directory / TEST_BATCH)
    for labels in (train_labels, test_labels):
        if (
            labels is not None
            and labels.size
            and (labels.min() < 0 or labels.max() >= len(classes))
        ):
            raise DataError(f"{directory}: labels outside 0..{len(classes) - 1}")
    return CifarArrays(classes, train_images, train_labels, test_images, test_labels)


def download_cifar10(root: Path) -> Path:
    """Download (or verify) CIFAR-10 into `root/cifar-10-batches-py` with torchvision."""
    from torchvision.datasets import CIFAR10

    try:
        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=True, download=True)
    except OSError as exc:  # URLError, socket errors and a full disk are all OSErrors
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise DataError(
            f"cannot download CIFAR-10 into {root} (offline? {reason}); download "
            "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it "
            "there and run without --download"
        ) from None
    except RuntimeError as exc:  # torchvision: corrupted download / checksum mismatch
        raise DataError(f"CIFAR-10 download into {root} failed: {exc}") from None
    return root / BATCHES_DIR
