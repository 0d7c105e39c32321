"""Classification metrics (numpy) and batched prediction of a network on uint8 images.

`classification_report(y_true, y_pred, labels)` gives accuracy, the confusion matrix (rows =
true class, columns = predicted class) and per-class precision / recall / F1 / support;
`predict` runs a network over an in-memory uint8 NCHW image tensor in batches, optionally
with test-time augmentation (`tta_logits`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.preprocess import InputPreprocess


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationReport:
    labels: list[str]
    accuracy: float
    confusion: npt.NDArray[np.int64]
    per_class: list[ClassMetrics]

    @property
    def macro_f1(self) -> float:
        return float(np.mean([c.f1 for c in self.per_class])) if self.per_class else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "labels": self.labels,
            "confusion": self.confusion.tolist(),
            "per_class": [c.__dict__ for c in self.per_class],
        }

    def format_table(self) -> str:
        """A plain-text per-class table, then accuracy and macro F1."""
        width = max([len("class"), *(len(c.label) for c in self.per_class)])
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for c in self.per_class:
            lines.append(
                f"{c.label:<{width}}  {c.precision:9.4f}  {c.recall:6.4f}  {c.f1:5.4f}"
                f"  {c.support:7d}"
            )
        total = int(self.confusion.sum())
        lines.append(f"{'accuracy':<{width}}  {self.accuracy:9.4f}  ({total} images)")
        lines.append(f"{'macro f1':<{width}}  {self.macro_f1:9.4f}")
        return "\n".join(lines)


def confusion_matrix(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, num_classes: int
) -> npt.NDArray[np.int64]:
    """Counts [true, predicted]; classes are 0..num_classes-1."""
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError("y_true and y_pred differ in length")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes):
        raise ValueError(f"class index outside 0..{num_classes - 1}")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def classification_report(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, labels: Sequence[str]
) -> ClassificationReport:
    """Accuracy, confusion matrix and per-class precision / recall / F1 (0 where undefined)."""
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    total = cm.sum()
    per_class = [
        ClassMetrics(label, float(precision[i]), float(recall[i]), float(f1[i]), int(actual[i]))
        for i, label in enumerate(labels)
    ]
    accuracy = float(tp.sum() / total) if total else 0.0
    return ClassificationReport(list(labels), accuracy, cm, per_class)


TTA_VIEWS = {0: 1, 1: 2, 2: 6}
"""Forward passes per image at each test-time augmentation level."""


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = model(x)
    return out.float()


def _mirrored(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * _logits(model, x) + 0.5 * _logits(model, x.flip(3))


def tta_logits(model: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    """Logits of a normalised float NCHW batch under airbench's test-time augmentation.

    level 0: the image; 1: the mean of the image and its mirror; 2: half weight on level 1,
    half on the mean of level 1 applied to the image shifted one pixel up-left and one pixel
    down-right (reflect padding), i.e. 6 views weighted 1/4, 1/4, 1/8 x 4.
    """
    if level not in TTA_VIEWS:
        raise ValueError(f"tta level must be 0, 1 or 2, got {level}")
    if level == 0:
        return _logits(model, x)
    logits = _mirrored(model, x)
    if level == 1:
        return logits
    h, w = x.shape[2], x.shape[3]
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, :h, :w], padded[:, :, 2 : h + 2, 2 : w + 2]]
    translated = torch.stack([_mirrored(model, view) for view in shifted])
    return 0.5 * logits + 0.5 * translated.mean(0)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    preprocess: InputPreprocess,
    *,
    batch_size: int = 512,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    tta: int = 0,
) -> torch.Tensor:
    """Logits (float32, CPU) of `model` on uint8 NCHW `images`, in eval mode.

    `tta` is the test-time augmentation level of `tta_logits` (0 = the plain network).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    preprocess = preprocess.to(device)
    outputs: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        batch = preprocess(images[start : start + batch_size].to(device, non_blocking=True))
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        ctx = (
            torch.autocast(device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            outputs.append(tta_logits(model, batch, tta).cpu())
    model.train(was_training)
    if not outputs:
        return torch.empty(0, 0)
    return torch.cat(outputs)


def evaluate_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    preprocess: InputPreprocess,
    *,
    batch_size: int = 512,
    device: torch.device | None = None,
    channels_last: bool = False,
    tta: int = 0,
) -> ClassificationReport:
    """Predict (optionally with test-time augmentation) and report in one call."""
    logits = predict(
        model,
        images,
        preprocess,
        batch_size=batch_size,
        device=device,
        channels_last=channels_last,
        tta=tta,
    )
    preds = logits.argmax(dim=1).numpy() if len(logits) else np.empty(0, dtype=np.int64)
    return classification_report(labels.numpy(), preds, class_names)
