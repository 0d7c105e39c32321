"""The real Triton client (`tritonclient[http]`) against a live imgzoo server on /v2.

Health, metadata and readiness as the client reads them, and inference with binary tensor data
(UINT8 pixels from real decoded images, BYTES encoded images) whose answers equal `/predict`
on the same images: same top-1, probabilities within 1e-6. The v2 requests run through the
same batcher and metrics as `/predict`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from imgzoo import __version__
from imgzoo.manifest import load_manifest
from service.imaging import DecodeLimits, decode_image
from tests.service.conftest import CIFAR_LABELS, GRAY_LABELS, LiveServer, Repository, assert_matches

# dataset, model, default (highest) version, labels
MODELS = [("cifar10", "fastnet", 2, CIFAR_LABELS), ("gray", "tiny", 1, GRAY_LABELS)]
N = 4  # the shared server's max_images_per_request


@pytest.fixture(scope="module")
def triton(server: LiveServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(
        url=server.url.removeprefix("http://"), network_timeout=60, connection_timeout=10
    )
    yield client
    client.close()


def _version_dir(repo: Repository, dataset: str, model: str, version: int) -> Path:
    return repo.root / dataset / model / str(version)


def _pixels(version_dir: Path, images: list[bytes]) -> np.ndarray:
    """The images decoded as the service decodes them, stacked NHWC uint8."""
    spec = load_manifest(version_dir).input
    return np.stack([decode_image(image, spec, DecodeLimits()) for image in images])


def _predict_all(server: LiveServer, dataset: str, model: str, images: list[bytes], k: int) -> list:
    """`/predict` on the same images, every class (top_k = K)."""
    files = [("file", (f"{i}.img", image)) for i, image in enumerate(images)]
    with server.client() as client:
        response = client.post(f"/predict/{dataset}/{model}", files=files, params={"top_k": k})
    assert response.status_code == 200, response.text
    return [result["predictions"] for result in response.json()["results"]]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _assert_same_as_predict(logits: np.ndarray, predicted: list, labels: list[str]) -> None:
    assert logits.dtype == np.float32
    assert logits.shape == (len(predicted), len(labels))
    for row, predictions in zip(_softmax(logits), predicted, strict=True):
        assert_matches(predictions, row, len(labels))  # top-1 equal, probabilities within 1e-6
        assert [p["label"] for p in predictions] == [labels[p["index"]] for p in predictions]


def test_server_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live() is True
    assert triton.is_server_ready() is True
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "imgzoo"
    assert metadata["version"] == __version__
    assert {"binary_tensor_data", "classification", "model_repository"} <= set(
        metadata["extensions"]
    )


@pytest.mark.parametrize(("dataset", "model", "version", "labels"), MODELS)
def test_model_metadata_and_readiness(
    triton: httpclient.InferenceServerClient,
    server: LiveServer,
    model_repository: Repository,
    dataset: str,
    model: str,
    version: int,
    labels: list[str],
) -> None:
    name = f"{dataset}.{model}"
    spec = load_manifest(_version_dir(model_repository, dataset, model, version)).input
    with server.client() as client:
        loaded = [v["version"] for v in client.get(f"/models/{dataset}/{model}").json()["versions"]]

    metadata = triton.get_model_metadata(name)
    assert metadata["name"] == name
    assert metadata["versions"] == [str(v) for v in loaded]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [
        {
            "name": "image",
            "datatype": "UINT8",
            "shape": [-1, spec.height, spec.width, spec.channels],
        }
    ]
    assert metadata["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, len(labels)]}
    ]
    assert triton.get_model_metadata(name, model_version=str(loaded[0]))["versions"] == [
        str(loaded[0])
    ]

    assert triton.is_model_ready(name) is True
    for v in loaded:
        assert triton.is_model_ready(name, model_version=str(v)) is True
    assert triton.is_model_ready(name, model_version=str(max(loaded) + 7)) is False
    assert triton.is_model_ready(f"{dataset}.nope") is False
    assert triton.is_model_ready(f"{dataset}_{model}") is False  # no dot: not a v2 name
    with pytest.raises(InferenceServerException, match="unknown model") as caught:
        triton.get_model_metadata(f"{dataset}.nope")
    assert caught.value.status() == "404"


def _counters(server: LiveServer, dataset: str, model: str, version: int) -> dict:
    with server.client() as client:
        versions = client.get(f"/models/{dataset}/{model}").json()["versions"]
    return next(v["counters"] for v in versions if v["version"] == version)


def _requests_ok(server: LiveServer, dataset: str, model: str) -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    pattern = (
        rf'^imgzoo_requests_total\{{dataset="{dataset}",model="{model}",status="200"\}} (\S+)$'
    )
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(("dataset", "model", "version", "labels"), MODELS)
def test_binary_uint8_inference_equals_predict_through_the_same_batcher(
    triton: httpclient.InferenceServerClient,
    server: LiveServer,
    model_repository: Repository,
    sample_images: list[bytes],
    dataset: str,
    model: str,
    version: int,
    labels: list[str],
) -> None:
    images = sample_images[:N]
    pixels = _pixels(_version_dir(model_repository, dataset, model, version), images)
    predicted = _predict_all(server, dataset, model, images, len(labels))
    before = _counters(server, dataset, model, version)
    requests_before = _requests_ok(server, dataset, model)

    image = httpclient.InferInput("image", list(pixels.shape), "UINT8")
    image.set_data_from_numpy(pixels, binary_data=True)
    result = triton.infer(
        f"{dataset}.{model}",
        [image],
        outputs=[httpclient.InferRequestedOutput("logits", binary_data=True)],
        request_id="abc-1",
    )
    response = result.get_response()
    assert response["model_name"] == f"{dataset}.{model}"
    assert response["model_version"] == str(version)
    assert response["id"] == "abc-1"
    _assert_same_as_predict(result.as_numpy("logits"), predicted, labels)

    after = _counters(server, dataset, model, version)
    assert after["images"] - before["images"] == N  # the /predict batcher ran them
    assert after["requests"] - before["requests"] == 1
    assert _requests_ok(server, dataset, model) - requests_before == 1


@pytest.mark.parametrize(("dataset", "model", "version", "labels"), MODELS)
def test_binary_bytes_inference_equals_predict(
    triton: httpclient.InferenceServerClient,
    server: LiveServer,
    sample_images: list[bytes],
    dataset: str,
    model: str,
    version: int,
    labels: list[str],
) -> None:
    images = sample_images[N : 2 * N]  # PNG, JPEG, WebP, BMP...: decoded like /predict
    predicted = _predict_all(server, dataset, model, images, len(labels))

    image = httpclient.InferInput("image", [len(images)], "BYTES")
    image.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    result = triton.infer(f"{dataset}.{model}", [image])  # no outputs: all, binary
    _assert_same_as_predict(result.as_numpy("logits"), predicted, labels)


@pytest.mark.parametrize(("dataset", "model", "version", "labels"), MODELS)
def test_classification_extension_and_json_outputs_with_the_client(
    triton: httpclient.InferenceServerClient,
    server: LiveServer,
    model_repository: Repository,
    sample_images: list[bytes],
    dataset: str,
    model: str,
    version: int,
    labels: list[str],
) -> None:
    images = sample_images[2 * N : 3 * N]
    pixels = _pixels(_version_dir(model_repository, dataset, model, 1), images)
    predicted = _predict_all(server, dataset, model, images, len(labels))
    name = f"{dataset}.{model}"

    # JSON input and JSON output, on an explicit version.
    image = httpclient.InferInput("image", list(pixels.shape), "UINT8")
    image.set_data_from_numpy(pixels, binary_data=False)
    plain = triton.infer(
        name,
        [image],
        model_version="1",
        outputs=[httpclient.InferRequestedOutput("logits", binary_data=False)],
    )
    assert plain.get_response()["model_version"] == "1"
    assert "data" in plain.get_response()["outputs"][0]
    _assert_same_as_predict(plain.as_numpy("logits").astype(np.float32), predicted, labels)

    # Classification, binary: "<logit>:<index>:<label>", best first.
    k = 3
    image.set_data_from_numpy(pixels, binary_data=True)
    classified = triton.infer(
        name, [image], outputs=[httpclient.InferRequestedOutput("logits", class_count=k)]
    )
    table = classified.as_numpy("logits")
    assert table.shape == (len(images), k)
    logits = plain.as_numpy("logits")
    for row, predictions, row_logits in zip(table, predicted, logits, strict=True):
        fields = [item.decode().split(":", 2) for item in row]
        assert [int(index) for _, index, _ in fields] == [p["index"] for p in predictions[:k]]
        assert [label for _, _, label in fields] == [p["label"] for p in predictions[:k]]
        for value, index, _ in fields:
            assert np.float32(value) == pytest.approx(row_logits[int(index)], abs=1e-5)


def test_client_errors_carry_the_v2_message(
    triton: httpclient.InferenceServerClient, sample_images: list[bytes]
) -> None:
    image = httpclient.InferInput("image", [1, 31, 32, 3], "UINT8")
    image.set_data_from_numpy(np.zeros((1, 31, 32, 3), dtype=np.uint8))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 31, 32, 3\]") as caught:
        triton.infer("cifar10.fastnet", [image])
    assert caught.value.status() == "400"
    with pytest.raises(InferenceServerException, match="no version 9") as caught:
        triton.infer("cifar10.fastnet", [image], model_version="9")
    assert caught.value.status() == "404"


def test_gzip_and_deflate_request_bodies(
    triton: httpclient.InferenceServerClient, sample_images: list[bytes]
) -> None:
    image = httpclient.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array(sample_images[:1], dtype=np.object_))
    plain = triton.infer("gray.tiny", [image]).as_numpy("logits")
    for algorithm in ("gzip", "deflate"):
        packed = triton.infer(
            "gray.tiny", [image], request_compression_algorithm=algorithm
        ).as_numpy("logits")
        np.testing.assert_allclose(packed, plain, rtol=0, atol=1e-5)
