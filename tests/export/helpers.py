"""Checkpoints for export tests: random init, but with non-trivial batch-norm statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from export.wrapper import ExportWrapper, wrapper_for
from training.checkpoint import Checkpoint, DataInfo


def make_checkpoint(
    path: Path,
    architecture: str,
    *,
    image_size: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    dataset: str = "cifar10",
    root: str | None = None,
    seed: int = 0,
) -> Path:
    """Save a checkpoint of `architecture` whose batch norms have seen a few batches.

    Fresh batch norms (mean 0, var 1) would make the folded graph trivially close to eager;
    running statistics from train-mode forwards on shifted, scaled noise exercise the folding.
    """
    from models import get_model

    torch.manual_seed(seed)
    net = get_model(
        architecture, num_classes=num_classes, in_channels=channels, image_size=image_size
    )
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, channels, image_size, image_size) * 1.7 + 0.4)
    net.eval()
    mean = [0.45, 0.5, 0.4][:channels]
    std = [0.22, 0.25, 0.27][:channels]
    info = DataInfo(
        dataset=dataset,
        labels=[f"class_{i}" for i in range(num_classes)],
        height=image_size,
        width=image_size,
        channels=channels,
        mean=mean,
        std=std,
        root=root,
    )
    Checkpoint(
        architecture=architecture,
        model_kwargs={
            "num_classes": num_classes,
            "in_channels": channels,
            "image_size": image_size,
        },
        state_dict={k: v.clone() for k, v in net.state_dict().items()},
        data=info,
        recipe="test_recipe",
        hyperparameters={"lr": 0.1, "step_milestones": (0.5, 0.75), "epochs": 3},
        seed=seed,
        device="cpu",
        epoch=3,
        epochs=3,
        train_seconds=12.5,
        metrics={"val_accuracy": 0.125, "test_accuracy": None},
    ).save(path)
    return path


def eager_wrapper(checkpoint: Path) -> ExportWrapper:
    """The network of `checkpoint` behind the export wrapper, rebuilt independently."""
    from training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    return wrapper_for(ckpt.build_model(), ckpt.data)


def random_images(count: int, size: int, channels: int, seed: int = 7) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, size, size, channels), dtype=np.uint8)


def fp32_tolerance(reference: npt.NDArray[np.float32]) -> float:
    """The contract's fp32 bound, computed here independently of export.parity."""
    return max(1e-4, 1e-4 * float(np.abs(reference).max()))
