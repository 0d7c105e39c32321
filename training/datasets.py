"""Data sets for training: everything arrives as uint8 NCHW tensors with int64 labels.

`load_data(name, root, ...)` returns a `DataBundle`: train / val / (test) `ImageSet`s and the
`DataInfo` that travels into checkpoints and manifests (labels, input size, channels, the
per-channel mean / std of the training split, resize policy, split seed).

Files are decoded once with Pillow (see `data_decode`) and cached on disk (see `cache`); data
sets without a validation split get a fixed-seed stratified one carved from train.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from imgzoo.manifest import INTERPOLATIONS, RESIZE_POLICIES
from training.cache import CachedSplit, SplitCache, cache_key
from training.checkpoint import DataInfo
from training.data_cifar import download_cifar10, find_batches_dir, read_batches
from training.data_decode import (
    DECODE_ERRORS,
    conform_array,
    input_spec,
    probe_size,
)
from training.data_errors import DataError
from training.demo_data import DEMO_IMAGE_SIZE, demo_labels, demo_split
from training.imagefolder import FolderLayout, SplitFiles, decode_files, find_layout
from training.splits import stratified_split

__all__ = [
    "DataBundle",
    "DataError",
    "DatasetSpec",
    "ImageSet",
    "dataset_names",
    "dataset_spec",
    "default_image_size",
    "load_data",
]

logger = logging.getLogger(__name__)

MAX_IMAGE_SIZE = 4096  # the manifest's limit on height / width
FOLDER_MAX_DEFAULT_SIZE = 256  # `folder` default size: the first image's, but at most this


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 [N, C, H, W] (contiguous, CPU) and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 NCHW, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be int64 with one entry per image")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """The images at `indices` (a copy)."""
        # numpy's take is several times faster than torch indexing for uint8 rows on CPU.
        picked = self.images.numpy().take(indices.numpy(), axis=0)
        return ImageSet(torch.from_numpy(picked), self.labels[indices].contiguous())

    def class_counts(self, num_classes: int) -> list[int]:
        """Images per class, index = label."""
        return [int(c) for c in torch.bincount(self.labels, minlength=num_classes)]


@dataclass(frozen=True)
class DataBundle:
    """A loaded data set: splits plus what checkpoints and manifests record about it."""

    info: DataInfo
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    skipped: int

    @property
    def num_classes(self) -> int:
        return len(self.info.labels)


@dataclass(frozen=True)
class DatasetSpec:
    """A named data set: native input, expected classes and how it is laid out on disk."""

    name: str
    image_size: int
    channels: int
    num_classes: int | None
    layout: str
    download_hint: str | None = None


_SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "butterfly",
            224,
            3,
            100,
            "the Kaggle layout train|valid|test/<SPECIES>/*.jpg",
            "download 'Butterfly & Moths Image Classification 100 species' (gpiosenka) from "
            "Kaggle, extract it and pass that directory",
        ),
        DatasetSpec(
            "cifar10",
            32,
            3,
            10,
            "cifar-10-batches-py (or a directory containing it), or train/<class>/*.png "
            "with optional test/",
        ),
        DatasetSpec("demo", DEMO_IMAGE_SIZE, 3, len(demo_labels()), "embedded (no files)"),
        DatasetSpec(
            "fer2013",
            48,
            1,
            7,
            "the Kaggle layout train|test/<emotion>/*.jpg",
            "download FER2013 (msambare/fer2013) from Kaggle, extract it and pass that directory",
        ),
        DatasetSpec(
            "folder",
            224,
            3,
            None,
            "root/train/<class>/* (optional val|valid/ and test/), or root/<class>/*",
        ),
    )
}


def dataset_names() -> list[str]:
    """Names `load_data` accepts, sorted."""
    return sorted(_SPECS)


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a named data set, or a DataError listing the names."""
    try:
        return _SPECS[name]
    except KeyError:
        raise DataError(
            f"unknown data set {name!r}; choose one of: {', '.join(dataset_names())}"
        ) from None


def default_image_size(name: str) -> int:
    """Native side length of a data set's images (`folder`: nominal 224; when loading, the
    first image's size is used instead)."""
    return dataset_spec(name).image_size


