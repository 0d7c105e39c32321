"""On-disk cache of decoded splits, so a data set is decoded once, not on every run.

A cache entry is one `torch.save` file per split, named after the data set, the split, the
root and a key. The key hashes everything that changes the decoded pixels: every file's path,
size and modification time, the class list, the output size and channels, the resize policy
and interpolation, and the cache format. Changing any file therefore misses the cache and
rebuilds it. Entries are written to a temporary file and renamed, so a crash or a concurrent
run never leaves a half-written entry; older entries of the same data set, split and root are
removed when a new one is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.imagefolder import ImageFile

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """Where the command line caches decoded data sets: `~/.cache/imgzoo/datasets`."""
    return Path.home() / ".cache" / "imgzoo" / "datasets"


@dataclass(frozen=True)
class CachedSplit:
    """A decoded split as stored: NCHW uint8 images, int64 labels, files skipped."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: int


def cache_key(files: Iterable[ImageFile], settings: Mapping[str, Any]) -> str:
    """sha256 over the files (path, size, mtime) and the decode settings."""
    digest = hashlib.sha256(f"imgzoo-data-cache/{CACHE_FORMAT}\n".encode())
    for name in sorted(settings):
        digest.update(f"{name}={settings[name]!r}\n".encode())
    listing = "".join(f"{f.path}\0{f.label}\0{f.size}\0{f.mtime_ns}\n" for f in files)
    digest.update(listing.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


class SplitCache:
    """Cache entries under one directory; `None` as the directory disables caching."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    @staticmethod
    def _prefix(dataset: str, split: str, root: Path) -> str:
        root_hash = hashlib.sha256(str(root).encode()).hexdigest()[:12]
        return f"{dataset}-{split}-{root_hash}-"

    def path(self, dataset: str, split: str, root: Path, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{self._prefix(dataset, split, root)}{key[:24]}.pt"

    def load(self, dataset: str, split: str, root: Path, key: str) -> CachedSplit | None:
        """The cached split, or None when absent or unreadable (then it is rebuilt)."""
        path = self.path(dataset, split, root, key)
        if path is None or not path.is_file():
            return None
        try:
            # mmap: the pages are read as they are used, not copied up front.
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            entry = CachedSplit(raw["images"], raw["labels"], int(raw["skipped"]))
            if raw.get("key") != key or entry.images.dtype != torch.uint8:
                raise ValueError("stale entry")
        except Exception as exc:  # any damage to the file: treat as a miss and rebuild
            logger.warning("ignoring unreadable cache entry %s (%s)", path, type(exc).__name__)
            return None
        return entry

    def store(self, dataset: str, split: str, root: Path, key: str, entry: CachedSplit) -> None:
        """Write atomically; failing to write a cache is logged, never fatal."""
        path = self.path(dataset, split, root, key)
        if path is None:
            return
        payload = {
            "key": key,
            "images": entry.images.contiguous(),
            "labels": entry.labels,
            "skipped": entry.skipped,
        }
        tmp_name: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
            Path(tmp_name).replace(path)
            tmp_name = None
        except OSError as exc:
            logger.warning("could not write data cache %s: %s", path, exc)
            return
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    Path(tmp_name).unlink()
        prefix = self._prefix(dataset, split, root)
        for old in path.parent.glob(f"{prefix}*.pt"):
            if old != path:
                with contextlib.suppress(OSError):
                    old.unlink()
