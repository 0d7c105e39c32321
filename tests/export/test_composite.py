"""Test-time augmentation and ensembles exported as one graph: what it answers, what it claims.

The members are fastnets trained briefly at 16 px on the embedded demo data set (no files), so
the validation split the export measures on is the real one the test recomputes independently.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import torch

from export.api import export_checkpoint
from export.errors import ExportError
from imgzoo.cli import main
from imgzoo.manifest import (
    ONNX_FILENAME,
    ONNX_FP16_FILENAME,
    load_manifest,
    sha256_file,
    verify_files,
)
from models import count_flops, count_parameters
from training.checkpoint import load_checkpoint
from training.demo_data import demo_split
from training.evaluate import predict

SIDE = 16  # small enough that 6 passes over the 800 demo validation images take seconds
PARITY = ["--parity-images", "8", "--no-progress"]


def _train(directory: Path, seed: int) -> Path:
    """A fastnet trained one epoch on the demo data (about half right on 8 classes)."""
    out = directory / f"seed{seed}"
    argv = ["train", "--recipe", "demo_fastnet", "--set", f"image_size={SIDE}"]
    argv += ["--seed", str(seed), "--threads", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    return out / "best.pt"


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    directory = tmp_path_factory.mktemp("members")
    return [_train(directory, seed) for seed in (0, 1)]


def _altered(member: Path, directory: Path, **changes: object) -> Path:
    """A copy of `member` that claims other input or labels."""
    ckpt = load_checkpoint(member)
    ckpt.data = dataclasses.replace(ckpt.data, **changes)  # type: ignore[arg-type]
    path = directory / "member7.pt"
    ckpt.save(path)
    return path


@pytest.fixture(scope="module")
def validation() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The demo validation split as NCHW uint8 and its labels, loaded apart from the export."""
    images, labels = demo_split("val", image_size=SIDE, channels=3)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels


def _eager_logits(path: Path, images: npt.NDArray[np.uint8], tta: int) -> torch.Tensor:
    ckpt = load_checkpoint(path)
    return predict(
        ckpt.build_model(), torch.from_numpy(images), ckpt.data.input_preprocess(), tta=tta
    )


def _served_logits(version_dir: Path, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    session = ort.InferenceSession(
        str(version_dir / ONNX_FILENAME), providers=["CPUExecutionProvider"]
    )
    nhwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    (logits,) = session.run(["logits"], {"image": nhwc})
    return np.asarray(logits)


def _close_accuracy(measured: float | None, expected: float, count: int) -> None:
    # ONNX Runtime and eager differ in the last bits; a near-tie may flip, never more than two.
    assert measured is not None
    assert abs(measured - expected) <= 2 / count, (measured, expected)


@pytest.mark.slow
def test_a_tta_graph_answers_what_the_training_evaluation_measures(
    members: list[Path],
    validation: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]],
    tmp_path: Path,
) -> None:
    images, labels = validation
    result = export_checkpoint(
        members[0], tmp_path / "repo", tta=2, parity_images=8, batch_sizes=(1, 8), progress=False
    )
    version_dir = tmp_path / "repo" / "demo" / "fastnet" / "1"
    assert result.version_dir == version_dir

    expected = _eager_logits(members[0], images, tta=2)
    served = _served_logits(version_dir, images)
    assert np.abs(served - expected.numpy()).max() <= 1e-3 * max(1.0, float(expected.abs().max()))
    # The graph is not the plain network: the views change the answer.
    plain = _eager_logits(members[0], images, tta=0)
    assert np.abs(served - plain.numpy()).max() > 1e-2

    manifest = load_manifest(version_dir)
    verify_files(version_dir, manifest)
    composition = manifest.composition
    assert composition is not None
    assert (composition.tta, composition.views, composition.combine) == (2, 6, "single")
    assert composition.val_images == len(labels) == 800
    assert composition.val_source == "demo validation split"
    (member,) = composition.members
    assert member.seed == 0
    assert member.checkpoint_sha256 == sha256_file(members[0])
    # The member alone, as its checkpoint recorded it.
    assert member.val_accuracy == load_checkpoint(members[0]).metrics["val_accuracy"]
    accuracy = float((expected.argmax(1).numpy() == labels).mean())
    _close_accuracy(manifest.metrics.val_accuracy, accuracy, len(labels))
    assert manifest.metrics.test_accuracy is None  # not measured on the graph

    network = load_checkpoint(members[0]).build_model()
    assert manifest.metrics.parameters == count_parameters(network)
    assert manifest.metrics.flops == 6 * count_flops(network, in_channels=3, image_size=SIDE)


