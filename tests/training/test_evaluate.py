"""Metrics by hand-checked examples, and the PNG plots."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from training.evaluate import classification_report, confusion_matrix
from training.plots import plot_confusion, plot_curves


def test_confusion_matrix_counts_true_by_predicted() -> None:
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 0], 3)


def test_report_precision_recall_f1() -> None:
    report = classification_report([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], ["a", "b", "c"])
    assert report.accuracy == pytest.approx(4 / 6)
    a, b, c = report.per_class
    assert (a.precision, a.recall, a.support) == (pytest.approx(0.5), pytest.approx(0.5), 2)
    assert (b.precision, b.recall) == (pytest.approx(0.5), pytest.approx(1.0))
    assert b.f1 == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert (c.precision, c.recall) == (pytest.approx(1.0), pytest.approx(2 / 3))
    table = report.format_table()
    assert table.splitlines()[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert "0.6667" in table


def test_class_never_predicted_nor_present_scores_zero() -> None:
    report = classification_report([0, 0], [0, 0], ["a", "b"])
    assert report.per_class[1].precision == 0.0 and report.per_class[1].f1 == 0.0
    assert report.accuracy == 1.0


def _png(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def test_plots_are_pngs_of_sane_size(tmp_path: Path) -> None:
    rows = [
        {
            "epoch": e,
            "train_loss": 2 / e,
            "val_loss": 2.2 / e,
            "train_acc": 0.2 * e,
            "val_acc": 0.18 * e,
        }
        for e in (1, 2, 3)
    ]
    w, h = _png(plot_curves(rows, tmp_path / "curves.png", title="t"))
    assert (w, h) == (1000, 400)
    cm = np.array([[5, 1], [2, 7]], dtype=np.int64)
    w, h = _png(plot_confusion(cm, ["cat", "dog"], tmp_path / "cm.png"))
    assert 300 <= w <= 3000 and 300 <= h <= 3000
    big = np.eye(100, dtype=np.int64) * 5
    w, h = _png(plot_confusion(big, [f"species {i}" for i in range(100)], tmp_path / "big.png"))
    assert w <= 3000 and h <= 3000