@dataclass(frozen=True)
class _Options:
    """The validated load settings shared by every loader."""

    name: str
    image_size: int | None
    channels: int
    resize: str
    interpolation: str
    limit_per_class: int | None
    cache: SplitCache
    progress: bool


@dataclass(frozen=True)
class _Loaded:
    """What a loader found, before validation carving and statistics; `size` is the side."""

    classes: list[str]
    size: int
    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    skipped: int


def _validate(
    name: str,
    *,
    image_size: int | None,
    channels: int | None,
    val_fraction: float,
    limit_per_class: int | None,
    resize: str,
    interpolation: str,
) -> DatasetSpec:
    spec = dataset_spec(name)
    if image_size is not None and not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise DataError(f"image size must be between 1 and {MAX_IMAGE_SIZE}, got {image_size}")
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if limit_per_class is not None and limit_per_class < 1:
        raise DataError(f"limit per class must be at least 1, got {limit_per_class}")
    if resize not in RESIZE_POLICIES:
        raise DataError(
            f"unknown resize policy {resize!r}; choose one of: {', '.join(RESIZE_POLICIES)}"
        )
    if interpolation not in INTERPOLATIONS:
        raise DataError(
            f"unknown interpolation {interpolation!r}; choose one of: {', '.join(INTERPOLATIONS)}"
        )
    return spec


