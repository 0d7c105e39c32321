"""Every registered model, at every data set's input shape, through the real export path."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.api import export_checkpoint
from export.torchscript_export import load_torchscript
from imgzoo.manifest import (
    MANIFEST_FILENAME,
    ONNX_FILENAME,
    TORCHSCRIPT_FILENAME,
    load_manifest,
    sha256_file,
    verify_files,
)
from models import list_models
from tests.export.helpers import eager_wrapper, fp32_tolerance, make_checkpoint, random_images

# (data set, side, channels, classes): FER2013 grayscale 48, CIFAR-10 RGB 32, Butterfly RGB 224.
SHAPES = [("fer2013", 48, 1, 7), ("cifar10", 32, 3, 10), ("butterfly", 224, 3, 100)]
# Parity compute per case is held near this many FLOPs: the 256-image default is for real
# exports; here a few images keep the suite minutes long on a busy CPU.
PARITY_FLOPS_BUDGET = 20e9


def _parity_settings(
    model: str, side: int, channels: int, classes: int
) -> tuple[int, tuple[int, ...]]:
    """(images, batch sizes): 2 to 8 images, batch sizes 1 and all of them."""
    from models import count_flops, get_model

    net = get_model(model, num_classes=classes, in_channels=channels, image_size=side)
    flops = count_flops(net, in_channels=channels, image_size=side)
    images = int(min(8, max(2, PARITY_FLOPS_BUDGET // flops)))
    return images, (1, images)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("model", list_models())
def test_round_trip(model: str, shape: tuple[str, int, int, int], tmp_path: Path) -> None:
    dataset, side, channels, classes = shape
    checkpoint = make_checkpoint(
        tmp_path / "ckpt.pt",
        model,
        image_size=side,
        channels=channels,
        num_classes=classes,
        dataset=dataset,
    )
    images, batch_sizes = _parity_settings(model, side, channels, classes)
    result = export_checkpoint(
        checkpoint,
        tmp_path / "repo",
        parity_images=images,
        batch_sizes=batch_sizes,
        progress=False,
    )
    version_dir = tmp_path / "repo" / dataset / model / "1"
    assert result.version_dir == version_dir
    assert sorted(p.name for p in version_dir.iterdir()) == [
        MANIFEST_FILENAME,
        ONNX_FILENAME,
        TORCHSCRIPT_FILENAME,
    ]

    # The manifest as the service reads it, and the files it describes.
    manifest = load_manifest(version_dir)
    verify_files(version_dir, manifest)
    for name in (ONNX_FILENAME, TORCHSCRIPT_FILENAME):
        assert manifest.sha256[name] == sha256_file(version_dir / name)
        assert manifest.metrics.file_sizes[name] == (version_dir / name).stat().st_size
    assert manifest.labels == [f"class_{i}" for i in range(classes)]
    assert (manifest.input.height, manifest.input.width, manifest.input.channels) == (
        side,
        side,
        channels,
    )
    assert manifest.training.architecture == model
    assert manifest.export.opset >= 18
    assert {p.runtime for p in manifest.export.parity} == {"onnxruntime", "torchscript"}
    # A simplified graph is kept only when it has fewer nodes; the record says which.
    simplification = manifest.export.simplification or ""
    nodes = re.search(r"nodes (\d+) -> (\d+)", simplification)
    if nodes:
        assert manifest.export.simplified == (int(nodes[2]) < int(nodes[1]))
    else:
        assert not manifest.export.simplified and "skipped" in simplification
    for parity in manifest.export.parity:
        assert parity.passed and parity.top1_agreement == 1.0
        assert parity.max_abs_diff <= parity.tolerance
        assert parity.images == images and parity.batch_sizes == sorted(batch_sizes)
        assert parity.tolerance >= 1e-4

    # The graph signature: uint8 NHWC with a symbolic batch, float32 [N, K].
    graph = onnx.load(str(version_dir / ONNX_FILENAME)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert graph.input[0].name == "image" and graph.output[0].name == "logits"
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [side, side, channels]

    # Independently of export.parity: ORT and the saved TorchScript at batch 3 (a batch size
    # the export never saw) against eager, on images outside the parity set.
    batch = random_images(3, side, channels)
    with torch.inference_mode():
        expected = eager_wrapper(checkpoint)(torch.from_numpy(batch)).numpy()
        scripted = load_torchscript(version_dir / TORCHSCRIPT_FILENAME)(
            torch.from_numpy(batch)
        ).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(version_dir / ONNX_FILENAME), options, providers=["CPUExecutionProvider"]
    )
    onnx_logits = session.run(["logits"], {"image": batch})[0]
    assert expected.shape == onnx_logits.shape == scripted.shape == (3, classes)
    assert onnx_logits.dtype == np.float32
    tolerance = fp32_tolerance(expected)
    assert np.abs(onnx_logits - expected).max() <= tolerance
    assert np.abs(scripted - expected).max() <= tolerance
    np.testing.assert_array_equal(onnx_logits.argmax(1), expected.argmax(1))
    np.testing.assert_array_equal(scripted.argmax(1), expected.argmax(1))
