"""Fixtures shared by every part's tests.

Real images come from `../shared/data` (beside the checkout; see its README). Tests that need
them take one of the `*_subset` fixtures, which skip with a clear reason when the tarballs are
absent, and otherwise extract a small per-class subset once per session.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()


def shared_tarball(name: str) -> Path:
    """Path of a tarball in ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data not available: {path} is absent (see ../shared/data/README.md)")
    return path


def extract_subset(tarball: Path, dest: Path, per_class: int, splits: tuple[str, ...]) -> Path:
    """Extract at most `per_class` images of each class of each split into `dest`.

    Members are taken in archive order, which is deterministic, so a subset is the same on
    every machine.
    """
    counts: dict[tuple[str, str], int] = defaultdict(int)
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            if not member.isfile():
                continue
            parts = Path(member.name).parts
            # `[prefix/]split/class/file`: find the split component.
            idx = next((i for i, p in enumerate(parts) if p in splits), None)
            if idx is None or len(parts) - idx != 3:
                continue
            split, label = parts[idx], parts[idx + 1]
            if counts[split, label] >= per_class:
                continue
            counts[split, label] += 1
            target = dest.joinpath(*parts[idx:])
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            with target.open("wb") as out:
                shutil.copyfileobj(source, out)
    return dest


SubsetFactory = Callable[[str, int, tuple[str, ...]], Path]


@pytest.fixture(scope="session")
def shared_subset(tmp_path_factory: pytest.TempPathFactory) -> SubsetFactory:
    """`shared_subset(tarball_name, per_class, splits)` -> extracted root, cached per session."""
    cache: dict[tuple[str, int, tuple[str, ...]], Path] = {}

    def make(name: str, per_class: int, splits: tuple[str, ...] = ("train",)) -> Path:
        key = (name, per_class, splits)
        if key not in cache:
            tarball = shared_tarball(name)
            dest = tmp_path_factory.mktemp(name.split(".", maxsplit=1)[0] + f"-{per_class}")
            cache[key] = extract_subset(tarball, dest, per_class, splits)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def cifar10_subset(shared_subset: SubsetFactory) -> Path:
    """200 real CIFAR-10 training images per class (2,000 in all): `<root>/train/<class>/*.png`."""
    return shared_subset("cifar10-train-a.tar.gz", 200, ("train",))


@pytest.fixture(scope="session")
def fer2013_subset(shared_subset: SubsetFactory) -> Path:
    """40 real FER2013 images per emotion: `<root>/train/<emotion>/*.jpg`, 48x48 grayscale."""
    return shared_subset("fer2013-train.tar.gz", 40, ("train",))


@pytest.fixture(scope="session")
def butterfly_sample(shared_subset: SubsetFactory) -> Path:
    """The whole 224 px Butterfly sample: `<root>/train|valid/<SPECIES>/*.jpg`, 100 classes."""
    return shared_subset("butterfly-sample.tar.gz", 1000, ("train", "valid"))


def require_tool(name: str) -> str:
    """Path of a system tool, or skip (fail in CI, where IMGZOO_STRICT_SYSTEM_TOOLS=1)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (make system-deps installs it)"
        if os.environ.get("IMGZOO_STRICT_SYSTEM_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path
