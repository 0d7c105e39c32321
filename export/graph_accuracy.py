"""Validation accuracy of an exported graph, measured with ONNX Runtime on the real split.

A composite graph (TTA, ensemble) answers differently from any one checkpoint, so its
manifest accuracy cannot be copied from training: it is measured on the file that will be
served, on the validation split the members were selected on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
from tqdm import tqdm

from export.parity_images import load_recorded_split
from imgzoo.manifest import INPUT_NAME, OUTPUT_NAME
from training.checkpoint import DataInfo

log = logging.getLogger(__name__)

EVAL_BATCH = 256


@dataclass(frozen=True)
class GraphAccuracy:
    """Top-1 accuracy of a graph on `images` images of `source`."""

    accuracy: float
    images: int
    source: str


def _validation_split(
    info: DataInfo, data_root: Path | None, cache_dir: Path | None, progress: bool
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """uint8 NHWC images and labels of the validation split, or None where it cannot load."""
    bundle = load_recorded_split(
        info,
        data_root=data_root,
        cache_dir=cache_dir,
        progress=progress,
        purpose="the graph's validation accuracy: not measured",
    )
    if bundle is None:
        return None
    labels = bundle.val.labels.numpy()
    if len(labels) == 0:
        log.warning("%s has no validation split: accuracy not measured", info.dataset)
        return None
    images = np.ascontiguousarray(bundle.val.images.numpy().transpose(0, 2, 3, 1))
    return images, labels, f"{info.dataset} validation split"


def measure_graph_accuracy(
    onnx_path: Path,
    info: DataInfo,
    *,
    data_root: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> GraphAccuracy | None:
    """Accuracy of `onnx_path` on the checkpoint's validation split (None if unavailable).

    `data_root` given and unloadable is an error; a recorded root that has gone is a warning.
    """
    split = _validation_split(info, data_root, cache_dir, progress)
    if split is None:
        return None
    images, labels, source = split
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    correct = 0
    starts = range(0, len(images), EVAL_BATCH)
    for start in tqdm(starts, desc="validation accuracy", disable=not progress, leave=False):
        batch = images[start : start + EVAL_BATCH]
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        correct += int((logits.argmax(1) == labels[start : start + EVAL_BATCH]).sum())
    return GraphAccuracy(correct / len(labels), len(labels), source)