@pytest.mark.slow
def test_an_ensemble_graph_averages_its_members_log_probabilities(
    members: list[Path],
    validation: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]],
    tmp_path: Path,
) -> None:
    images, labels = validation
    export_checkpoint(
        members,
        tmp_path / "repo",
        tta=1,
        fp16=True,
        parity_images=8,
        batch_sizes=(1, 8),
        progress=False,
    )
    version_dir = tmp_path / "repo" / "demo" / "fastnet_x2" / "1"  # the default name
    manifest = load_manifest(version_dir)
    # The fp16 graph of the ensemble exists and held its parity bound too.
    assert ONNX_FP16_FILENAME in manifest.sha256
    passed = {p.runtime for p in manifest.export.parity if p.passed}
    assert passed == {"onnxruntime", "torchscript", "onnxruntime_fp16"}

    logprobs = [torch.log_softmax(_eager_logits(p, images, tta=1), 1) for p in members]
    expected = torch.stack(logprobs).mean(0)
    served = _served_logits(version_dir, images)
    assert np.abs(served - expected.numpy()).max() <= 1e-3 * max(1.0, float(expected.abs().max()))
    # Neither member alone: the ensemble disagrees with each somewhere on 800 images.
    for alone in logprobs:
        assert (served.argmax(1) != alone.argmax(1).numpy()).any()

    composition = manifest.composition
    assert composition is not None
    assert (composition.tta, composition.views, composition.combine) == (1, 4, "mean_log_softmax")
    assert [m.seed for m in composition.members] == [0, 1]
    assert [m.checkpoint_sha256 for m in composition.members] == [sha256_file(p) for p in members]
    accuracy = float((expected.argmax(1).numpy() == labels).mean())
    _close_accuracy(manifest.metrics.val_accuracy, accuracy, len(labels))

    network = load_checkpoint(members[0]).build_model()
    assert manifest.metrics.parameters == 2 * count_parameters(network)
    assert manifest.metrics.flops == 4 * count_flops(network, in_channels=3, image_size=SIDE)
    seconds = sum(load_checkpoint(p).train_seconds for p in members)
    assert manifest.training.seconds == pytest.approx(seconds)  # both members' training
    assert manifest.training.seed == 0  # the first member's


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"dataset": "cifar10"}, "dataset"),
        ({"height": 24, "width": 24}, "height"),
        ({"labels": [f"class_{i}" for i in range(8)]}, "labels"),
        ({"mean": [0.1, 0.2, 0.3]}, "mean"),
        # Trained on another split: it may have seen the validation images.
        ({"split_seed": 1}, "split_seed"),
    ],
)
def test_members_that_do_not_share_input_labels_and_split_are_refused(
    members: list[Path], changes: dict[str, object], field: str, tmp_path: Path
) -> None:
    other = _altered(members[1], tmp_path, **changes)
    with pytest.raises(ExportError, match=rf"member7\.pt cannot join .* its {field} is"):
        export_checkpoint([members[0], other], tmp_path / "repo", progress=False)
    assert not (tmp_path / "repo").exists()


def test_members_found_in_another_directory_may_join(members: list[Path], tmp_path: Path) -> None:
    other = _altered(members[1], tmp_path, root="/elsewhere")
    result = export_checkpoint(
        [members[0], other], tmp_path / "repo", parity_images=2, batch_sizes=(2,), progress=False
    )
    assert result.manifest.model == "fastnet_x2"


def test_an_ensemble_of_one_checkpoint_twice_is_refused(
    members: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(ExportError, match="named twice"):
        export_checkpoint([members[0], members[0]], tmp_path / "repo", progress=False)
    assert not (tmp_path / "repo").exists()


def test_an_unknown_tta_level_is_refused(members: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--tta must be one of"):
        export_checkpoint(members[0], tmp_path / "repo", tta=3, progress=False)
    assert not (tmp_path / "repo").exists()


@pytest.mark.slow
def test_the_cli_exports_an_ensemble_and_says_what_it_measured(
    members: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    argv = ["export", *map(str, members), "--repository", str(repo), "--model", "pair", *PARITY]
    assert main(argv) == 0
    out = capsys.readouterr().out
    manifest = load_manifest(repo / "demo" / "pair" / "1")
    assert manifest.metrics.val_accuracy is not None
    assert (
        f"graph  2 networks, tta=0, 2 passes an image; validation accuracy "
        f"{manifest.metrics.val_accuracy:.2%} on 800 images of the demo validation split" in out
    )

    assert main(["repository", "list", "--repository", str(repo), "--no-verify"]) == 0
    (row,) = capsys.readouterr().out.splitlines()[1:]
    assert row.split()[:7] == ["demo", "pair", "1", "2x", "fastnet,", "tta", "0"]
    assert f"{manifest.metrics.val_accuracy:.2%}" in row

    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(members[0]), "--repository", str(repo), "--tta", "5"])
    assert exit_info.value.code == 2
    assert "invalid choice: 5" in capsys.readouterr().err
