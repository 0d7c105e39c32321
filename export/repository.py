"""The writer side of the model repository, and a listing the service can reuse.

    <repository>/<dataset>/<model>/<version>/model.onnx, model.ts, manifest.json

A version is built in a hidden staging directory inside `<repository>/<dataset>/<model>/`
(the same file system) and renamed into place in one `os.rename`, so a reader scanning the
repository sees either no version or a complete one. Staging directories start with a dot,
which no version name does, so readers skip them. Torch-free on purpose.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from export.errors import ExportError, RepositoryError
from imgzoo.manifest import (
    MANIFEST_FILENAME,
    Manifest,
    ManifestError,
    load_manifest,
    parse_manifest,
    verify_files,
)
from imgzoo.names import is_valid_name, is_valid_version

STAGING_PREFIX = ".staging-"

BuildVersion = Callable[[Path, int], Manifest]
"""`build(staging_dir, version)`: write the version's files into `staging_dir` and return its
manifest (not yet written: `write_version` writes and checks it)."""


def check_name(kind: str, name: str) -> None:
    """Raise a one-line ExportError unless `name` may be a repository directory."""
    if not is_valid_name(name):
        raise ExportError(
            f"invalid {kind} name {name!r}: use 1-64 lowercase letters, digits or '_', "
            "starting with a letter or digit"
        )


def _check_repository(repository: Path) -> None:
    """The repository must be a writable directory, or creatable inside a writable one."""
    if repository.exists():
        if not repository.is_dir():
            raise RepositoryError(f"repository {repository} is not a directory")
        if not os.access(repository, os.W_OK | os.X_OK):
            raise RepositoryError(f"repository {repository} is not writable")
        return
    parent = repository.absolute().parent
    if not parent.is_dir():
        raise RepositoryError(
            f"repository {repository} does not exist and its parent {parent} is not a directory"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RepositoryError(
            f"repository {repository} does not exist and cannot be created in {parent}"
        )


def _version_numbers(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return [int(p.name) for p in model_dir.iterdir() if is_valid_version(p.name)]


def next_version(repository: Path, dataset: str, model: str) -> int:
    """One more than the highest version directory present (valid or not), else 1."""
    return max(_version_numbers(repository / dataset / model), default=0) + 1


def check_target(repository: Path, dataset: str, model: str, version: int | None = None) -> int:
    """Check names, repository and version before any expensive work; return the version.

    Writes nothing: `write_version` creates the directories, and checks again.
    """
    check_name("dataset", dataset)
    check_name("model", model)
    _check_repository(repository)
    if version is None:
        return next_version(repository, dataset, model)
    if version < 1:
        raise ExportError(f"version must be a positive integer, not {version}")
    target = repository / dataset / model / str(version)
    if target.exists():
        raise ExportError(
            f"version {version} already exists at {target}; versions are never overwritten"
        )
    return version


def _mkdirs(path: Path, stop: Path) -> list[Path]:
    """Create `path` and its missing parents up to (excluding) `stop`; return what was created."""
    missing: list[Path] = []
    current = path
    while current != stop and not current.exists():
        missing.append(current)
        current = current.parent
    created: list[Path] = []
    for directory in reversed(missing):
        directory.mkdir()
        created.append(directory)
    return created


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finalise(staging: Path, manifest: Manifest, dataset: str, model: str, version: int) -> None:
    """Write manifest.json into the staging directory and check the directory against it."""
    if (manifest.dataset, manifest.model, manifest.version) != (dataset, model, version):
        raise ExportError(
            f"manifest names {manifest.dataset}/{manifest.model}/{manifest.version}, "
            f"expected {dataset}/{model}/{version}"
        )
    (staging / MANIFEST_FILENAME).write_text(manifest.to_json(), encoding="utf-8")
    # Read back through the reader's own parser: what the service will see.
    written = parse_manifest((staging / MANIFEST_FILENAME).read_bytes())
    verify_files(staging, written)
    present = {p.name for p in staging.iterdir()}
    unlisted = present - set(written.sha256) - {MANIFEST_FILENAME}
    if unlisted:
        raise ExportError(f"files not listed in the manifest: {', '.join(sorted(unlisted))}")
    for name in present:
        _fsync(staging / name)
    _fsync(staging)


def write_version(
    repository: Path,
    dataset: str,
    model: str,
    build: BuildVersion,
    *,
    version: int | None = None,
) -> tuple[Path, Manifest]:
    """Build a version in a staging directory and rename it into place atomically.

    An existing version is never overwritten: it is an error when `version` is given and
    exists, or when another writer took the number while this one was building. On any
    failure the staging directory, and the directories this call created, are removed.
    Returns the version directory and the manifest written into it.
    """
    version = check_target(repository, dataset, model, version)
    model_dir = repository / dataset / model
    root = repository.absolute().parent
    try:
        created = _mkdirs(model_dir.absolute(), stop=root)
    except OSError as exc:
        raise RepositoryError(f"cannot create {model_dir}: {exc.strerror}") from None
    staging: Path | None = None
    try:
        try:
            staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=model_dir))
            # mkdtemp makes it 0700; a version must be readable by a service running as
            # another user.
            staging.chmod(0o755)
        except OSError as exc:
            raise RepositoryError(f"cannot write into {model_dir}: {exc.strerror}") from None
        manifest = build(staging, version)
        _finalise(staging, manifest, dataset, model, version)
        target = model_dir / str(version)
        if target.exists():
            raise ExportError(
                f"version {version} appeared at {target} during the export; not overwritten"
            )
        try:
            # POSIX rename refuses a non-empty target, so even a writer that wins the race
            # after the check above cannot lose its files.
            staging.rename(target)
        except OSError as exc:
            raise ExportError(
                f"cannot move version {version} into place at {target}: {exc.strerror}"
            ) from None
        staging = None
        with contextlib.suppress(OSError):  # durability of the rename: best effort, it is done
            _fsync(model_dir)
        return target, manifest
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if still empty: never another writer's files
        raise


@dataclass(frozen=True)
class RepositoryEntry:
    """One version directory of the repository (or a directory that should be one)."""

    dataset: str
    model: str
    version: int | None
    path: Path
    valid: bool
    reason: str | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    parameters: int | None = None
    flops: int | None = None
    size_bytes: int | None = None
    created: datetime | None = None
    architecture: str | None = None
    graph: str | None = None
    """A composite graph in short (`2x fastnet, tta 2`); None for one plain network."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths and datetimes as strings)."""
        return {
            "dataset": self.dataset,
            "model": self.model,
            "version": self.version,
            "path": str(self.path),
            "valid": self.valid,
            "reason": self.reason,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "parameters": self.parameters,
            "flops": self.flops,
            "size_bytes": self.size_bytes,
            "created": self.created.isoformat() if self.created else None,
            "architecture": self.architecture,
            "graph": self.graph,
        }


