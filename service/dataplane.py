"""The data plane: images in, top-k out. Routers stay thin and delegate here.

predict = decode (thread pool, off the event loop) -> the model's batcher -> softmax (float64,
max-subtracted) -> top-k, with the latency of every stage.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np
import numpy.typing as npt

from service.batcher import Arrival, RowResult
from service.errors import ModelNotReady, ServiceError, ShuttingDown
from service.imaging import DecodeLimits, decode_image, png_header_pixels
from service.metrics import UNKNOWN, ServiceMetrics
from service.registry import ModelRegistry, ModelVersion
from service.settings import Settings
from service.uploads import UploadLimits

logger = logging.getLogger(__name__)

# The client went away before its answer (nginx's convention); counted, never sent.
CLIENT_CLOSED_REQUEST = 499

# Rows up to this many classes are ranked without numpy (`top_k_predictions`).
PLAIN_RANKING_MAX_CLASSES = 64


def softmax(logits: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """Probabilities of one row of logits, in float64, stable for any logit magnitude."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max()
    e = np.exp(z)
    probabilities: npt.NDArray[np.float64] = e / e.sum()
    return probabilities


def top_k_predictions(
    logits: npt.NDArray[np.floating[Any]], labels: Sequence[str], k: int
) -> list[dict[str, Any]]:
    """The k most probable labels, best first (ties: lower index first).

    A short finite row is ranked with Python floats (float64, as `softmax`), because on a few
    classes numpy's per-call overhead is most of the work: about 35 µs a request in the
    server, against 10 µs this way (`docs/benchmarks.md`, change 19).
    """
    ranked = _rank_plain(logits, k) if len(logits) <= PLAIN_RANKING_MAX_CLASSES else None
    if ranked is None:
        ranked = _rank_numpy(logits, k)
    return [{"label": labels[i], "index": i, "probability": p} for i, p in ranked]


def _rank_plain(logits: npt.NDArray[np.floating[Any]], k: int) -> list[tuple[int, float]] | None:
    """(index, probability) of the k best, in Python floats; None for a non-finite row."""
    row: list[float] = logits.tolist()
    if not all(map(math.isfinite, row)):
        return None
    peak = max(row)
    weights = [math.exp(x - peak) for x in row]
    total = math.fsum(weights)
    # sorted(reverse=True) is stable: equal weights keep index order.
    best = sorted(range(len(row)), key=weights.__getitem__, reverse=True)[:k]
    return [(i, weights[i] / total) for i in best]


def _rank_numpy(logits: npt.NDArray[np.floating[Any]], k: int) -> list[tuple[int, float]]:
    """(index, probability) of the k best, through `softmax` and a stable argsort."""
    probabilities = softmax(logits)
    best: list[int] = np.argsort(-probabilities, kind="stable")[:k].tolist()
    return list(zip(best, probabilities[best].tolist(), strict=True))


@dataclass
class Outcome:
    """Filled by a request while `DataPlane.track` watches it."""

    stages: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictResult:
    body: dict[str, Any]
    stages: dict[str, float]


