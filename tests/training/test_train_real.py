"""fastnet on real CIFAR-10 images (a 2,000-image subset), on the CPU, two epochs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.conftest import tiny_recipe
from training.engine import train


@pytest.mark.slow
@pytest.mark.shared_data
def test_fastnet_learns_real_cifar10_subset(cifar10_subset: Path, tmp_path: Path) -> None:
    # 16 px keeps it to about a minute on a busy 2-core CPU; chance is 10 %.
    recipe = tiny_recipe(
        name="cifar10_fastnet_subset",
        dataset="cifar10",
        epochs=2,
        batch_size=32,
        lr=0.1,
        label_smoothing=0.2,
        whiten_images=1000,
    )
    result = train(
        recipe, data_root=cifar10_subset, out_dir=tmp_path / "run", device="cpu", progress=False
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # The validation split is carved from train: stratified, 10 % of each class.
    assert summary["data"]["val_images"] == 200
    assert summary["data"]["train_images"] == 1800
    assert all(c["support"] == 20 for c in summary["val_report"]["per_class"])
    assert result.best_val_accuracy >= 0.35, result
