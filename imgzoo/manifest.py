"""The model-repository contract between `export` (writer) and `service` (reader).

Layout (DESIGN.md)::

    <repository>/<dataset>/<model>/<version>/model.onnx
                                            /model.ts
                                            /manifest.json
    <repository>/<dataset>/<model>/config.json      optional serving overrides

One pydantic schema, validated by the writer before a version is renamed into place and by the
service before a version is loaded. Torch-free on purpose: the serving install reads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

from imgzoo.errors import UserError
from imgzoo.names import NAME_PATTERN

SCHEMA_VERSION: Final = 1
MANIFEST_FILENAME = "manifest.json"
ONNX_FILENAME = "model.onnx"
TORCHSCRIPT_FILENAME = "model.ts"
ONNX_FP16_FILENAME = "model.fp16.onnx"
CONFIG_FILENAME = "config.json"
INPUT_NAME: Final = "image"
OUTPUT_NAME: Final = "logits"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

ResizePolicy = Literal["stretch", "center_crop", "letterbox"]
"""How the service brings an upload of any size to the model's input size.

stretch: resize to exactly H x W, ignoring aspect ratio.
center_crop: resize the shorter side to the target, then crop the centre (torchvision-style).
letterbox: resize the longer side to the target, pad the rest with the fill value.
"""

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box"]

RESIZE_POLICIES: Final[tuple[str, ...]] = get_args(ResizePolicy)
INTERPOLATIONS: Final[tuple[str, ...]] = get_args(Interpolation)


class ManifestError(UserError):
    """A manifest that is missing, unreadable, or does not satisfy the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """What the graph input `image` takes: uint8 NHWC, N dynamic."""

    name: Literal["image"] = INPUT_NAME
    dtype: Literal["uint8"] = "uint8"
    layout: Literal["NHWC"] = "NHWC"
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[1, 3]
    resize: ResizePolicy = "center_crop"
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, ...] = Field(description="Per-channel mean in [0, 1]; applied in-graph.")
    std: tuple[float, ...] = Field(description="Per-channel std in [0, 1]; applied in-graph.")

    @model_validator(mode="after")
    def _stats_match_channels(self) -> InputSpec:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class OutputSpec(_Strict):
    """The graph output: float32 logits `[N, K]`, K = len(labels)."""

    name: Literal["logits"] = OUTPUT_NAME
    dtype: Literal["float32"] = "float32"


class Metrics(_Strict):
    """Quality and cost of the exported network."""

    val_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Of what the graph answers: a composite graph's is measured on the graph.",
    )
    test_accuracy: float | None = Field(default=None, ge=0, le=1)
    parameters: int = Field(ge=0)
    flops: int = Field(ge=0, description="Forward FLOPs for one image at the input size.")
    file_sizes: dict[str, int] = Field(description="Bytes of each file of the version.")


class TrainingInfo(_Strict):
    """How the network was trained.

    For an ensemble: the first member's, with `seconds` summed over all members (each member
    is listed in `composition.members`).
    """

    recipe: str
    architecture: str = Field(description="Registered builder name in `models`.")
    epochs: int = Field(ge=0)
    seconds: float = Field(ge=0)
    device: str
    seed: int
    hyperparameters: dict[str, JsonValue] = {}


class ParityResult(_Strict):
    """One runtime compared with PyTorch eager on the same images."""

    runtime: Literal["onnxruntime", "torchscript", "onnxruntime_fp16"]
    images: int = Field(gt=0)
    image_source: str = Field(
        description="Where the images came from (data set split or embedded)."
    )
    batch_sizes: list[int]
    max_abs_diff: float = Field(ge=0)
    tolerance: float = Field(gt=0)
    top1_agreement: float = Field(ge=0, le=1)
    passed: bool


class ExportInfo(_Strict):
    """How the files were produced and checked."""

    opset: int = Field(ge=7)
    torch_version: str
    onnx_version: str
    onnxruntime_version: str
    simplified: bool = False
    simplification: str | None = Field(
        default=None, description="What graph simplification changed."
    )
    parity: list[ParityResult]


