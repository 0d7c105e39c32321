"""Predictions over HTTP equal offline ONNX Runtime on the same decoded images."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.schemas import ModelInfo, ModelsResponse, PredictResponse
from tests.service.conftest import (
    CIFAR_LABELS,
    GRAY_LABELS,
    LiveServer,
    Repository,
    assert_matches,
    offline_probabilities,
    serve,
)

MODELS = [("cifar10", "fastnet", 2, CIFAR_LABELS), ("gray", "tiny", 1, GRAY_LABELS)]


def _version_dir(repo: Repository, dataset: str, model: str, version: int) -> Path:
    return repo.root / dataset / model / str(version)


@pytest.mark.parametrize(("dataset", "model", "version", "labels"), MODELS)
def test_single_image_multipart_and_raw_body_match_offline(
    server: LiveServer,
    model_repository: Repository,
    sample_images: list[bytes],
    dataset: str,
    model: str,
    version: int,
    labels: list[str],
) -> None:
    version_dir = _version_dir(model_repository, dataset, model, version)
    with server.client() as client:
        for image in sample_images[:6]:  # PNG, PNG, JPEG, WebP, BMP, GIF
            reference = offline_probabilities(version_dir, image)
            multipart = client.post(
                f"/predict/{dataset}/{model}",
                files={"file": ("x.img", image, "application/octet-stream")},
                params={"top_k": 5},
            )
            raw = client.post(
                f"/predict/{dataset}/{model}",
                content=image,
                headers={"content-type": "image/png"},
                params={"top_k": 5},
            )
            for response in (multipart, raw):
                assert response.status_code == 200, response.text
                body = PredictResponse.model_validate(response.json()).model_dump()
                assert (body["dataset"], body["model"], body["version"]) == (
                    dataset,
                    model,
                    version,
                )
                assert body["provider"] == "CPUExecutionProvider"
                assert_matches(body["predictions"], reference, 5)
                assert [p["label"] for p in body["predictions"]] == [
                    labels[p["index"]] for p in body["predictions"]
                ]
                assert body["results"][0]["predictions"] == body["predictions"]
                assert body["batch_size"] >= 1
                latency = body["latency_ms"]
                assert latency["total"] >= latency["inference"] > 0
                assert response.headers["x-request-id"] == body["request_id"]
                timing = response.headers["server-timing"]
                assert all(f"{stage};dur=" in timing for stage in latency)


def test_multi_image_request_answers_each_image_in_order(
    server: LiveServer, model_repository: Repository, sample_images: list[bytes]
) -> None:
    images = sample_images[10:14]
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    with server.client() as client:
        response = client.post("/predict/cifar10/fastnet", files=files, params={"top_k": 10})
    assert response.status_code == 200, response.text
    body = PredictResponse.model_validate(response.json()).model_dump()
    assert len(body["results"]) == len(images)
    version_dir = _version_dir(model_repository, "cifar10", "fastnet", 2)
    for image, result in zip(images, body["results"], strict=True):
        assert_matches(result["predictions"], offline_probabilities(version_dir, image), 10)
        assert 1 <= result["batch_size"] <= 8
        assert abs(sum(p["probability"] for p in result["predictions"]) - 1) < 1e-6
    assert body["predictions"] == body["results"][0]["predictions"]


def test_version_selection_and_top_k_default_and_clamp(
    server: LiveServer, sample_images: list[bytes]
) -> None:
    with server.client() as client:
        png = {"content-type": "image/png"}
        default = client.post("/predict/cifar10/fastnet", content=sample_images[0], headers=png)
        first = client.post(
            "/predict/cifar10/fastnet",
            content=sample_images[0],
            headers=png,
            params={"version": 1, "top_k": 50},
        )
    assert default.status_code == 200 and first.status_code == 200
    assert default.json()["version"] == 2  # the highest version by default
    assert len(default.json()["predictions"]) == 3  # the server's default_top_k
    assert first.json()["version"] == 1
    assert len(first.json()["predictions"]) == len(CIFAR_LABELS)  # clamped to K
    # Versions 1 and 2 are the same files: same answer.
    assert [p["index"] for p in first.json()["predictions"][:3]] == [
        p["index"] for p in default.json()["predictions"]
    ]


def test_request_id_is_kept_when_plain_and_replaced_when_not(
    server: LiveServer, sample_images: list[bytes]
) -> None:
    with server.client() as client:
        headers = {"content-type": "image/png", "x-request-id": "abc-123"}
        kept = client.post("/predict/gray/tiny", content=sample_images[1], headers=headers)
        replaced = client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert kept.headers["x-request-id"] == "abc-123"
    assert kept.json()["request_id"] == "abc-123"
    assert replaced.headers["x-request-id"] != "bad id\twith spaces"
    assert len(replaced.headers["x-request-id"]) == 32


def test_concurrent_requests_are_batched_and_each_gets_its_own_row(
    server: LiveServer, model_repository: Repository, sample_images: list[bytes]
) -> None:
    version_dir = _version_dir(model_repository, "cifar10", "fastnet", 2)
    images = sample_images[:32]
    references = [offline_probabilities(version_dir, image) for image in images]
    # The images really differ, so a swapped row would be caught.
    for a, b in itertools.pairwise(references):
        assert np.abs(a - b).max() > 1e-5

    def post(image: bytes) -> dict[str, object]:
        with server.client() as client:
            response = client.post(
                "/predict/cifar10/fastnet",
                content=image,
                headers={"content-type": "image/png"},
                params={"top_k": 10},
            )
        assert response.status_code == 200, response.text
        body: dict[str, object] = response.json()
        return body

    batch_sizes: list[int] = []
    for _ in range(3):  # a busy machine may serialise one round; three give batching a chance
        with ThreadPoolExecutor(max_workers=32) as pool:
            bodies = list(pool.map(post, images))
        for body, reference in zip(bodies, references, strict=True):
            assert_matches(body["predictions"], reference, 10)  # type: ignore[arg-type]
        batch_sizes += [int(body["batch_size"]) for body in bodies]  # type: ignore[call-overload]
        if max(batch_sizes) > 1:
            break
    assert max(batch_sizes) > 1
    assert max(batch_sizes) <= 8  # max_batch_size of the server


def test_models_listing_describes_every_version(server: LiveServer) -> None:
    with server.client() as client:
        listing = ModelsResponse.model_validate(client.get("/models").json())
        one = client.get("/models/gray/tiny")
    assert [(m.dataset, m.model) for m in listing.models] == [
        ("cifar10", "fastnet"),
        ("gray", "tiny"),
    ]
    assert listing.failures == []
    fastnet = listing.models[0]
    assert fastnet.default_version == 2
    assert [v.version for v in fastnet.versions] == [1, 2]
    version = fastnet.versions[1]
    assert version.ready and version.provider == "CPUExecutionProvider"
    assert version.labels == CIFAR_LABELS
    assert version.input.height == 32 and version.input.channels == 3
    assert version.metrics.parameters > 1_000_000
    assert version.metrics.val_accuracy == pytest.approx(0.1)
    assert version.batching.max_batch_size == 8
    assert version.counters.images >= version.counters.batches
    assert one.status_code == 200
    tiny = ModelInfo.model_validate(one.json())
    assert tiny.versions[0].input.channels == 1 and tiny.versions[0].labels == GRAY_LABELS


def test_health_readiness_and_docs(server: LiveServer) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready" and ready.json()["models"] == 3
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
    assert "/predict/{dataset}/{model}" in spec["paths"]
    body = spec["paths"]["/predict/{dataset}/{model}"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "image/*"}


def test_lone_images_run_on_the_event_loop_and_answer_as_offline(
    model_repository: Repository, sample_images: list[bytes]
) -> None:
    """A bound no single-image run exceeds: every lone image after the first runs inline."""
    version_dir = _version_dir(model_repository, "cifar10", "fastnet", 2)
    with serve(model_repository.root, inline_run_max_ms=1000) as live, live.client() as client:
        for image in sample_images[:5]:
            response = client.post(
                "/predict/cifar10/fastnet", files={"file": ("x.png", image, "image/png")}
            )
            assert response.status_code == 200, response.text
            assert_matches(
                response.json()["predictions"], offline_probabilities(version_dir, image), 5
            )
        models = ModelsResponse.model_validate(client.get("/models").json())
        (info,) = [m for m in models.models if (m.dataset, m.model) == ("cifar10", "fastnet")]
        counters = next(v for v in info.versions if v.version == 2).counters
        # The first image is unmeasured (threads), the next four run inline.
        assert (counters.batches, counters.inline_batches) == (5, 4)
