"""`export_checkpoint`: a training checkpoint -> the next version in the model repository.

checkpoint -> network -> ExportWrapper (uint8 NHWC -> logits)
           -> model.onnx (dynamo exporter, checked, simplified where it helps)
           -> model.ts (traced)            [-> model.fp16.onnx]
           -> parity vs eager on real images -> manifest.json -> rename into place
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from tqdm import tqdm

from export.errors import ExportError
from export.manifest_builder import build_manifest, git_commit
from export.onnx_export import DEFAULT_OPSET, Simplification, check_onnx, export_onnx, simplify_onnx
from export.parity import (
    DEFAULT_BATCH_SIZES,
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    Candidate,
    check_parity,
    eager_runner,
    effective_batch_sizes,
    onnxruntime_runner,
    require_pass,
    torchscript_runner,
)
from export.parity_images import ParityImages, load_parity_images
from export.repository import check_target, write_version
from export.torchscript_export import export_torchscript
from export.wrapper import wrapper_for
from imgzoo.manifest import (
    ONNX_FILENAME,
    ONNX_FP16_FILENAME,
    TORCHSCRIPT_FILENAME,
    ExportInfo,
    Manifest,
    ParityResult,
)
from training.checkpoint import Checkpoint, load_checkpoint

log = logging.getLogger(__name__)

DEFAULT_PARITY_IMAGES = 256


@dataclass(frozen=True)
class ExportResult:
    """Where the version went and what its manifest says."""

    version_dir: Path
    manifest: Manifest

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def parity(self) -> list[ParityResult]:
        return list(self.manifest.export.parity)


class _Progress:
    """A stage bar: one tick per export stage and per parity run."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = tqdm(total=total, disable=not enabled, desc="export", unit="step", leave=False)
        self._started = False

    def __call__(self, description: str) -> None:
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_description(description)
        log.debug("export: %s", description)

    def close(self) -> None:
        if self._started:
            self._bar.update(1)
        self._bar.close()


@dataclass(frozen=True)
class _Job:
    checkpoint: Checkpoint
    network: torch.nn.Module
    dataset: str
    model: str
    parity: ParityImages
    batch_sizes: Sequence[int]
    fp16: bool
    simplify: bool
    opset: int


def _sample(images: np.ndarray) -> torch.Tensor:
    """Two images to trace with (the batch must be > 1 to stay dynamic in the graph)."""
    batch = images[:2] if len(images) >= 2 else np.concatenate([images, images])
    return torch.from_numpy(np.ascontiguousarray(batch))


def _export_onnx_file(
    job: _Job, wrapper: torch.nn.Module, sample: torch.Tensor, path: Path, step: _Progress
) -> tuple[int, Simplification]:
    info = job.checkpoint.data
    step(f"export {path.name}")
    export_onnx(wrapper, sample, path, opset=job.opset)
    if job.simplify:
        step(f"simplify {path.name}")
        simplification = simplify_onnx(path)
    else:
        simplification = Simplification(False, "disabled")
    step(f"check {path.name}")
    opset = check_onnx(
        path,
        height=info.height,
        width=info.width,
        channels=info.channels,
        num_classes=len(info.labels),
    )
    return opset, simplification


