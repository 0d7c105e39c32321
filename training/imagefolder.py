"""Image-folder data sets on disk: find the layout, list the files, decode them in parallel.

Layouts (class folder names become labels, sorted):

    root/train/<class>/*  [root/val|valid/<class>/*]  [root/test/<class>/*]   split layout
    root/<class>/*                                                            flat layout

Every non-hidden file under a class folder is a candidate (sub-folders included); files that
do not decode as images are skipped and counted, never fatal.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from training.data_decode import DECODE_ERRORS, Pixels, decode_file, input_spec
from training.data_errors import DataError

logger = logging.getLogger(__name__)

TRAIN_DIRS = ("train",)
VAL_DIRS = ("val", "valid", "validation")
TEST_DIRS = ("test",)
DECODE_WORKERS = 2  # the target machines have few cores; more threads only contend
_CHUNK = 256  # files per decode task: amortises scheduling, keeps the progress bar live


@dataclass(frozen=True)
class ImageFile:
    """One candidate file; size and mtime feed the cache key.

    `path` is a plain string: data sets hold tens of thousands of files and building a
    `Path` for each costs more than listing them.
    """

    path: str
    label: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split (train, val or test) of an image folder."""

    split: str
    directory: Path
    files: list[ImageFile]


@dataclass(frozen=True)
class FolderLayout:
    """What was found under a root: class names (label order) and the files of each split."""

    root: Path
    classes: list[str]
    train: SplitFiles
    val: SplitFiles | None
    test: SplitFiles | None


@dataclass(frozen=True)
class Decoded:
    """Decoded images of one split: NHWC uint8, int64 labels, and the files that failed."""

    images: Pixels
    labels: npt.NDArray[np.int64]
    skipped: list[tuple[str, str]]


def _visible(name: str) -> bool:
    """Skip hidden files and archive debris (`.DS_Store`, `__MACOSX`)."""
    return not name.startswith(".") and name != "__MACOSX"


def _walk_files(directory: str | Path) -> Iterator[os.DirEntry[str]]:
    """Non-hidden regular files under `directory`, recursively, in sorted order."""
    with os.scandir(directory) as scan:
        entries = sorted((e for e in scan if _visible(e.name)), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            yield from _walk_files(entry.path)
        elif entry.is_file():
            yield entry


def _class_dirs(directory: Path) -> dict[str, Path]:
    with os.scandir(directory) as scan:
        return {e.name: Path(e.path) for e in scan if e.is_dir() and _visible(e.name)}


def _find_dir(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def check_root(root: Path, expected: str) -> None:
    """Raise a one-line DataError unless `root` is a non-empty directory."""
    if not root.exists():
        raise DataError(f"data directory {root} does not exist (expected {expected})")
    if not root.is_dir():
        raise DataError(f"data directory {root} is not a directory (expected {expected})")
    if not any(_visible(p.name) for p in root.iterdir()):
        raise DataError(f"data directory {root} is empty (expected {expected})")


def _list_split(
    split: str, directory: Path, classes: list[str], limit_per_class: int | None
) -> SplitFiles:
    index = {name: i for i, name in enumerate(classes)}
    files: list[ImageFile] = []
    for name, class_dir in sorted(_class_dirs(directory).items()):
        if name not in index:
            if next(_walk_files(class_dir), None) is None:
                continue  # an empty folder, like the empty training ones, is ignored
            raise DataError(
                f"{directory}: class folder {name!r} does not exist in the training split"
            )
        for entry in itertools.islice(_walk_files(class_dir), limit_per_class):
            stat = entry.stat()
            files.append(ImageFile(entry.path, index[name], stat.st_size, stat.st_mtime_ns))
    return SplitFiles(split, directory, files)


def find_layout(
    root: Path, *, expected: str, allow_flat: bool, limit_per_class: int | None = None
) -> FolderLayout:
    """Find the split or flat layout under `root` and list its files.

    `expected` describes the layout in error messages ("train/<class>/*.jpg ...").
    """
    try:
        return _find_layout(root, expected=expected, allow_flat=allow_flat, limit=limit_per_class)
    except OSError as exc:  # unreadable folders: permissions, a vanished mount
        raise DataError(f"{exc.filename or root}: cannot read ({exc.strerror or exc})") from None


def _find_layout(root: Path, *, expected: str, allow_flat: bool, limit: int | None) -> FolderLayout:
    check_root(root, expected)
    train_dir = _find_dir(root, TRAIN_DIRS)
    if train_dir is None:
        if not allow_flat or not _class_dirs(root):
            raise DataError(f"{root}: wrong layout: expected {expected}")
        train_dir = root
    class_dirs = _class_dirs(train_dir)
    if not class_dirs:
        raise DataError(f"{train_dir}: no class folders: expected {expected}")
    classes = sorted(
        name for name, path in class_dirs.items() if next(_walk_files(path), None) is not None
    )
    empty = sorted(set(class_dirs) - set(classes))
    if not classes:
        raise DataError(f"{train_dir}: no images found in its class folders (expected {expected})")
    if empty:
        logger.warning("%s: ignoring %d empty class folder(s): %s", train_dir, len(empty), empty)
    if len(classes) < 2:
        raise DataError(
            f"{train_dir}: found only 1 class ({classes[0]!r}); a classifier needs at least 2"
        )
    train = _list_split("train", train_dir, classes, limit)
    val_dir = _find_dir(root, VAL_DIRS) if train_dir != root else None
    test_dir = _find_dir(root, TEST_DIRS) if train_dir != root else None
    val = _list_split("val", val_dir, classes, limit) if val_dir else None
    test = _list_split("test", test_dir, classes, limit) if test_dir else None
    return FolderLayout(root, classes, train, val, test)


def decode_files(
    files: Sequence[ImageFile],
    *,
    height: int,
    width: int,
    channels: int,
    policy: str,
    interpolation: str,
    progress: bool = True,
    description: str = "decoding",
) -> Decoded:
    """Decode `files` with DECODE_WORKERS threads into one NHWC uint8 array.

    Pillow releases the GIL while decoding and resizing, so threads decode in parallel without
    the pickling cost of processes. Files that fail are left out and reported in `skipped`.
    """
    from tqdm import tqdm

    total = len(files)
    spec = input_spec(
        height=height, width=width, channels=channels, policy=policy, interpolation=interpolation
    )
    images = np.empty((total, height, width, channels), dtype=np.uint8)
    ok = np.ones(total, dtype=bool)
    skipped: list[tuple[str, str]] = []
    lock = threading.Lock()

    def work(start: int) -> int:
        stop = min(start + _CHUNK, total)
        for i in range(start, stop):
            try:
                decode_file(files[i].path, spec, images[i])
            except DECODE_ERRORS as exc:
                ok[i] = False
                with lock:
                    skipped.append((files[i].path, str(exc) or type(exc).__name__))
        return stop - start

    with (
        tqdm(
            total=total,
            desc=description,
            unit="img",
            disable=None if progress else True,  # None: only on a terminal
            leave=False,
        ) as bar,
        ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="decode") as pool,
    ):
        for done in pool.map(work, range(0, total, _CHUNK)):
            bar.update(done)
    labels = np.fromiter((f.label for f in files), dtype=np.int64, count=total)
    if not ok.all():
        images, labels = images[ok], labels[ok]
    skipped.sort()
    return Decoded(images, labels, skipped)
