"""The repository writer and listing, without torch: fake files, real manifests."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from export.errors import ExportError, RepositoryError
from export.repository import (
    STAGING_PREFIX,
    check_target,
    list_repository,
    next_version,
    write_version,
)
from imgzoo.manifest import (
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    ExportInfo,
    InputSpec,
    Manifest,
    Metrics,
    ParityResult,
    TrainingInfo,
    load_manifest,
    sha256_file,
    verify_files,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def fake_build(
    dataset: str = "demo", model: str = "tiny", payload: bytes = b"onnx-bytes"
) -> Callable[[Path, int], Manifest]:
    """A build step writing one fake graph file and returning its manifest."""

    def build(staging: Path, version: int) -> Manifest:
        (staging / ONNX_FILENAME).write_bytes(payload + str(version).encode())
        return Manifest(
            dataset=dataset,
            model=model,
            version=version,
            labels=["a", "b"],
            input=InputSpec(height=8, width=8, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3),
            metrics=Metrics(
                val_accuracy=0.75,
                parameters=1234,
                flops=5_000_000,
                file_sizes={ONNX_FILENAME: (staging / ONNX_FILENAME).stat().st_size},
            ),
            training=TrainingInfo(
                recipe="r", architecture="tiny", epochs=1, seconds=1.0, device="cpu", seed=0
            ),
            export=ExportInfo(
                opset=21,
                torch_version="x",
                onnx_version="x",
                onnxruntime_version="x",
                parity=[
                    ParityResult(
                        runtime="onnxruntime",
                        images=4,
                        image_source="test",
                        batch_sizes=[1, 4],
                        max_abs_diff=0.0,
                        tolerance=1e-4,
                        top1_agreement=1.0,
                        passed=True,
                    )
                ],
            ),
            sha256={ONNX_FILENAME: sha256_file(staging / ONNX_FILENAME)},
            created_at=datetime(2025, 1, 2, 3, 4, tzinfo=UTC),
        )

    return build


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_versions_increment_and_are_complete(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert next_version(repo, "demo", "tiny") == 1
    for expected in (1, 2, 3):
        version_dir, manifest = write_version(repo, "demo", "tiny", fake_build())
        assert version_dir == repo / "demo" / "tiny" / str(expected)
        assert manifest.version == expected
        assert load_manifest(version_dir) == manifest
        verify_files(version_dir, manifest)
        assert next_version(repo, "demo", "tiny") == expected + 1
    assert sorted(p.name for p in (repo / "demo" / "tiny").iterdir()) == ["1", "2", "3"]
    # Gaps are kept: the next version follows the highest one.
    write_version(repo, "demo", "tiny", fake_build(), version=7)
    assert next_version(repo, "demo", "tiny") == 8


def test_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    version_dir, _ = write_version(repo, "demo", "tiny", fake_build(payload=b"first"))
    before = {p.name: p.read_bytes() for p in version_dir.iterdir()}
    with pytest.raises(ExportError, match="version 1 already exists"):
        write_version(repo, "demo", "tiny", fake_build(payload=b"second"), version=1)
    assert {p.name: p.read_bytes() for p in version_dir.iterdir()} == before
    assert _tree(repo / "demo" / "tiny") == sorted(
        ["1", f"1/{MANIFEST_FILENAME}", f"1/{ONNX_FILENAME}"]
    )


def test_version_taken_during_the_build_is_not_overwritten(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    inner = fake_build()

    def racing_build(staging: Path, version: int) -> Manifest:
        manifest = inner(staging, version)
        # Another writer finishes the same version while this one is still building.
        other = staging.parent / str(version)
        other.mkdir()
        (other / "theirs.txt").write_text("keep me")
        return manifest

    with pytest.raises(ExportError, match="appeared"):
        write_version(repo, "demo", "tiny", racing_build)
    assert _tree(repo / "demo" / "tiny") == ["1", "1/theirs.txt"]


def test_failure_mid_write_leaves_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()

    def failing_build(staging: Path, version: int) -> Manifest:
        (staging / ONNX_FILENAME).write_bytes(b"half a graph")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_version(repo, "demo", "tiny", failing_build)
    # Neither the staging directory nor the data set / model directories it created remain.
    assert _tree(repo) == []


def test_failure_keeps_directories_of_other_versions(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_version(repo, "demo", "tiny", fake_build())

    def failing_build(staging: Path, version: int) -> Manifest:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_version(repo, "demo", "tiny", failing_build)
    assert _tree(repo / "demo" / "tiny") == sorted(
        ["1", f"1/{MANIFEST_FILENAME}", f"1/{ONNX_FILENAME}"]
    )


def test_manifest_must_match_the_target(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="manifest names other/tiny/1"):
        write_version(tmp_path / "repo", "demo", "tiny", fake_build(dataset="other"))
    assert not (tmp_path / "repo" / "demo").exists()


def test_unlisted_files_are_refused(tmp_path: Path) -> None:
    inner = fake_build()

    def build(staging: Path, version: int) -> Manifest:
        (staging / "stray.bin").write_bytes(b"x")
        return inner(staging, version)

    with pytest.raises(ExportError, match=r"not listed in the manifest: stray\.bin"):
        write_version(tmp_path / "repo", "demo", "tiny", build)
    assert _tree(tmp_path / "repo") == []


@pytest.mark.parametrize("name", ["Bad", "-x", "a b", "", "x" * 65, "é"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ExportError, match="invalid dataset name"):
        check_target(tmp_path, name, "tiny")
    with pytest.raises(ExportError, match="invalid model name"):
        check_target(tmp_path, "demo", name)


def test_repository_checks(tmp_path: Path) -> None:
    # Created when the parent exists...
    write_version(tmp_path / "new", "demo", "tiny", fake_build())
    assert (tmp_path / "new" / "demo" / "tiny" / "1").is_dir()
    # ...but not a whole missing path, nor anything under a regular file.
    with pytest.raises(RepositoryError, match="parent"):
        check_target(tmp_path / "missing" / "repo", "demo", "tiny")
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(RepositoryError, match="not a directory"):
        check_target(regular, "demo", "tiny")
    with pytest.raises(RepositoryError, match="parent"):
        check_target(regular / "repo", "demo", "tiny")
    with pytest.raises(ExportError, match="positive"):
        check_target(tmp_path / "new", "demo", "tiny", 0)
    assert check_target(tmp_path / "new", "demo", "tiny") == 2


def test_listing_reports_valid_and_invalid_versions(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_version(repo, "demo", "tiny", fake_build())
    write_version(repo, "demo", "tiny", fake_build())
    broken, _ = write_version(repo, "demo", "tiny", fake_build())
    (broken / ONNX_FILENAME).write_bytes(b"tampered!!!")  # same length, other bytes
    unparsable = repo / "demo" / "other" / "1"
    unparsable.mkdir(parents=True)
    (unparsable / MANIFEST_FILENAME).write_text("{}")
    (repo / "demo" / "tiny" / "latest").mkdir()
    (repo / "demo" / "tiny" / f"{STAGING_PREFIX}9-abc").mkdir()  # an export in progress
    (repo / "demo" / "tiny" / "config.json").write_text("{}")

    entries = list_repository(repo)
    rows = [(e.dataset, e.model, e.version, e.valid) for e in entries]
    assert rows == [
        ("demo", "other", 1, False),
        ("demo", "tiny", 1, True),
        ("demo", "tiny", 2, True),
        ("demo", "tiny", 3, False),
        ("demo", "tiny", None, False),
    ]
    by_key = {(e.model, e.version): e for e in entries}
    assert "sha256 differs" in (by_key["tiny", 3].reason or "")
    assert "invalid manifest" in (by_key["other", 1].reason or "")
    assert by_key["tiny", None].reason == "not a version number"
    good = by_key["tiny", 1]
    assert good.val_accuracy == 0.75 and good.parameters == 1234 and good.architecture == "tiny"
    files = (repo / "demo" / "tiny" / "1").iterdir()
    assert good.size_bytes == sum(p.stat().st_size for p in files)
    assert json.loads(json.dumps(good.to_dict()))["created"] == "2025-01-02T03:04:00+00:00"
    # Without hashing, a same-size tampered file goes unnoticed: the flag matters.
    assert [e.valid for e in list_repository(repo, verify=False)][3] is True


def test_listing_a_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="not a directory"):
        list_repository(tmp_path / "nope")


def test_repository_side_is_torch_free() -> None:
    code = (
        "import argparse, sys, export.repository, export.errors, export.cli; "
        "export.cli.register(argparse.ArgumentParser().add_subparsers()); "
        "heavy = {'torch', 'onnx', 'onnxruntime'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