class EnsembleMember(_Strict):
    """One network of a composite graph, as its checkpoint describes it."""

    recipe: str
    architecture: str
    seed: int
    epochs: int = Field(ge=0)
    seconds: float = Field(ge=0)
    val_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="The member alone, without TTA, from training."
    )
    checkpoint_sha256: Sha256


class Composition(_Strict):
    """What the graph runs per image when it is more than one plain network.

    Absent for a plain export. `metrics.val_accuracy` of a composite version is measured on
    the exported graph itself (`val_images` images of `val_source`), not copied from training.
    """

    tta: int = Field(
        ge=0, le=2, description="airbench test-time augmentation level inside the graph."
    )
    views: int = Field(ge=1, description="Network forward passes per image, all members.")
    combine: Literal["single", "mean_log_softmax"]
    members: list[EnsembleMember] = Field(min_length=1)
    val_images: int | None = Field(default=None, ge=1)
    val_source: str | None = None


class Manifest(_Strict):
    """`<repository>/<dataset>/<model>/<version>/manifest.json`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    dataset: Name
    model: Name
    version: int = Field(ge=1)
    labels: list[str] = Field(min_length=2)
    input: InputSpec
    output: OutputSpec = OutputSpec()
    metrics: Metrics
    training: TrainingInfo
    export: ExportInfo
    composition: Composition | None = Field(
        default=None, description="TTA and ensemble members of a composite graph."
    )
    sha256: dict[str, Sha256] = Field(
        description="sha256 of every file of the version but this one."
    )
    created_at: datetime
    git_commit: str | None = None

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels

    @model_validator(mode="after")
    def _files_consistent(self) -> Manifest:
        if ONNX_FILENAME not in self.sha256:
            raise ValueError(f"sha256 must list {ONNX_FILENAME}")
        if MANIFEST_FILENAME in self.sha256:
            raise ValueError("the manifest cannot list its own hash")
        if set(self.metrics.file_sizes) != set(self.sha256):
            raise ValueError("metrics.file_sizes and sha256 must name the same files")
        if not all(p.passed for p in self.export.parity):
            raise ValueError("a version whose parity check failed must not be written")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def parse_manifest(text: str | bytes, *, source: str = "manifest.json") -> Manifest:
    """Validate manifest JSON; raise ManifestError with a one-line reason."""
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ManifestError(f"{source}: invalid manifest at {where}: {first['msg']}") from None


def load_manifest(version_dir: Path) -> Manifest:
    """Read and validate `<version_dir>/manifest.json`, checking it matches its directory."""
    path = version_dir / MANIFEST_FILENAME
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc.strerror})") from None
    manifest = parse_manifest(text, source=str(path))
    expected = (version_dir.parent.parent.name, version_dir.parent.name, version_dir.name)
    actual = (manifest.dataset, manifest.model, str(manifest.version))
    if expected != actual:
        raise ManifestError(
            f"{path}: manifest names {'/'.join(actual)}, directory is {'/'.join(expected)}"
        )
    return manifest


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(
    version_dir: Path, manifest: Manifest, *, loaded: Mapping[str, bytes] | None = None
) -> None:
    """Check every file the manifest lists exists with its recorded size and sha256.

    `loaded` holds files the caller has already read into memory (the service's model.onnx):
    those bytes are checked instead of the file, so what is verified is what gets used and
    nothing is read or hashed twice.
    """
    loaded = loaded or {}
    for filename, expected in manifest.sha256.items():
        path = version_dir / filename
        data = loaded.get(filename)
        if data is None and not path.is_file():
            raise ManifestError(f"{path}: listed in the manifest but missing")
        size = len(data) if data is not None else path.stat().st_size
        recorded = manifest.metrics.file_sizes[filename]
        if size != recorded:
            raise ManifestError(f"{path}: size {size} differs from the manifest's {recorded}")
        digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_file(path)
        if digest != expected:
            raise ManifestError(f"{path}: sha256 differs from the manifest")
