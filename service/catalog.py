"""What the registry holds, as the JSON of `GET /models` (shapes in `service.schemas`)."""

from __future__ import annotations

from typing import Any

from service.registry import LoadFailure, ModelRegistry, ModelVersion


def failure_info(failure: LoadFailure) -> dict[str, Any]:
    return {"path": failure.path, "reason": failure.reason}


def version_info(entry: ModelVersion) -> dict[str, Any]:
    manifest = entry.manifest
    stats = entry.batcher.stats
    return {
        "version": entry.version,
        "ready": entry.ready,
        "provider": entry.provider,
        "input": manifest.input.model_dump(mode="json"),
        "labels": list(manifest.labels),
        "metrics": {
            "val_accuracy": manifest.metrics.val_accuracy,
            "test_accuracy": manifest.metrics.test_accuracy,
            "parameters": manifest.metrics.parameters,
            "flops": manifest.metrics.flops,
            "file_sizes": dict(manifest.metrics.file_sizes),
        },
        "architecture": manifest.training.architecture,
        "recipe": manifest.training.recipe,
        "composition": (
            manifest.composition.model_dump(mode="json") if manifest.composition else None
        ),
        "created_at": manifest.created_at.isoformat(),
        "batching": entry.batching.model_dump(),
        "counters": {
            "requests": entry.counters.requests,
            "failed_requests": entry.counters.failed,
            "images": stats.images,
            "batches": stats.batches,
            "inline_batches": stats.inline_batches,
            "failed_batches": stats.failed_batches,
            "expired_images": stats.expired,
            "rejected_images": stats.rejected,
            "queue_depth": entry.batcher.queue_depth,
            "busy_sessions": entry.batcher.busy_workers,
            "in_flight_requests": entry.in_flight,
            "mean_batch_size": round(stats.images / stats.batches, 3) if stats.batches else None,
            "mean_inference_ms": (
                round(stats.inference_seconds / stats.batches * 1000, 3) if stats.batches else None
            ),
        },
    }


def model_info(registry: ModelRegistry, dataset: str, model: str) -> dict[str, Any]:
    """One model (ModelNotFound listing what exists when it has no loaded version)."""
    versions = registry.versions(dataset, model)
    return {
        "dataset": dataset,
        "model": model,
        "default_version": max(versions),
        "versions": [version_info(v) for v in versions.values()],
        "failures": [failure_info(f) for f in registry.failures_of(dataset, model)],
    }


def models_info(registry: ModelRegistry) -> dict[str, Any]:
    return {
        "models": [model_info(registry, d, m) for d, m in registry.models()],
        "failures": [failure_info(f) for f in registry.failures],
    }
