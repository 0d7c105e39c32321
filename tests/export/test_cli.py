"""`imgzoo export` and `imgzoo repository list` end to end, and every bad input they refuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import api, parity
from export.api import export_checkpoint
from export.parity import Runner
from imgzoo.cli import main
from imgzoo.manifest import (
    ONNX_FILENAME,
    ONNX_FP16_FILENAME,
    TORCHSCRIPT_FILENAME,
    load_manifest,
    verify_files,
)
from tests.export.helpers import eager_wrapper, make_checkpoint, random_images
from training.checkpoint import load_checkpoint

MODEL = "fastnet"  # the quickest registered network to export


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "fastnet.pt", MODEL)


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A repository with version 1 (fp32) and version 2 (with fp16), and each run's stdout."""
    repo = tmp_path_factory.mktemp("cli") / "repo"  # does not exist yet: export creates it
    outputs = []
    for extra in ([], ["--fp16"]):
        args = ["export", str(checkpoint), "--repository", str(repo), "--parity-images", "12"]
        code, out = _run_capturing([*args, "--no-progress", *extra])
        assert code == 0, out
        outputs.append(out)
    return repo, outputs


def _run_capturing(argv: list[str]) -> tuple[int, str]:
    """main(argv) with stdout captured (module fixtures cannot use capsys)."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    return code, buffer.getvalue()


def test_export_writes_versions_and_reports_parity(exported: tuple[Path, list[str]]) -> None:
    repo, (first, second) = exported
    assert (
        first.splitlines()[0]
        == f"wrote cifar10/{MODEL} version 1: {repo / 'cifar10' / MODEL / '1'}"
    )
    assert second.splitlines()[0].startswith(f"wrote cifar10/{MODEL} version 2: ")
    for runtime in ("onnxruntime", "torchscript"):
        line = next(x for x in first.splitlines() if f"parity {runtime}:" in x)
        assert line.endswith(" ok") and "top-1 100.00%" in line and "12 images, batch 1, 12" in line
    assert "parity onnxruntime_fp16:" in second and "parity onnxruntime_fp16:" not in first
    v1 = load_manifest(repo / "cifar10" / MODEL / "1")
    assert set(v1.sha256) == {ONNX_FILENAME, TORCHSCRIPT_FILENAME}
    assert v1.training.recipe == "test_recipe" and v1.training.epochs == 3
    assert v1.training.hyperparameters["step_milestones"] == [0.5, 0.75]
    assert v1.metrics.val_accuracy == 0.125 and v1.metrics.flops > 0
    assert v1.created_at.tzinfo is not None


def test_fp16_version(exported: tuple[Path, list[str]], checkpoint: Path) -> None:
    repo, _ = exported
    version_dir = repo / "cifar10" / MODEL / "2"
    manifest = load_manifest(version_dir)
    verify_files(version_dir, manifest)
    assert set(manifest.sha256) == {ONNX_FILENAME, TORCHSCRIPT_FILENAME, ONNX_FP16_FILENAME}
    fp16 = next(p for p in manifest.export.parity if p.runtime == "onnxruntime_fp16")
    fp32 = next(p for p in manifest.export.parity if p.runtime == "onnxruntime")
    assert fp16.passed and fp16.max_abs_diff <= fp16.tolerance
    assert fp16.tolerance >= 1e-2 and fp16.tolerance > fp32.tolerance
    # Half the weight bytes, same interface: uint8 in, float32 out, dynamic batch.
    assert (
        manifest.metrics.file_sizes[ONNX_FP16_FILENAME]
        < 0.6 * manifest.metrics.file_sizes[ONNX_FILENAME]
    )
    graph = onnx.load(str(version_dir / ONNX_FP16_FILENAME)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    images = random_images(3, 32, 3)
    session = ort.InferenceSession(
        str(version_dir / ONNX_FP16_FILENAME), providers=["CPUExecutionProvider"]
    )
    logits = session.run(["logits"], {"image": images})[0]
    with torch.inference_mode():
        expected = eager_wrapper(checkpoint)(torch.from_numpy(images)).numpy()
    assert logits.dtype == np.float32 and logits.shape == expected.shape
    assert np.abs(logits - expected).max() <= max(1e-2, 1e-2 * np.abs(expected).max())


def test_repository_list(
    exported: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    repo, _ = exported
    assert main(["repository", "list", "--repository", str(repo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["DATASET", "MODEL", "VERSION", "ARCH"]
    rows = [line.split() for line in lines[1:]]
    assert [r[:4] for r in rows] == [["cifar10", MODEL, "1", MODEL], ["cifar10", MODEL, "2", MODEL]]
    assert all(r[4] == "12.50%" and r[-1] == "ok" for r in rows)

    assert main(["repository", "list", "--repository", str(repo), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["version"], e["valid"]) for e in listed] == [(1, True), (2, True)]
    assert listed[1]["size_bytes"] > listed[0]["size_bytes"]  # version 2 adds the fp16 graph

    (repo / "cifar10" / MODEL / "1" / ONNX_FILENAME).write_bytes(b"corrupt")
    assert main(["repository", "list", "--repository", str(repo)]) == 0
    row_one = capsys.readouterr().out.splitlines()[1]
    assert "invalid:" in row_one and "size 7 differs" in row_one


def test_repository_list_empty_and_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["repository", "list", "--repository", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"no versions in {tmp_path}"
    assert main(["repository", "list", "--repository", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgzoo repository: error: repository") and err.count("\n") == 1


def _expect_error(argv: list[str], capsys: pytest.CaptureFixture[str], fragment: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err  # one line, no traceback
    assert captured.err.startswith("imgzoo export: error: ")
    assert fragment in captured.err


def test_existing_version_is_refused(
    exported: tuple[Path, list[str]], checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, _ = exported
    before = {p: p.read_bytes() for p in (repo / "cifar10" / MODEL / "2").iterdir()}
    argv = ["export", str(checkpoint), "--repository", str(repo), "--version", "2", "--no-progress"]
    _expect_error(argv, capsys, "version 2 already exists")
    assert {p: p.read_bytes() for p in (repo / "cifar10" / MODEL / "2").iterdir()} == before
    assert not any(p.name.startswith(".") for p in (repo / "cifar10" / MODEL).iterdir())


def test_checkpoint_of_another_architecture(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = load_checkpoint(checkpoint)
    ckpt.architecture = "resnet_small"  # fastnet weights under another network's name
    wrong = tmp_path / "wrong.pt"
    ckpt.save(wrong)
    repo = tmp_path / "repo"
    argv = ["export", str(wrong), "--repository", str(repo), "--no-progress"]
    _expect_error(argv, capsys, "do not fit architecture 'resnet_small'")
    assert _tree(tmp_path) == ["wrong.pt"]


def test_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "export",
        str(tmp_path / "none.pt"),
        "--repository",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    _expect_error(argv, capsys, "no such checkpoint file")
    assert _tree(tmp_path) == []


@pytest.mark.parametrize(
    ("flag", "value"), [("--dataset", "Bad-Name"), ("--model", "has space"), ("--model", "_lead")]
)
def test_invalid_names(
    flag: str, value: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", str(checkpoint), "--repository", str(tmp_path / "repo"), flag, value]
    _expect_error(argv, capsys, f"name {value!r}")
    assert _tree(tmp_path) == []


def test_missing_repository_parent(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", str(checkpoint), "--repository", str(tmp_path / "no" / "repo")]
    _expect_error(argv, capsys, "its parent")
    assert _tree(tmp_path) == []


def test_repository_under_a_regular_file(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    regular = tmp_path / "file"
    regular.write_text("not a directory")
    _expect_error(
        ["export", str(checkpoint), "--repository", str(regular)], capsys, "is not a directory"
    )
    _expect_error(
        ["export", str(checkpoint), "--repository", str(regular / "repo")], capsys, "parent"
    )
    assert _tree(tmp_path) == ["file"]


def test_read_only_repository(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    repo.chmod(0o500)
    try:
        probe = repo / "probe"
        try:
            probe.mkdir()
        except PermissionError:
            pass
        else:  # root (as in containers) writes anyway: permissions cannot be tested here
            probe.rmdir()
            pytest.skip("running with privileges that ignore directory permissions")
        _expect_error(
            ["export", str(checkpoint), "--repository", str(repo)], capsys, "not writable"
        )
        assert list(repo.iterdir()) == []
    finally:
        repo.chmod(0o700)


def test_parity_failure_writes_nothing(
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = parity.onnxruntime_runner

    def drifting_runner(path: Path) -> Runner:
        run = real(path)
        return lambda batch: run(batch) + np.float32(1e-2)  # a drift no tolerance allows

    monkeypatch.setattr(api, "onnxruntime_runner", drifting_runner)
    repo = tmp_path / "repo"
    argv = [
        "export",
        str(checkpoint),
        "--repository",
        str(repo),
        "--parity-images",
        "4",
        "--no-progress",
    ]
    _expect_error(
        argv, capsys, "parity check failed, nothing written: onnxruntime: max |diff| 1.00e-02 >"
    )
    assert _tree(tmp_path) == []  # not even the repository directory it would have created


def test_failure_mid_write_leaves_nothing(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[Path] = []

    def crashing_export(wrapper: object, sample: object, path: Path, *, opset: int) -> None:
        path.write_bytes(b"half a graph")
        written.append(path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api, "export_onnx", crashing_export)
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(OSError, match="No space left"):
        export_checkpoint(checkpoint, repo, parity_images=2, progress=False)
    assert written and written[0].parent.name.startswith(
        ".staging-1-"
    )  # it was inside the model dir
    assert _tree(repo) == []


def test_repository_is_created_when_its_parent_exists(exported: tuple[Path, list[str]]) -> None:
    repo, _ = exported
    assert repo.is_dir() and os.access(repo, os.W_OK)
