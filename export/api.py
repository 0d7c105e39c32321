"""`export_checkpoint`: a training checkpoint -> the next version in the model repository.

checkpoint(s) -> network [under TTA, in an ensemble] -> ExportWrapper (uint8 NHWC -> logits)
              -> model.onnx (dynamo exporter, checked, simplified where it helps)
              -> model.ts (traced)            [-> model.fp16.onnx]
              -> parity vs eager on real images [-> composite: accuracy of model.onnx on val]
              -> manifest.json -> rename into place
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

from export.composite import check_members, compose, views_per_image
from export.errors import ExportError
from export.graph_accuracy import GraphAccuracy, measure_graph_accuracy
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
    Composition,
    EnsembleMember,
    ExportInfo,
    Manifest,
    ParityResult,
    sha256_file,
)
from imgzoo.names import default_model_name
from training.checkpoint import Checkpoint, load_checkpoint
from training.evaluate import TTA_VIEWS

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
class _Member:
    path: Path
    checkpoint: Checkpoint
    network: torch.nn.Module


@dataclass(frozen=True)
class _Job:
    members: list[_Member]
    network: torch.nn.Module  # the members composed: what the graph computes
    tta: int
    dataset: str
    model: str
    parity: ParityImages
    batch_sizes: Sequence[int]
    fp16: bool
    simplify: bool
    opset: int
    data_root: Path | None
    cache_dir: Path | None

    @property
    def checkpoint(self) -> Checkpoint:
        """The first member: its data set, labels and input preparation are everyone's."""
        return self.members[0].checkpoint

    @property
    def composite(self) -> bool:
        return self.tta > 0 or len(self.members) > 1


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

    composition, accuracy = None, None
    if job.composite:
        step("validation accuracy")
        measured = measure_graph_accuracy(
            staging / ONNX_FILENAME, info, data_root=job.data_root, cache_dir=job.cache_dir
        )
        composition = _composition(job, measured)
        if measured is not None:
            accuracy = measured.accuracy
            log.info("validation accuracy of the graph: %.2f%%", 100 * accuracy)

    step("manifest")
    return build_manifest(
        job.checkpoint,
        dataset=job.dataset,
        model=job.model,
        version=version,
        version_dir=staging,
        filenames=filenames,
        parameters=sum(_parameters(m) for m in job.members),
        flops=sum(_flops(m) for m in job.members) * views_per_image(job.tta, 1),
        composition=composition,
        composite_val_accuracy=accuracy,
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


def _parameters(member: _Member) -> int:
    from models import count_parameters

    return count_parameters(member.network)


def _flops(member: _Member) -> int:
    from models import count_flops

    info, kwargs = member.checkpoint.data, member.checkpoint.model_kwargs
    return count_flops(
        member.network,
        in_channels=int(kwargs.get("in_channels", info.channels)),
        image_size=int(kwargs.get("image_size", info.height)),
    )


def _composition(job: _Job, measured: GraphAccuracy | None) -> Composition:
    members = [
        EnsembleMember(
            recipe=m.checkpoint.recipe,
            architecture=m.checkpoint.architecture,
            seed=m.checkpoint.seed,
            epochs=m.checkpoint.epoch,
            seconds=m.checkpoint.train_seconds,
            val_accuracy=m.checkpoint.metrics.get("val_accuracy"),
            checkpoint_sha256=sha256_file(m.path),
        )
        for m in job.members
    ]
    return Composition(
        tta=job.tta,
        views=views_per_image(job.tta, len(members)),
        combine="mean_log_softmax" if len(members) > 1 else "single",
        members=members,
        val_images=measured.images if measured is not None else None,
        val_source=measured.source if measured is not None else None,
    )


def _stage_count(job: _Job) -> int:
    files = 2 if job.fp16 else 1
    per_onnx = 3 if job.simplify else 2
    runtimes = 3 if job.fp16 else 2
    sizes = len(effective_batch_sizes(job.batch_sizes, len(job.parity.images)))
    accuracy = 1 if job.composite else 0
    return files * per_onnx + 1 + sizes * (1 + runtimes) + accuracy + 1


def export_checkpoint(
    checkpoint: Path | Sequence[Path],
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
    tta: int = 0,
) -> ExportResult:
    """Export `checkpoint` as a new version of `<repository>/<dataset>/<model>/`.

    Several checkpoints make one ensemble graph (`export.composite`); `tta` > 0 puts the
    test-time augmentation of that level into the graph. Such a composite version's
    validation accuracy is measured on the exported graph when the split can be loaded.

    dataset / model default to the checkpoint's data set and architecture (`<arch>_x<k>`
    for an ensemble of k). `version` defaults
    to the next free number; an explicit one must not exist. Parity runs on `parity_images`
    images of the data set's validation split (root from `data_root` or the checkpoint), else
    on the embedded demo images, at `batch_sizes`. `cache_dir` caches decoded data sets.
    Bad input raises a `UserError` subclass (ExportError, CheckpointError) and writes nothing.
    """
    if parity_images < 1:
        raise ExportError(f"--parity-images must be at least 1, got {parity_images}")
    effective_batch_sizes(batch_sizes, parity_images)  # validates before any work
    if tta not in TTA_VIEWS:
        raise ExportError(f"--tta must be one of {sorted(TTA_VIEWS)}, got {tta}")
    paths = [checkpoint] if isinstance(checkpoint, Path) else list(checkpoint)
    if not paths:
        raise ExportError("no checkpoint to export")
    if len({p.resolve() for p in paths}) != len(paths):
        raise ExportError("the same checkpoint is named twice: an ensemble needs distinct ones")
    checkpoints = [load_checkpoint(p) for p in paths]
    check_members(checkpoints, [str(p) for p in paths])
    ckpt = checkpoints[0]
    dataset = dataset if dataset is not None else ckpt.data.dataset
    if model is None:
        model = default_model_name([c.architecture for c in checkpoints])
    # Names, repository and version are checked before the minutes of export work.
    check_target(repository, dataset, model, version)
    members = [_Member(p, c, c.build_model()) for p, c in zip(paths, checkpoints, strict=True)]
    network = compose([m.network for m in members], tta)
    images = load_parity_images(
        ckpt.data, parity_images, data_root=data_root, cache_dir=cache_dir, progress=progress
    )
    log.info("parity images: %d from %s", len(images.images), images.source)
    job = _Job(
        members=members,
        network=network,
        tta=tta,
        dataset=dataset,
        model=model,
        parity=images,
        batch_sizes=batch_sizes,
        fp16=fp16,
        simplify=simplify,
        opset=opset,
        data_root=data_root,
        cache_dir=cache_dir,
    )
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
