"""Response shapes of the native API (documented in OpenAPI; tests validate live answers)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from imgzoo.manifest import Composition, InputSpec


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Out):
    code: str = Field(description="Stable machine-readable code, e.g. `model_not_found`.")
    message: str = Field(description="One line for humans.")
    details: dict[str, Any] = Field(default_factory=dict, description="Structured context.")


class ErrorResponse(_Out):
    """Every error of the native API."""

    error: ErrorBody


class Prediction(_Out):
    label: str
    index: int = Field(ge=0, description="Position of the label in the model's output.")
    probability: float = Field(ge=0, le=1, description="Softmax probability.")


class RequestLatency(_Out):
    """Milliseconds per stage of the whole request."""

    decode: float = Field(description="Decoding every image (wall time; images in parallel).")
    queue: float = Field(description="Longest wait of an image for its batch.")
    inference: float = Field(description="Longest batch run among the request's images.")
    total: float = Field(description="From the request's arrival to the answer.")


class ImageLatency(_Out):
    """Milliseconds per stage of one image."""

    queue: float
    inference: float


class ImageResult(_Out):
    predictions: list[Prediction] = Field(description="Top-k, best first.")
    batch_size: int = Field(ge=1, description="Images in the batch this image ran in.")
    latency_ms: ImageLatency


class PredictResponse(_Out):
    """Answer of `POST /predict/{dataset}/{model}`.

    `results` has one entry per image, in upload order. `predictions` and `batch_size` repeat
    the first image's, so a single-image client reads them at the top level.
    """

    request_id: str
    dataset: str
    model: str
    version: int
    provider: str = Field(description="ONNX Runtime execution provider the model runs on.")
    predictions: list[Prediction]
    batch_size: int = Field(ge=1)
    latency_ms: RequestLatency
    results: list[ImageResult]


class BatchingInfo(_Out):
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    sessions: int
    timeout_ms: float


class VersionCounters(_Out):
    """Live counters since start-up."""

    requests: int
    failed_requests: int
    images: int
    batches: int
    inline_batches: int = Field(
        description="Batches of one image run on the event loop (`inline_run_max_ms`)."
    )
    failed_batches: int
    expired_images: int
    rejected_images: int
    queue_depth: int
    busy_sessions: int
    in_flight_requests: int = Field(
        description="Requests admitted and not answered yet; at `max_queue_size + "
        "max_batch_size x sessions` new ones get 503 before their body is read."
    )
    mean_batch_size: float | None
    mean_inference_ms: float | None


class QualityInfo(_Out):
    val_accuracy: float | None
    test_accuracy: float | None
    parameters: int
    flops: int
    file_sizes: dict[str, int]


class VersionInfo(_Out):
    version: int
    ready: bool
    provider: str
    input: InputSpec
    labels: list[str]
    metrics: QualityInfo
    architecture: str
    recipe: str
    composition: Composition | None = Field(
        default=None,
        description="TTA and ensemble members when the graph is more than one plain network.",
    )
    created_at: datetime
    batching: BatchingInfo
    counters: VersionCounters


class FailureInfo(_Out):
    path: str = Field(description="Relative to the repository, e.g. `cifar10/resnet18/2`.")
    reason: str


class ModelInfo(_Out):
    dataset: str
    model: str
    default_version: int = Field(description="The version served when a request names none.")
    versions: list[VersionInfo]
    failures: list[FailureInfo]


class ModelsResponse(_Out):
    models: list[ModelInfo]
    failures: list[FailureInfo] = Field(description="Every entry of the repository that failed.")


class HealthResponse(_Out):
    status: str


class ReadinessResponse(_Out):
    status: str = Field(description="`ready` or `not_ready`.")
    reasons: list[str] = Field(description="Why not ready (empty when ready).")
    models: int = Field(description="Model versions serving.")
    failures: list[FailureInfo]


class ReloadResponse(_Out):
    """Answer of `POST /admin/reload`: what the re-scan changed."""

    status: str = Field(description="`ok`, or `error` when nothing could change.")
    error: str | None = Field(description="Why the repository could not be scanned.")
    added: list[str] = Field(description="`dataset/model/version` loaded for the first time.")
    replaced: list[str] = Field(description="Versions whose files changed, now serving anew.")
    removed: list[str] = Field(description="Versions gone from the repository, now retired.")
    failed: list[FailureInfo] = Field(
        description="Entries that failed in this scan (the versions serving before stay)."
    )
    unchanged: int = Field(description="Versions kept as they were.")
    seconds: float = Field(description="Time the reload took, warm-up included.")


class UnloadResponse(_Out):
    dataset: str
    model: str
    status: str = Field(description="`unloaded`.")


class WebConfig(_Out):
    """What the web page needs to know about the service."""

    version: str = Field(description="imgzoo version.")
    api_key_required: bool = Field(description="Whether /predict needs an API key.")
    default_top_k: int