def _nchw(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _limit(
    images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64], per_class: int | None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Keep the first `per_class` images of each class, in order."""
    if per_class is None:
        return images, labels
    keep = np.zeros(labels.shape[0], dtype=bool)
    for cls in np.unique(labels):
        keep[np.flatnonzero(labels == cls)[:per_class]] = True
    return images[keep], labels[keep]


def _load_demo(opts: _Options) -> _Loaded:
    size = opts.image_size or DEMO_IMAGE_SIZE
    if size < 8:
        raise DataError(f"the demo data set needs an image size of at least 8, got {size}")
    sets: list[ImageSet] = []
    for split in ("train", "val", "test"):
        images, labels = demo_split(
            split,
            image_size=size,
            channels=opts.channels,
            enough_per_class=opts.limit_per_class,
        )
        images, labels = _limit(images, labels, opts.limit_per_class)
        sets.append(ImageSet(_nchw(images), torch.from_numpy(labels)))
    return _Loaded(demo_labels(), size, sets[0], sets[1], sets[2], 0)


def _load_cifar_batches(directory: Path, opts: _Options) -> _Loaded:
    arrays = read_batches(directory)
    size = opts.image_size or 32

    def make(images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64]) -> ImageSet:
        images, labels = _limit(images, labels, opts.limit_per_class)
        spec = input_spec(
            height=size,
            width=size,
            channels=opts.channels,
            policy=opts.resize,
            interpolation=opts.interpolation,
        )
        nhwc = conform_array(images.transpose(0, 2, 3, 1), spec)
        return ImageSet(_nchw(nhwc), torch.from_numpy(np.ascontiguousarray(labels)))

    train = make(arrays.train_images, arrays.train_labels)
    test = None
    if arrays.test_images is not None and arrays.test_labels is not None:
        test = make(arrays.test_images, arrays.test_labels)
    return _Loaded(arrays.classes, size, train, None, test, 0)


def _first_image_size(layout: FolderLayout) -> int:
    """Shorter side of the first readable training image, capped at FOLDER_MAX_DEFAULT_SIZE."""
    for item in layout.train.files:
        try:
            width, height = probe_size(item.path)
        except DECODE_ERRORS:
            continue
        side = min(width, height)
        if side > FOLDER_MAX_DEFAULT_SIZE:
            logger.info(
                "first image is %dx%d; using %d px (pass an image size to change it)",
                width,
                height,
                FOLDER_MAX_DEFAULT_SIZE,
            )
            return FOLDER_MAX_DEFAULT_SIZE
        return side
    raise DataError(f"{layout.train.directory}: no readable images found")


def _decode_split(
    split: SplitFiles, root: Path, size: int, classes: list[str], opts: _Options
) -> tuple[ImageSet, int]:
    """Decode one split, through the cache. Returns the images and the number skipped."""
    settings = {
        "classes": classes,
        "size": size,
        "channels": opts.channels,
        "resize": opts.resize,
        "interpolation": opts.interpolation,
    }
    key = cache_key(split.files, settings)
    cached = opts.cache.load(opts.name, split.split, root, key)
    if cached is not None:
        logger.debug("%s %s: %d images from the cache", opts.name, split.split, len(cached.labels))
        return ImageSet(cached.images, cached.labels), cached.skipped
    started = time.perf_counter()
    decoded = decode_files(
        split.files,
        height=size,
        width=size,
        channels=opts.channels,
        policy=opts.resize,
        interpolation=opts.interpolation,
        progress=opts.progress,
        description=f"{opts.name} {split.split}",
    )
    if decoded.skipped:
        first, reason = decoded.skipped[0]
        logger.warning(
            "%s: skipped %d unreadable or non-image file(s) (first: %s: %s)",
            split.directory,
            len(decoded.skipped),
            first,
            reason,
        )
    if decoded.labels.size == 0:
        raise DataError(f"{split.directory}: no readable images found")
    images = ImageSet(_nchw(decoded.images), torch.from_numpy(decoded.labels))
    logger.debug(
        "%s %s: decoded %d images in %.1fs",
        opts.name,
        split.split,
        len(images),
        time.perf_counter() - started,
    )
    opts.cache.store(
        opts.name,
        split.split,
        root,
        key,
        CachedSplit(images.images, images.labels, len(decoded.skipped)),
    )
    return images, len(decoded.skipped)


def _load_folder(root: Path, spec: DatasetSpec, opts: _Options, *, allow_flat: bool) -> _Loaded:
    layout = find_layout(
        root, expected=spec.layout, allow_flat=allow_flat, limit_per_class=opts.limit_per_class
    )
    if spec.num_classes is not None and len(layout.classes) != spec.num_classes:
        logger.warning(
            "%s: found %d classes, %s has %d",
            root,
            len(layout.classes),
            spec.name,
            spec.num_classes,
        )
    size = opts.image_size or (
        _first_image_size(layout) if spec.name == "folder" else spec.image_size
    )
    train, skipped = _decode_split(layout.train, layout.root, size, layout.classes, opts)
    val = test = None
    for split in (layout.val, layout.test):
        if split is None:
            continue
        if not split.files:
            logger.warning("%s: split folder is empty; ignoring it", split.directory)
            continue
        images, count = _decode_split(split, layout.root, size, layout.classes, opts)
        skipped += count
        if split.split == "val":
            val = images
        else:
            test = images
    return _Loaded(layout.classes, size, train, val, test, skipped)


def _channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, exact (integer sums), in bounded memory.

    Squares of uint8 values fit in uint16, so each chunk needs one small temporary and the
    int64 sums are exact; numpy does this several times faster than torch on a busy CPU.
    """
    array = images.numpy()
    n, channels = array.shape[:2]
    flat = array.reshape(n, channels, -1)
    total = np.zeros(channels, dtype=np.int64)
    squares = np.zeros(channels, dtype=np.int64)
    chunk = max(1, (1 << 22) // max(1, flat[0].size))
    for start in range(0, n, chunk):
        part = flat[start : start + chunk].astype(np.uint16)
        total += part.sum(axis=(0, 2), dtype=np.int64)
        part *= part
        squares += part.sum(axis=(0, 2), dtype=np.int64)
    count = n * flat.shape[2]
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    # A constant channel would divide by zero in Normalize; one grey level is the floor.
    std = np.maximum(np.sqrt(var), 1.0)
    return [round(float(m) / 255.0, 6) for m in mean], [round(float(s) / 255.0, 6) for s in std]


def _resolve_root(
    name: str, spec: DatasetSpec, root: Path | None, download: bool, cache_dir: Path | None
) -> Path:
    if download and spec.download_hint is not None:
        raise DataError(f"{name} cannot be downloaded automatically: {spec.download_hint}")
    if root is not None:
        return root.expanduser().resolve()
    if download and cache_dir is not None:
        return (cache_dir / "downloads" / name).resolve()
    raise DataError(f"the {name} data set needs a data directory (expected {spec.layout})")


def load_data(
    name: str,
    root: Path | None = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool = False,
    cache_dir: Path | None = None,
    limit_per_class: int | None = None,
    progress: bool = True,
    resize: str = "center_crop",
    interpolation: str = "bilinear",
) -> DataBundle:
    """Load data set `name` (see `dataset_names()`) as uint8 tensors.

    root: the data directory (not used by `demo`). image_size / channels: output size (square)
    and channel count; default: the data set's native ones (`folder`: the shorter side of
    the first training image, at most 256 px, and RGB). val_fraction / split_seed: the
    stratified validation split carved from train when the data set has none. download: fetch
    `cifar10` with torchvision into root (or `cache_dir/downloads/cifar10`). cache_dir: where
    decoded splits are cached (None: no cache; the CLI passes `cache.default_cache_dir()`).
    limit_per_class: keep at most this many images per class and split (quick runs).
    resize / interpolation: how images of another size are brought to image_size.
    """
    spec = _validate(
        name,
        image_size=image_size,
        channels=channels,
        val_fraction=val_fraction,
        limit_per_class=limit_per_class,
        resize=resize,
        interpolation=interpolation,
    )
    opts = _Options(
        name=name,
        image_size=image_size,
        channels=channels or spec.channels,
        resize=resize,
        interpolation=interpolation,
        limit_per_class=limit_per_class,
        cache=SplitCache(cache_dir),
        progress=progress,
    )
    started = time.perf_counter()
    resolved: Path | None = None
    if name == "demo":
        loaded = _load_demo(opts)
    else:
        resolved = _resolve_root(name, spec, root, download, cache_dir)
        loaded = _load_named(name, spec, resolved, opts, download)

    train, val = loaded.train, loaded.val
    if val is None:
        if val_fraction <= 0.0:
            raise DataError(f"{name} has no validation split: pass a validation fraction in (0, 1)")
        train_idx, val_idx = stratified_split(train.labels, val_fraction, split_seed)
        if val_idx.numel() == 0:
            raise DataError(
                f"{name}: too few images to carve a validation split (need 2 per class)"
            )
        train, val = train.subset(train_idx), train.subset(val_idx)
    mean, std = _channel_stats(train.images)
    info = DataInfo(
        dataset=name,
        labels=loaded.classes,
        height=loaded.size,
        width=loaded.size,
        channels=opts.channels,
        mean=mean,
        std=std,
        root=str(resolved) if resolved is not None else None,
        resize=resize,
        interpolation=interpolation,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )
    test = loaded.test
    logger.info(
        "%s: %d train / %d val / %s test images, %d classes, %dx%dx%d%s (%.1fs)",
        name,
        len(train),
        len(val),
        len(test) if test is not None else "no",
        len(info.labels),
        info.channels,
        info.height,
        info.width,
        f", {loaded.skipped} files skipped" if loaded.skipped else "",
        time.perf_counter() - started,
    )
    return DataBundle(info=info, train=train, val=val, test=test, skipped=loaded.skipped)


def _load_named(
    name: str, spec: DatasetSpec, root: Path, opts: _Options, download: bool
) -> _Loaded:
    loaders: dict[str, Callable[[], _Loaded]] = {
        "cifar10": lambda: _load_cifar10(root, spec, opts, download),
        "folder": lambda: _load_folder(root, spec, opts, allow_flat=True),
    }
    loader = loaders.get(name, lambda: _load_folder(root, spec, opts, allow_flat=False))
    return loader()


def _load_cifar10(root: Path, spec: DatasetSpec, opts: _Options, download: bool) -> _Loaded:
    batches = find_batches_dir(root) if root.is_dir() else None
    # Images already there in the folder layout (`train/<class>/`) are used, not downloaded.
    if batches is None and download and not (root / "train").is_dir():
        batches = download_cifar10(root)
    if batches is not None:
        return _load_cifar_batches(batches, opts)
    return _load_folder(root, spec, opts, allow_flat=False)


def load_data_like(
    info: DataInfo, root: Path | None, *, cache_dir: Path | None = None, progress: bool = True
) -> DataBundle:
    """Reload the data set a checkpoint was trained on, split and prepared exactly as then.

    `root` overrides `info.root` (the data may have moved since training).
    """
    if root is None and info.root:
        root = Path(info.root)
    return load_data(
        info.dataset,
        root,
        image_size=info.height,
        channels=info.channels,
        val_fraction=info.val_fraction,
        split_seed=info.split_seed,
        cache_dir=cache_dir,
        progress=progress,
        resize=info.resize,
        interpolation=info.interpolation,
    )
