"""A network trained on real CIFAR-10 images, exported: ONNX Runtime must score as PyTorch does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.api import export_checkpoint
from export.wrapper import wrapper_for
from imgzoo.manifest import ONNX_FILENAME, load_manifest, verify_files
from training.checkpoint import load_checkpoint

PER_CLASS = 60  # of the fixture's 200: 600 images, a 60-image validation split


@pytest.mark.slow
@pytest.mark.shared_data
def test_onnxruntime_accuracy_equals_pytorch_on_real_cifar10(
    cifar10_subset: Path, tmp_path: Path
) -> None:
    from training.datasets import load_data
    from training.engine import train
    from training.recipes import get_recipe

    recipe = get_recipe("cifar10_fastnet").override(
        epochs=2,
        batch_size=64,
        warmup_epochs=0.5,
        whiten_images=256,
        amp="off",  # bf16 autocast would make the recorded accuracy differ from fp32 eager
        channels_last=False,
    )
    trained = train(
        recipe,
        data_root=cifar10_subset,
        out_dir=tmp_path / "run",
        device="cpu",
        progress=False,
        limit_per_class=PER_CLASS,
    )

    result = export_checkpoint(
        trained.best_checkpoint, tmp_path / "repo", parity_images=64, progress=False
    )
    manifest = load_manifest(result.version_dir)
    verify_files(result.version_dir, manifest)
    # Parity ran on the real validation images, found through the root in the checkpoint.
    assert all(
        p.image_source.startswith("cifar10 validation split") for p in manifest.export.parity
    )
    assert all(p.passed and p.top1_agreement == 1.0 for p in manifest.export.parity)

    # The same validation split training used, scored by eager PyTorch and by ONNX Runtime.
    ckpt = load_checkpoint(trained.best_checkpoint)
    val = load_data(
        "cifar10",
        cifar10_subset,
        val_fraction=ckpt.data.val_fraction,
        split_seed=ckpt.data.split_seed,
        limit_per_class=PER_CLASS,
        progress=False,
    ).val
    images = val.images.permute(0, 2, 3, 1).contiguous().numpy()
    labels = val.labels.numpy()
    assert len(labels) >= 50

    wrapper = wrapper_for(ckpt.build_model(), ckpt.data)
    with torch.inference_mode():
        eager = wrapper(torch.from_numpy(images)).numpy()
    session = ort.InferenceSession(
        str(result.version_dir / ONNX_FILENAME), providers=["CPUExecutionProvider"]
    )
    onnx_logits = np.concatenate(
        [
            session.run(["logits"], {"image": images[i : i + 16]})[0]
            for i in range(0, len(images), 16)
        ]
    )
    eager_correct = int((eager.argmax(1) == labels).sum())
    onnx_correct = int((onnx_logits.argmax(1) == labels).sum())
    assert onnx_correct == eager_correct
    np.testing.assert_array_equal(onnx_logits.argmax(1), eager.argmax(1))
    # Trained, not random: well above the 10 % of chance, and what training measured.
    assert eager_correct / len(labels) > 0.2
    assert manifest.metrics.val_accuracy == pytest.approx(
        eager_correct / len(labels), abs=1.5 / len(labels)
    )
