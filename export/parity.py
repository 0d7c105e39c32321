"""Parity: the exported files against PyTorch eager on the same uint8 images.

Every runtime runs the same images at each batch size; each is compared with eager at the
same batch size. A runtime passes when its largest absolute logit difference is within the
tolerance and its top-1 agreement reaches the minimum:

- fp32 (ONNX Runtime, TorchScript): tolerance max(1e-4, 1e-4 * largest |logit|), 100 % top-1.
- fp16 ONNX: tolerance max(1e-2, 1e-2 * largest |logit|), no separate top-1 minimum: within
  that tolerance a top-1 change can only happen where eager's two best logits are within
  twice the tolerance of each other (a near tie), and the agreement is reported as measured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from export.errors import ExportError
from imgzoo.manifest import INPUT_NAME, OUTPUT_NAME, ParityResult

Images = npt.NDArray[np.uint8]
Logits = npt.NDArray[np.float32]
RuntimeName = Literal["onnxruntime", "torchscript", "onnxruntime_fp16"]
"""The runtimes `ParityResult.runtime` names."""

Runner = Callable[[Images], Logits]
"""uint8 NHWC batch -> float32 logits `[N, K]`."""

DEFAULT_BATCH_SIZES = (1, 64)


@dataclass(frozen=True)
class Tolerance:
    """Pass criterion: |diff| <= max(absolute, relative * largest |eager logit|)."""

    absolute: float
    relative: float
    min_top1_agreement: float

    def for_scale(self, largest_logit: float) -> float:
        return max(self.absolute, self.relative * largest_logit)


FP32_TOLERANCE = Tolerance(absolute=1e-4, relative=1e-4, min_top1_agreement=1.0)
FP16_TOLERANCE = Tolerance(absolute=1e-2, relative=1e-2, min_top1_agreement=0.0)


@dataclass(frozen=True)
class Candidate:
    """A runtime to compare with eager."""

    runtime: RuntimeName
    run: Runner
    tolerance: Tolerance


def eager_runner(module: torch.nn.Module) -> Runner:
    module.eval()

    def run(batch: Images) -> Logits:
        with torch.inference_mode():
            out: Logits = module(torch.from_numpy(batch)).numpy()
        return out

    return run


def torchscript_runner(path: Path) -> Runner:
    from export.torchscript_export import load_torchscript

    module = load_torchscript(path)

    def run(batch: Images) -> Logits:
        with torch.inference_mode():
            out: Logits = module(torch.from_numpy(batch)).numpy()
        return out

    return run


def onnxruntime_runner(path: Path) -> Runner:
    """A CPUExecutionProvider session: the reference runtime wherever the service runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; ORT warns about unused initializers etc.
    # Same thread budget as eager and TorchScript, and no spin-waiting: parity runs on busy
    # machines (CI, beside training) where spinning threads slow everything down.
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: Images) -> Logits:
        out: Logits = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        return out

    return run


def _batches(images: Images, batch_size: int) -> Iterator[Images]:
    for start in range(0, len(images), batch_size):
        yield np.ascontiguousarray(images[start : start + batch_size])


def run_batched(runner: Runner, images: Images, batch_size: int) -> Logits:
    """Logits of every image, computed `batch_size` at a time (the last batch may be short)."""
    outputs = [runner(batch) for batch in _batches(images, batch_size)]
    return np.concatenate(outputs, axis=0).astype(np.float32, copy=False)


def effective_batch_sizes(batch_sizes: Sequence[int], images: int) -> list[int]:
    """Batch sizes larger than the image count collapse to it; duplicates are dropped."""
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ExportError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    return sorted({min(b, images) for b in batch_sizes})


def _max_abs_diff(reference: Logits, output: Logits) -> float:
    if reference.shape != output.shape:
        raise ExportError(
            f"exported model returns logits of shape {output.shape}, eager {reference.shape}"
        )
    diff = np.abs(reference.astype(np.float64) - output.astype(np.float64))
    # NaN anywhere is a failure, never a pass through NaN comparisons.
    return float("inf") if not np.all(np.isfinite(diff)) else float(diff.max(initial=0.0))


def check_parity(
    reference: Runner,
    candidates: Sequence[Candidate],
    images: Images,
    *,
    image_source: str,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    on_step: Callable[[str], None] | None = None,
) -> list[ParityResult]:
    """Compare every candidate with eager on `images` (uint8 NHWC) at each batch size."""
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise ExportError(
            f"parity needs a non-empty uint8 NHWC batch, got {images.dtype} {images.shape}"
        )
    sizes = effective_batch_sizes(batch_sizes, len(images))
    worst: dict[str, float] = {c.runtime: 0.0 for c in candidates}
    agreement: dict[str, float] = {c.runtime: 1.0 for c in candidates}
    largest = 0.0
    for size in sizes:
        if on_step:
            on_step(f"parity: eager, batch {size}")
        expected = run_batched(reference, images, size)
        if not np.all(np.isfinite(expected)):
            raise ExportError("PyTorch eager produced non-finite logits on the parity images")
        largest = max(largest, float(np.abs(expected).max()))
        for candidate in candidates:
            if on_step:
                on_step(f"parity: {candidate.runtime}, batch {size}")
            output = run_batched(candidate.run, images, size)
            worst[candidate.runtime] = max(
                worst[candidate.runtime], _max_abs_diff(expected, output)
            )
            agree = float(np.mean(expected.argmax(axis=1) == output.argmax(axis=1)))
            agreement[candidate.runtime] = min(agreement[candidate.runtime], agree)
    results = []
    for candidate in candidates:
        tolerance = candidate.tolerance.for_scale(largest)
        diff, agree = worst[candidate.runtime], agreement[candidate.runtime]
        passed = diff <= tolerance and agree >= candidate.tolerance.min_top1_agreement
        results.append(
            ParityResult(
                runtime=candidate.runtime,
                images=len(images),
                image_source=image_source,
                batch_sizes=sizes,
                max_abs_diff=diff,
                tolerance=tolerance,
                top1_agreement=agree,
                passed=passed,
            )
        )
    return results


def describe(result: ParityResult) -> str:
    """One line: `onnxruntime: max |diff| 2.1e-06 <= 1.0e-04, top-1 100.00% (256 images, ...)`."""
    relation = "<=" if result.max_abs_diff <= result.tolerance else ">"
    sizes = ", ".join(str(b) for b in result.batch_sizes)
    verdict = "ok" if result.passed else "FAILED"
    return (
        f"{result.runtime}: max |diff| {result.max_abs_diff:.2e} {relation} "
        f"{result.tolerance:.2e}, "
        f"top-1 {result.top1_agreement:.2%} ({result.images} images, batch {sizes}) {verdict}"
    )


def require_pass(results: Sequence[ParityResult]) -> None:
    """Raise ExportError naming every runtime that failed."""
    failed = [describe(r) for r in results if not r.passed]
    if failed:
        raise ExportError("parity check failed, nothing written: " + "; ".join(failed))
