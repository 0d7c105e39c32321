"""`imgzoo demo`, the job `make run` runs: train, export, write samples (serving: service/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from imgzoo.cli import main
from imgzoo.manifest import load_manifest, verify_files


@pytest.mark.slow
def test_demo_trains_exports_and_then_reuses_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository, samples = tmp_path / "model_repository", tmp_path / "samples"
    argv = [
        "demo",
        "--no-serve",
        "--no-progress",
        "--repository",
        str(repository),
        "--runs",
        str(tmp_path / "runs"),
        "--samples",
        str(samples),
    ]
    assert main(argv) == 0

    version_dir = repository / "demo" / "fastnet" / "1"
    manifest = load_manifest(version_dir)
    verify_files(version_dir, manifest)
    assert manifest.metrics.val_accuracy is not None and manifest.metrics.val_accuracy > 0.8
    assert all(p.passed for p in manifest.export.parity)

    # One sample per class, and the exported graph classifies most of them right.
    written = sorted(samples.glob("*.png"))
    assert [p.stem for p in written] == sorted(manifest.labels)
    batch = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in written])
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (logits,) = session.run(["logits"], {"image": batch})
    predicted = [manifest.labels[i] for i in logits.argmax(axis=1)]
    assert sum(p == s.stem for p, s in zip(predicted, written, strict=True)) >= 6

    # A second run reuses the exported version instead of training again.
    capsys.readouterr()
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().out
    assert sorted(p.name for p in (repository / "demo" / "fastnet").iterdir()) == ["1"]