def _build(job: _Job, staging: Path, version: int, step: _Progress) -> Manifest:
    """Write every file of the version into `staging`, check parity, return the manifest."""
    info = job.checkpoint.data
    wrapper = wrapper_for(job.network, info)
    sample = _sample(job.parity.images)
    opset, simplification = _export_onnx_file(job, wrapper, sample, staging / ONNX_FILENAME, step)
    simplifications = [f"{ONNX_FILENAME}: {simplification.description}"]
    simplified = simplification.applied

    step(f"trace {TORCHSCRIPT_FILENAME}")
    export_torchscript(wrapper, sample, staging / TORCHSCRIPT_FILENAME)
    filenames = [ONNX_FILENAME, TORCHSCRIPT_FILENAME]
    candidates = [
        Candidate("onnxruntime", onnxruntime_runner(staging / ONNX_FILENAME), FP32_TOLERANCE),
        Candidate(
            "torchscript", torchscript_runner(staging / TORCHSCRIPT_FILENAME), FP32_TOLERANCE
        ),
    ]
    if job.fp16:
        half = wrapper_for(job.network, info, half=True)
        path16 = staging / ONNX_FP16_FILENAME
        _, simplification16 = _export_onnx_file(job, half, sample, path16, step)
        simplifications.append(f"{ONNX_FP16_FILENAME}: {simplification16.description}")
        simplified = simplified or simplification16.applied
        filenames.append(ONNX_FP16_FILENAME)
        candidates.append(Candidate("onnxruntime_fp16", onnxruntime_runner(path16), FP16_TOLERANCE))

    results = check_parity(
        eager_runner(wrapper),
        candidates,
        job.parity.images,
        image_source=job.parity.source,
        batch_sizes=job.batch_sizes,
        on_step=step,
    )
    require_pass(results)

    step("manifest")
    model_kwargs = job.checkpoint.model_kwargs
    from models import count_flops, count_parameters

    return build_manifest(
        job.checkpoint,
        dataset=job.dataset,
        model=job.model,
        version=version,
        version_dir=staging,
        filenames=filenames,
        parameters=count_parameters(job.network),
        flops=count_flops(
            job.network,
            in_channels=int(model_kwargs.get("in_channels", info.channels)),
            image_size=int(model_kwargs.get("image_size", info.height)),
        ),
        export=ExportInfo(
            opset=opset,
            torch_version=torch.__version__,
            onnx_version=onnx.__version__,
            onnxruntime_version=onnxruntime.__version__,
            simplified=simplified,
            simplification="; ".join(simplifications),
            parity=results,
        ),
        commit=git_commit(),
    )


def _stage_count(job: _Job) -> int:
    files = 2 if job.fp16 else 1
    per_onnx = 3 if job.simplify else 2
    runtimes = 3 if job.fp16 else 2
    sizes = len(effective_batch_sizes(job.batch_sizes, len(job.parity.images)))
    return files * per_onnx + 1 + sizes * (1 + runtimes) + 1


def export_checkpoint(
    checkpoint: Path,
    repository: Path,
    *,
    dataset: str | None = None,
    model: str | None = None,
    version: int | None = None,
    data_root: Path | None = None,
    parity_images: int = DEFAULT_PARITY_IMAGES,
    fp16: bool = False,
    simplify: bool = True,
    progress: bool = True,
    opset: int = DEFAULT_OPSET,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    cache_dir: Path | None = None,
) -> ExportResult:
    """Export `checkpoint` as a new version of `<repository>/<dataset>/<model>/`.

    dataset / model default to the checkpoint's data set and architecture. `version` defaults
    to the next free number; an explicit one must not exist. Parity runs on `parity_images`
    images of the data set's validation split (root from `data_root` or the checkpoint), else
    on the embedded demo images, at `batch_sizes`. `cache_dir` caches decoded data sets.
    Bad input raises a `UserError` subclass (ExportError, CheckpointError) and writes nothing.
    """
    if parity_images < 1:
        raise ExportError(f"--parity-images must be at least 1, got {parity_images}")
    effective_batch_sizes(batch_sizes, parity_images)  # validates before any work
    ckpt = load_checkpoint(checkpoint)
    dataset = dataset if dataset is not None else ckpt.data.dataset
    model = model if model is not None else ckpt.architecture
    # Names, repository and version are checked before the minutes of export work.
    check_target(repository, dataset, model, version)
    network = ckpt.build_model()
    images = load_parity_images(
        ckpt.data, parity_images, data_root=data_root, cache_dir=cache_dir, progress=progress
    )
    log.info("parity images: %d from %s", len(images.images), images.source)
    job = _Job(ckpt, network, dataset, model, images, batch_sizes, fp16, simplify, opset)
    step = _Progress(_stage_count(job), progress)
    try:
        version_dir, manifest = write_version(
            repository,
            dataset,
            model,
            lambda staging, number: _build(job, staging, number, step),
            version=version,
        )
    finally:
        step.close()
    return ExportResult(version_dir, manifest)
