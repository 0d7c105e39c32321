"""PNG plots of a run: loss / accuracy curves and the confusion matrix (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


def _pyplot() -> Any:
    # Agg: no display needed, and never a GUI window from a training job.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(metrics: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Train / validation loss and accuracy per epoch, side by side."""
    plt = _pyplot()
    epochs = [m["epoch"] for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    try:
        for key, label in (("train_loss", "train"), ("val_loss", "validation")):
            ax_loss.plot(epochs, [m[key] for m in metrics], marker="o", label=label)
        for key, label in (("train_acc", "train"), ("val_acc", "validation")):
            ax_acc.plot(epochs, [100.0 * m[key] for m in metrics], marker="o", label=label)
        ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
        ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def plot_confusion(
    confusion: npt.NDArray[np.int64],
    labels: Sequence[str],
    path: Path,
    *,
    title: str = "Confusion matrix",
) -> Path:
    """Row-normalised confusion matrix (true class per row) with counts in the cells."""
    plt = _pyplot()
    k = len(labels)
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=float), where=rows > 0)
    side = min(30.0, max(5.0, 0.45 * k + 2.5))
    fig, ax = plt.subplots(figsize=(side, side), dpi=100)
    try:
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
        ticks = np.arange(k)
        font = 8 if k <= 20 else 5
        ax.set_xticks(ticks, labels=list(labels), rotation=90, fontsize=font)
        ax.set_yticks(ticks, labels=list(labels), fontsize=font)
        ax.set(xlabel="predicted class", ylabel="true class", title=title)
        if k <= 20:  # counts stay legible only for small matrices
            for i in range(k):
                for j in range(k):
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        str(confusion[i, j]),
                        ha="center",
                        va="center",
                        color=color,
                        fontsize=font,
                    )
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