class DataPlane:
    """Prediction for the routers: owns the decode threads, uses the registry's batchers."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        metrics: ServiceMetrics,
        decode_threads: int,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.limits = DecodeLimits(
            max_pixels=settings.max_image_pixels, formats=frozenset(settings.image_formats)
        )
        self.upload_limits = UploadLimits(
            max_bytes=settings.max_upload_bytes, max_images=settings.max_images_per_request
        )
        self._decoder = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")

    def close(self) -> None:
        self._decoder.shutdown(wait=True)

    @contextmanager
    def track(self, dataset: str, model: str) -> Iterator[Outcome]:
        """Count one prediction request (status, stages, in-flight), whatever its outcome."""
        outcome = Outcome()
        known = self.registry.has_model(dataset, model)
        labels = (dataset, model) if known else (UNKNOWN, UNKNOWN)
        self.metrics.inflight.inc()
        status = 500
        try:
            yield outcome
            status = 200
        except ServiceError as exc:
            status = exc.status_code
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            self.metrics.inflight.dec()
            self.metrics.observe_request(*labels, status, outcome.stages if status == 200 else None)

    def resolve(self, dataset: str, model: str, version: int | None) -> ModelVersion:
        """The version a new request runs on; 503 `shutting_down` once a shutdown began.

        Requests that got past this point before the shutdown began still finish.
        """
        if self.registry.closing:
            raise ShuttingDown(
                "the service is shutting down; retry on another instance",
                # Closing the connection sends the client's retry to a fresh connection,
                # which a load balancer routes to an instance that is not going away.
                headers={"Retry-After": "1", "Connection": "close"},
            )
        return self.registry.resolve(dataset, model, version)

    @contextmanager
    def admit(self, entry: ModelVersion) -> Iterator[Arrival]:
        """Hold a place for one request on `entry` from before its body is read to its answer.

        When the version already has as many requests in flight as its queue and its running
        batches hold (`max_queue_size + max_batch_size x sessions`), the request is refused at
        once with 503 `queue_full`: under overload, bodies waiting to be read and decoded are
        bounded like the queue, instead of piling up in front of it.

        The admitted request is announced to the version's batcher as arriving (the `Arrival`
        this yields, handed on to `predict` / `infer`), so a partial batch waits for it
        rather than leaving without it.
        """
        batching = entry.batching
        if entry.in_flight >= batching.max_queue_size + batching.max_batch_size * batching.sessions:
            raise entry.batcher.refuse(1)
        entry.in_flight += 1
        try:
            with entry.batcher.arriving() as arrival:
                yield arrival
        finally:
            entry.in_flight -= 1

    async def predict(
        self,
        entry: ModelVersion,
        images: Sequence[bytes],
        *,
        top_k: int | None,
        request_id: str,
        started: float,
        pinned: bool,
        arrival: Arrival | None = None,
    ) -> PredictResult:
        """Decode, batch, run and rank `images` with one loaded model version.

        The version is leased for the whole call, so a hot reload retiring it waits until
        this request has its answer; a version retired since it was resolved is swapped
        for its replacement (`ModelRegistry.current`; `pinned` when the request named
        its version number).
        """
        entry, arrival = self._follow(entry, arrival, pinned=pinned)
        with entry.lease():
            k = min(top_k or self.settings.default_top_k, entry.manifest.num_classes)
            entry.counters.requests += 1
            try:
                decode_start = perf_counter()
                arrays = await self.decode_all(entry, images)
                decode_s = perf_counter() - decode_start
                rows = await entry.batcher.infer(arrays, arrival)
            except BaseException:
                entry.counters.failed += 1
                raise
        labels = entry.manifest.labels
        results = [
            {
                "predictions": top_k_predictions(row.logits, labels, k),
                "batch_size": row.batch_size,
                "latency_ms": {"queue": _ms(row.queue_s), "inference": _ms(row.inference_s)},
            }
            for row in rows
        ]
        stages = {
            "decode": decode_s,
            "queue": max(row.queue_s for row in rows),
            "inference": max(row.inference_s for row in rows),
            "total": perf_counter() - started,
        }
        body = {
            "request_id": request_id,
            "dataset": entry.dataset,
            "model": entry.model,
            "version": entry.version,
            "provider": entry.provider,
            "predictions": results[0]["predictions"],
            "batch_size": results[0]["batch_size"],
            "latency_ms": {stage: _ms(seconds) for stage, seconds in stages.items()},
            "results": results,
        }
        return PredictResult(body, stages)

    async def infer(
        self,
        entry: ModelVersion,
        arrays: Sequence[npt.NDArray[np.uint8]],
        arrival: Arrival | None = None,
        *,
        pinned: bool,
    ) -> tuple[ModelVersion, list[RowResult]]:
        """Run already-decoded images (each H, W, C uint8) through a version's batcher.

        Leased like `predict`, so a hot reload never closes the batcher under the request;
        returns the version that really ran them (the replacement when `entry` was retired).
        The images were checked against `entry`'s input: a replacement that takes another
        input answers 503 `model_not_ready` (retry) rather than failing the whole batch.
        """
        current, arrival = self._follow(entry, arrival, pinned=pinned)
        if current is not entry and current.manifest.input != entry.manifest.input:
            raise ModelNotReady(
                f"{current.dataset}/{current.model} was replaced by version {current.version}, "
                "which takes another input, while this request waited; retry it",
                headers={"Retry-After": "1"},
            )
        entry = current
        with entry.lease():
            entry.counters.requests += 1
            try:
                return entry, await entry.batcher.infer(arrays, arrival)
            except BaseException:
                entry.counters.failed += 1
                raise

    def _follow(
        self, entry: ModelVersion, arrival: Arrival | None, *, pinned: bool
    ) -> tuple[ModelVersion, Arrival | None]:
        """The version to run on now (`ModelRegistry.current`) and the arrival still valid."""
        current = self.registry.current(entry, pinned=pinned)
        if current is not entry and arrival is not None:
            arrival.done()  # announced to the retired version's batcher, not to this one
            arrival = None
        return current, arrival

    async def decode_all(
        self, entry: ModelVersion, images: Sequence[bytes]
    ) -> list[npt.NDArray[np.uint8]]:
        """Decode encoded images for `entry` (used by /predict and /v2).

        In the decoder threads, except one small PNG (`inline_decode_pixels`), which decodes
        on the event loop in less time than the round trip to a thread takes.
        """
        loop = asyncio.get_running_loop()
        spec = entry.manifest.input
        if len(images) == 1:  # the common case, without a gather around one job
            pixels = png_header_pixels(images[0])
            if pixels is not None and pixels <= self.settings.inline_decode_pixels:
                return [decode_image(images[0], spec, self.limits)]
            return [
                await loop.run_in_executor(
                    self._decoder, decode_image, images[0], spec, self.limits
                )
            ]

        jobs = [
            loop.run_in_executor(self._decoder, decode_image, data, spec, self.limits)
            for data in images
        ]
        decoded = await asyncio.gather(*jobs, return_exceptions=True)
        arrays: list[npt.NDArray[np.uint8]] = []
        for index, item in enumerate(decoded):
            if isinstance(item, ServiceError):
                if len(images) > 1:
                    item.details = {**item.details, "image_index": index}
                raise item
            if isinstance(item, BaseException):
                raise item
            arrays.append(item)
        return arrays


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
