"""Build the `imgzoo.manifest.Manifest` of a version from a checkpoint and the export results."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from export.errors import ExportError
from imgzoo.manifest import (
    Composition,
    ExportInfo,
    InputSpec,
    Manifest,
    Metrics,
    TrainingInfo,
    sha256_file,
)
from training.checkpoint import Checkpoint, DataInfo

Hyperparameter = float | int | str | bool | None | list[float] | list[int]

_GIT_TIMEOUT_S = 10


def git_commit(directory: Path | None = None) -> str | None:
    """`git rev-parse HEAD` of the source tree the package runs from; None outside a checkout.

    Default directory: the one this module lives in, so an installed wheel (not a checkout)
    records None rather than the commit of whatever directory the user ran from.
    """
    where = directory if directory is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    if done.returncode != 0 or len(commit) not in (40, 64):
        return None
    return commit


def _hyperparameter(value: Any) -> Hyperparameter:
    """Coerce a recipe value to what the manifest schema stores; anything else as JSON text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        if all(isinstance(v, int) for v in value):
            return [int(v) for v in value]
        return [float(v) for v in value]
    return json.dumps(value, sort_keys=True, default=str)


def hyperparameters(values: Mapping[str, Any]) -> dict[str, Hyperparameter]:
    return {str(k): _hyperparameter(v) for k, v in sorted(values.items())}


def file_digests(
    version_dir: Path, filenames: Sequence[str]
) -> tuple[dict[str, str], dict[str, int]]:
    """sha256 and size of each named file in `version_dir`."""
    digests = {name: sha256_file(version_dir / name) for name in filenames}
    sizes = {name: (version_dir / name).stat().st_size for name in filenames}
    return digests, sizes


def input_spec(info: DataInfo) -> InputSpec:
    """The graph input as the manifest describes it, from what the network was trained on."""
    return InputSpec.model_validate(
        {
            "height": info.height,
            "width": info.width,
            "channels": info.channels,
            "resize": info.resize,
            "interpolation": info.interpolation,
            "mean": tuple(info.mean),
            "std": tuple(info.std),
        }
    )


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"{where}: {first['msg']}"


def build_manifest(
    checkpoint: Checkpoint,
    *,
    dataset: str,
    model: str,
    version: int,
    version_dir: Path,
    filenames: Sequence[str],
    parameters: int,
    flops: int,
    export: ExportInfo,
    created_at: datetime | None = None,
    commit: str | None = None,
    composition: Composition | None = None,
    composite_val_accuracy: float | None = None,
) -> Manifest:
    """The validated manifest of the files `filenames` in `version_dir`.

    `checkpoint` is the (first) member. A `composition` (TTA, ensemble) replaces the
    checkpoint's accuracies by `composite_val_accuracy`, measured on the graph (None: not
    measured), and sums the members' training seconds.

    Raises ExportError with the first schema violation (for instance a resize policy or
    label list the schema does not accept), so nothing invalid is ever written.
    """
    digests, sizes = file_digests(version_dir, filenames)
    metrics = checkpoint.metrics
    val_accuracy, test_accuracy = metrics.get("val_accuracy"), metrics.get("test_accuracy")
    seconds = checkpoint.train_seconds
    if composition is not None:
        val_accuracy, test_accuracy = composite_val_accuracy, None
        seconds = sum(member.seconds for member in composition.members)
    try:
        return Manifest(
            dataset=dataset,
            model=model,
            version=version,
            labels=list(checkpoint.data.labels),
            input=input_spec(checkpoint.data),
            metrics=Metrics(
                val_accuracy=val_accuracy,
                test_accuracy=test_accuracy,
                parameters=parameters,
                flops=flops,
                file_sizes=sizes,
            ),
            training=TrainingInfo(
                recipe=checkpoint.recipe,
                architecture=checkpoint.architecture,
                epochs=checkpoint.epoch,
                seconds=seconds,
                device=checkpoint.device,
                seed=checkpoint.seed,
                hyperparameters=hyperparameters(checkpoint.hyperparameters),
            ),
            export=export,
            composition=composition,
            sha256=digests,
            created_at=created_at if created_at is not None else datetime.now(UTC),
            git_commit=commit,
        )
    except ValidationError as exc:
        raise ExportError(
            f"the checkpoint does not give a valid manifest: {_first_error(exc)}"
        ) from None
