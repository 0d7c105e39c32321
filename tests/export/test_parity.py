"""The parity rules on synthetic runners: thresholds, top-1 agreement, batching, NaN."""

from __future__ import annotations

import numpy as np
import pytest

from export.errors import ExportError
from export.parity import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    Candidate,
    Images,
    Logits,
    check_parity,
    effective_batch_sizes,
    require_pass,
    run_batched,
)
from tests.export.helpers import random_images

IMAGES = random_images(10, 4, 3)


def reference(batch: Images) -> Logits:
    """Deterministic logits that depend on each image only (not on the batch)."""
    flat = batch.reshape(len(batch), -1).astype(np.float32)
    return (np.stack([flat.mean(1), flat.std(1), flat[:, 0]], axis=1) / 10).astype(np.float32)


def shifted(delta: float) -> Candidate:
    return Candidate("onnxruntime", lambda b: reference(b) + np.float32(delta), FP32_TOLERANCE)


def test_identical_runtime_passes() -> None:
    [result] = check_parity(reference, [shifted(0.0)], IMAGES, image_source="synthetic")
    assert result.passed and result.max_abs_diff == 0.0 and result.top1_agreement == 1.0
    assert result.batch_sizes == [1, 10] and result.images == 10
    largest = float(np.abs(reference(IMAGES)).max())
    assert result.tolerance == pytest.approx(max(1e-4, 1e-4 * largest))


def test_fp32_tolerance_is_relative_to_the_largest_logit() -> None:
    largest = float(np.abs(reference(IMAGES)).max())
    tolerance = max(1e-4, 1e-4 * largest)
    [inside] = check_parity(reference, [shifted(0.9 * tolerance)], IMAGES, image_source="s")
    [outside] = check_parity(reference, [shifted(1.5 * tolerance)], IMAGES, image_source="s")
    assert inside.passed and inside.max_abs_diff == pytest.approx(0.9 * tolerance, rel=1e-3)
    assert not outside.passed
    with pytest.raises(ExportError, match=r"parity check failed, nothing written: onnxruntime"):
        require_pass([inside, outside])
    require_pass([inside])


def test_a_top1_flip_fails_fp32_even_within_tolerance() -> None:
    def near_tie(batch: Images) -> Logits:
        out = np.zeros((len(batch), 2), dtype=np.float32)
        out[:, 1] = 1e-5  # class 1 wins by a hair
        return out

    def flipped(batch: Images) -> Logits:
        return near_tie(batch)[:, ::-1].copy()

    fp32 = Candidate("torchscript", flipped, FP32_TOLERANCE)
    fp16 = Candidate("onnxruntime_fp16", flipped, FP16_TOLERANCE)
    strict, loose = check_parity(near_tie, [fp32, fp16], IMAGES, image_source="s")
    assert strict.max_abs_diff <= strict.tolerance and strict.top1_agreement == 0.0
    assert not strict.passed
    assert loose.passed  # fp16: a flip on a near tie is within its documented rule


def test_batch_dependence_is_caught() -> None:
    def batch_sensitive(batch: Images) -> Logits:
        return reference(batch) + np.float32(len(batch) > 1)  # wrong only when batched

    [result] = check_parity(
        reference,
        [Candidate("onnxruntime", batch_sensitive, FP32_TOLERANCE)],
        IMAGES,
        image_source="s",
    )
    assert not result.passed and result.max_abs_diff == pytest.approx(1.0)


def test_nan_never_passes() -> None:
    def nan(batch: Images) -> Logits:
        out = reference(batch)
        out[0, 0] = np.nan
        return out

    [result] = check_parity(
        reference, [Candidate("onnxruntime", nan, FP32_TOLERANCE)], IMAGES, image_source="s"
    )
    assert not result.passed and result.max_abs_diff == float("inf")


def test_wrong_shape_is_an_error() -> None:
    with pytest.raises(ExportError, match="shape"):
        check_parity(
            reference,
            [Candidate("onnxruntime", lambda b: reference(b)[:, :2], FP32_TOLERANCE)],
            IMAGES,
            image_source="s",
        )


def test_batching() -> None:
    seen: list[int] = []

    def recording(batch: Images) -> Logits:
        seen.append(len(batch))
        return reference(batch)

    out = run_batched(recording, IMAGES, 4)
    assert seen == [4, 4, 2]
    np.testing.assert_array_equal(out, reference(IMAGES))
    assert effective_batch_sizes([1, 64], 10) == [1, 10]
    assert effective_batch_sizes([64, 1, 64], 256) == [1, 64]
    with pytest.raises(ExportError):
        effective_batch_sizes([0], 10)
    with pytest.raises(ExportError, match="uint8 NHWC"):
        check_parity(reference, [], IMAGES.astype(np.float32), image_source="s")
