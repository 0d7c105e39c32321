"""Loading data sets from files: image folders, the CIFAR batch format, caching, bad input."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import training.datasets as datasets
from imgzoo.errors import UserError
from training.datasets import DataError, dataset_names, default_image_size, load_data

# One distinct colour per class, so a decoded pixel tells which class folder it came from.
COLOURS = {"apple": (200, 30, 30), "kiwi": (30, 200, 30), "plum": (30, 30, 200)}


def _write(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _tree(root: Path, split: str | None, per_class: int, size: tuple[int, int] = (12, 12)) -> Path:
    base = root / split if split else root
    for name, colour in COLOURS.items():
        for i in range(per_class):
            # Vary one channel per image so images differ within a class.
            _write(base / name / f"{i:03d}.png", (colour[0], colour[1], colour[2] - i % 20), size)
    return root


def _class_of(images: torch.Tensor) -> list[str]:
    """Which class colour each image is, from its green / red channel."""
    names = []
    for image in images:
        red, green = int(image[0, 0, 0]), int(image[1, 0, 0])
        names.append("apple" if red > 100 else "kiwi" if green > 100 else "plum")
    return names


def _names(bundle_labels: torch.Tensor, labels: list[str]) -> list[str]:
    return [labels[i] for i in bundle_labels.tolist()]


def test_dataset_names_and_sizes() -> None:
    assert dataset_names() == ["butterfly", "cifar10", "demo", "fer2013", "folder"]
    sizes = {name: default_image_size(name) for name in ("butterfly", "cifar10", "demo", "fer2013")}
    assert sizes == {"butterfly": 224, "cifar10": 32, "demo": 32, "fer2013": 48}


def test_split_layout_uses_official_val_and_test(tmp_path: Path) -> None:
    root = _tree(tmp_path, "train", 6)
    _tree(tmp_path, "valid", 2)
    _tree(tmp_path, "test", 3)
    bundle = load_data("folder", root, progress=False)
    info = bundle.info
    assert info.labels == ["apple", "kiwi", "plum"]
    assert (info.height, info.width, info.channels) == (12, 12, 3)
    assert info.root == str(root.resolve())
    assert (len(bundle.train), len(bundle.val)) == (18, 6)  # official val: nothing carved
    assert bundle.test is not None and len(bundle.test) == 9
    for split in (bundle.train, bundle.val, bundle.test):
        assert split.images.shape[1:] == (3, 12, 12) and split.images.dtype == torch.uint8
        assert _class_of(split.images) == _names(split.labels, info.labels)
    assert info.mean[0] == pytest.approx(np.mean([200, 30, 30]) / 255, abs=1e-6)


def test_flat_layout_carves_a_stratified_fixed_seed_val(tmp_path: Path) -> None:
    root = _tree(tmp_path, None, 10)
    bundle = load_data("folder", root, val_fraction=0.2, split_seed=4, progress=False)
    assert bundle.test is None
    assert bundle.train.class_counts(3) == [8, 8, 8]
    assert bundle.val.class_counts(3) == [2, 2, 2]
    assert (bundle.info.val_fraction, bundle.info.split_seed) == (0.2, 4)
    again = load_data("folder", root, val_fraction=0.2, split_seed=4, progress=False)
    other = load_data("folder", root, val_fraction=0.2, split_seed=5, progress=False)
    assert torch.equal(again.val.images, bundle.val.images)
    assert not torch.equal(other.val.images, bundle.val.images)
    # Every image ends up in exactly one of train / val.
    everything = torch.cat([bundle.train.images, bundle.val.images]).flatten(1)
    assert torch.unique(everything, dim=0).shape[0] == 30


def test_empty_class_folders_are_ignored(tmp_path: Path, caplog) -> None:
    root = _tree(tmp_path, "train", 2)
    (root / "train" / "empty").mkdir()
    (root / "test" / "empty").mkdir(parents=True)
    _write(root / "test" / "kiwi" / "1.png", COLOURS["kiwi"])
    with caplog.at_level(logging.WARNING):
        bundle = load_data("folder", root, val_fraction=0.5, progress=False)
    assert bundle.info.labels == ["apple", "kiwi", "plum"]
    assert "ignoring 1 empty class folder" in caplog.text
    assert bundle.test is not None and bundle.test.labels.tolist() == [1]


def test_folder_size_from_first_image_resize_and_grayscale(tmp_path: Path) -> None:
    root = _tree(tmp_path, "train", 3, size=(20, 14))
    native = load_data("folder", root, progress=False)
    assert native.train.images.shape[1:] == (3, 14, 14)  # shorter side of the first image
    small = load_data("folder", root, image_size=8, channels=1, progress=False)
    assert small.train.images.shape[1:] == (1, 8, 8)
    assert small.info.channels == 1 and len(small.info.mean) == 1
    # L = (299 R + 587 G + 114 B) / 1000 of a uniform apple image.
    apple = small.train.images[small.train.labels == 0]
    assert int(apple[0, 0, 4, 4]) == round((299 * 200 + 587 * 30 + 114 * 30) / 1000)


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 255, 0), (10, 0, 20, 10))
    image.paste((0, 0, 255), (20, 0, 30, 10))
    for name in ("a", "b"):
        for i in range(2):
            path = tmp_path / "train" / name / f"wide{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
    bundle = load_data("folder", tmp_path, image_size=10, val_fraction=0.5, progress=False)
    pixels = torch.cat([bundle.train.images, bundle.val.images])
    assert (pixels[:, 1] == 255).all() and (pixels[:, 0] == 0).all()


def test_cifar10_image_folder_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path, "train", 4, size=(32, 32))
    bundle = load_data("cifar10", root, progress=False)
    assert bundle.train.images.shape[1:] == (3, 32, 32)
    assert len(bundle.train) + len(bundle.val) == 12


def _write_cifar_batches(directory: Path, per_batch: int = 10, *, test: bool = True) -> None:
    """The real `cifar-10-batches-py` format, tiny: pickled dicts of bytes keys."""
    directory.mkdir(parents=True)
    names = [n.encode() for n in ("airplane", "automobile", "bird")]
    with (directory / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    rng = np.random.default_rng(0)
    batches = [f"data_batch_{i}" for i in range(1, 6)] + (["test_batch"] if test else [])
    for name in batches:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [i % 3 for i in range(per_batch)]
        with (directory / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data}, f)


def _batch_data(directory: Path, name: str) -> np.ndarray:
    with (directory / name).open("rb") as f:
        return pickle.load(f, encoding="bytes")[b"data"]


@pytest.mark.parametrize("point_at", ["parent", "batches"])
def test_cifar10_batches_format(tmp_path: Path, point_at: str) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    _write_cifar_batches(directory)
    root = tmp_path if point_at == "parent" else directory
    bundle = load_data("cifar10", root, val_fraction=0.2, progress=False)
    assert bundle.info.labels == ["airplane", "automobile", "bird"]
    assert len(bundle.train) + len(bundle.val) == 50 and len(bundle.val) == 10
    assert bundle.test is not None
    expected_test = torch.from_numpy(_batch_data(directory, "test_batch").reshape(-1, 3, 32, 32))
    assert torch.equal(bundle.test.images, expected_test)  # channel-major rows, exactly
    assert bundle.test.labels.tolist() == [i % 3 for i in range(10)]
    first = torch.from_numpy(_batch_data(directory, "data_batch_1")[0].reshape(3, 32, 32))
    everything = torch.cat([bundle.train.images, bundle.val.images])
    assert (everything == first).flatten(1).all(1).any()


def test_cifar10_batches_resized_and_grey(tmp_path: Path) -> None:
    _write_cifar_batches(tmp_path / "cifar-10-batches-py", test=False)
    bundle = load_data("cifar10", tmp_path, image_size=16, channels=1, progress=False)
    assert bundle.train.images.shape[1:] == (1, 16, 16) and bundle.test is None


def test_cifar10_incomplete_batches(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    _write_cifar_batches(directory)
    (directory / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"incomplete cifar-10-batches-py.*data_batch_3"):
        load_data("cifar10", tmp_path, progress=False)


def test_cifar10_download_offline_is_one_line(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[str, bool, bool]] = []

    class OfflineCIFAR10:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, train, download))
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # A stand-in for torchvision.datasets: no network, and no slow torchvision import.
    monkeypatch.setitem(
        sys.modules, "torchvision.datasets", types.SimpleNamespace(CIFAR10=OfflineCIFAR10)
    )
    with pytest.raises(DataError, match=r"cannot download CIFAR-10.*offline") as info:
        load_data("cifar10", tmp_path / "dl", download=True, progress=False)
    assert "\n" not in str(info.value)
    assert calls == [(str((tmp_path / "dl").resolve()), True, True)]


def _count_decodes(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = datasets.decode_files

    def counting(files, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(files))
        return real(files, **kwargs)

    monkeypatch.setattr(datasets, "decode_files", counting)
    return calls


def test_cache_hit_equal_and_invalidated_by_a_changed_file(tmp_path: Path, monkeypatch) -> None:
    root = _tree(tmp_path / "data", "train", 5)
    _tree(tmp_path / "data", "test", 2)
    cache = tmp_path / "cache"
    calls = _count_decodes(monkeypatch)
    first = load_data("folder", root, cache_dir=cache, progress=False)
    assert calls == [15, 6] and len(list(cache.glob("*.pt"))) == 2
    second = load_data("folder", root, cache_dir=cache, progress=False)
    assert calls == [15, 6]  # served from the cache: nothing decoded again
    for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
        assert b is not None and a is not None
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert first.info == second.info

    changed = root / "train" / "plum" / "000.png"
    _write(changed, (1, 2, 3))
    os.utime(changed, ns=(1, 1))
    third = load_data("folder", root, cache_dir=cache, progress=False)
    assert calls == [15, 6, 15]  # only the changed split is decoded again
    everything = torch.cat([third.train.images, third.val.images])
    assert (everything[:, :, 0, 0] == torch.tensor([1, 2, 3], dtype=torch.uint8)).all(1).any()
    assert len(list(cache.glob("folder-train-*.pt"))) == 1  # the stale entry was replaced

    load_data("folder", root, cache_dir=cache, image_size=6, progress=False)
    assert calls[-2:] == [15, 6]  # another size is another key


def test_damaged_cache_entry_is_rebuilt(tmp_path: Path, monkeypatch, caplog) -> None:
    root = _tree(tmp_path / "data", "train", 4)
    cache = tmp_path / "cache"
    first = load_data("folder", root, cache_dir=cache, progress=False)
    for entry in cache.glob("*.pt"):
        entry.write_bytes(b"not a torch file")
    calls = _count_decodes(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = load_data("folder", root, cache_dir=cache, progress=False)
    assert calls == [12]
    assert "unreadable cache entry" in caplog.text
    assert torch.equal(first.train.images, again.train.images)


def test_corrupt_and_non_image_files_skipped_and_counted(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    root = _tree(tmp_path / "data", "train", 4)
    good = (root / "train" / "apple" / "000.png").read_bytes()
    (root / "train" / "apple" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "kiwi" / "empty.jpg").write_bytes(b"")
    (root / "train" / "kiwi" / "notes.txt").write_text("not an image")
    (root / "train" / "plum" / "random.jpg").write_bytes(os.urandom(300))
    (root / "train" / "plum" / ".DS_Store").write_bytes(b"hidden: ignored, not counted")
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        bundle = load_data("folder", root, cache_dir=cache, progress=False)
    assert bundle.skipped == 4
    assert len(bundle.train) + len(bundle.val) == 12
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 4" in warnings[0].getMessage()
    calls = _count_decodes(monkeypatch)
    assert load_data("folder", root, cache_dir=cache, progress=False).skipped == 4
    assert calls == []  # the count survives the cache


def _only_corrupt(root: Path) -> Path:
    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        (root / "train" / name / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return root


def _one_class(root: Path) -> Path:
    _write(root / "train" / "solo" / "1.png", (1, 2, 3))
    return root


def _empty_classes(root: Path) -> Path:
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "b").mkdir(parents=True)
    return root


def _files_in_root(root: Path) -> Path:
    _write(root / "x.png", (1, 2, 3))
    return root


def _val_class_unknown(root: Path) -> Path:
    _tree(root, "train", 2)
    _write(root / "val" / "durian" / "1.png", (1, 2, 3))
    return root


@pytest.mark.parametrize(
    ("name", "make", "kwargs", "message"),
    [
        ("nope", None, {}, "unknown data set 'nope'; choose one of: butterfly, cifar10, demo"),
        ("folder", lambda p: p / "missing", {}, "does not exist"),
        ("folder", lambda p: p, {}, "is empty"),
        (
            "fer2013",
            lambda p: _tree(p, None, 2),
            {},
            "wrong layout: expected the Kaggle layout "
            r"train\|test/<emotion>/\*\.jpg",
        ),
        ("folder", _files_in_root, {}, "wrong layout: expected root/train/<class>"),
        ("folder", _empty_classes, {}, "no images found"),
        ("folder", _one_class, {}, "found only 1 class.*at least 2"),
        ("folder", _only_corrupt, {}, "no readable images"),
        ("folder", _val_class_unknown, {}, "class folder 'durian' does not exist in the training"),
        (
            "butterfly",
            lambda p: p,
            {"download": True},
            "cannot be downloaded automatically.*Kaggle",
        ),
        ("fer2013", lambda p: p, {"download": True}, "cannot be downloaded automatically.*Kaggle"),
        ("fer2013", None, {}, "needs a data directory"),
        ("demo", None, {"channels": 2}, "channels must be 1"),
        ("demo", None, {"image_size": 0}, "image size must be between"),
        ("demo", None, {"val_fraction": 1.0}, "validation fraction"),
        ("demo", None, {"limit_per_class": 0}, "limit per class"),
        ("demo", None, {"resize": "squash"}, "unknown resize policy 'squash'"),
        ("folder", lambda p: _tree(p, None, 2), {"val_fraction": 0.0}, "no validation split"),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, name, make, kwargs, message: str) -> None:
    root = make(tmp_path) if make is not None else None
    with pytest.raises(DataError, match=message) as info:
        load_data(name, root, progress=False, **kwargs)
    assert isinstance(info.value, UserError)
    assert "\n" not in str(info.value)


def test_root_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(DataError, match="is not a directory"):
        load_data("folder", target, progress=False)