def describe_graph(manifest: Manifest) -> str | None:
    """`<k>x <architecture>, tta <level>` for a composite graph, None for a plain one."""
    composition = manifest.composition
    if composition is None:
        return None
    architectures = "+".join(sorted({m.architecture for m in composition.members}))
    return f"{len(composition.members)}x {architectures}, tta {composition.tta}"


def _read_entry(dataset: str, model: str, version_dir: Path, verify: bool) -> RepositoryEntry:
    version = int(version_dir.name)
    try:
        manifest = load_manifest(version_dir)
        if verify:
            verify_files(version_dir, manifest)
    except ManifestError as exc:
        return RepositoryEntry(dataset, model, version, version_dir, valid=False, reason=str(exc))
    size = (
        sum(manifest.metrics.file_sizes.values()) + (version_dir / MANIFEST_FILENAME).stat().st_size
    )
    return RepositoryEntry(
        dataset,
        model,
        version,
        version_dir,
        valid=True,
        val_accuracy=manifest.metrics.val_accuracy,
        test_accuracy=manifest.metrics.test_accuracy,
        parameters=manifest.metrics.parameters,
        flops=manifest.metrics.flops,
        size_bytes=size,
        created=manifest.created_at,
        architecture=manifest.training.architecture,
        graph=describe_graph(manifest),
    )


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_repository(repository: Path, *, verify: bool = True) -> list[RepositoryEntry]:
    """Every version directory, sorted by dataset, model, version; invalid ones say why.

    `verify` also checks each file's size and sha256 against the manifest (reads every file).
    Hidden directories (staging areas) and `config.json` files are skipped.
    """
    if not repository.is_dir():
        raise RepositoryError(f"repository {repository} is not a directory")
    entries: list[RepositoryEntry] = []
    for dataset_dir in _visible_dirs(repository):
        dataset = dataset_dir.name
        if not is_valid_name(dataset):
            entries.append(
                RepositoryEntry(
                    dataset, "", None, dataset_dir, False, "data set name breaks the naming rule"
                )
            )
            continue
        for model_dir in _visible_dirs(dataset_dir):
            model = model_dir.name
            if not is_valid_name(model):
                entries.append(
                    RepositoryEntry(
                        dataset, model, None, model_dir, False, "model name breaks the naming rule"
                    )
                )
                continue
            versions: list[RepositoryEntry] = []
            for version_dir in _visible_dirs(model_dir):
                if is_valid_version(version_dir.name):
                    versions.append(_read_entry(dataset, model, version_dir, verify))
                else:
                    versions.append(
                        RepositoryEntry(
                            dataset, model, None, version_dir, False, "not a version number"
                        )
                    )
            versions.sort(key=lambda e: (e.version is None, e.version or 0, e.path.name))
            entries.extend(versions)
    return entries


__all__ = [
    "STAGING_PREFIX",
    "BuildVersion",
    "RepositoryEntry",
    "check_name",
    "check_target",
    "list_repository",
    "next_version",
    "write_version",
]
