"""The v2 wire protocol with raw HTTP: JSON tensors, binary framing, classification, errors,
overload, access control and the repository extension."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from imgzoo.manifest import MANIFEST_FILENAME, load_manifest
from service.imaging import DecodeLimits, decode_image
from tests.service.conftest import (
    GRAY_LABELS,
    Controls,
    LiveServer,
    Repository,
    controlled_factory,
    copy_version,
    serve,
)

INFER = "/v2/models/cifar10.fastnet/infer"
HEADER = "Inference-Header-Content-Length"


def _pixels(version_dir: Path, images: list[bytes]) -> np.ndarray:
    spec = load_manifest(version_dir).input
    return np.stack([decode_image(image, spec, DecodeLimits()) for image in images])


def _binary_body(request: dict[str, Any], *sections: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(request).encode()
    return header + b"".join(sections), {HEADER: str(len(header))}


def _uint8_request(pixels: np.ndarray, **extra: Any) -> tuple[bytes, dict[str, str]]:
    tensor = {
        "name": "image",
        "shape": list(pixels.shape),
        "datatype": "UINT8",
        "parameters": {"binary_data_size": pixels.size},
    }
    return _binary_body({"inputs": [tensor], **extra}, pixels.tobytes())


def _error(response: httpx.Response, status: int, contains: str) -> str:
    """A v2 error: the status, exactly `{"error": "<one line>"}`, no traceback or path."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str)
    assert contains in message, message
    assert "\n" not in message
    assert "Traceback" not in message
    assert "/tmp" not in message
    return message


# --------------------------------------------------------------------------- JSON tensors


def test_json_uint8_tensor_in_and_out_equals_binary(
    server: LiveServer, model_repository: Repository, sample_images: list[bytes]
) -> None:
    pixels = _pixels(model_repository.fastnet, sample_images[:3])
    nested = {
        "id": "json-1",
        "inputs": [
            {
                "name": "image",
                "shape": list(pixels.shape),
                "datatype": "UINT8",
                "data": pixels.tolist(),
            }
        ],
    }
    flat = {
        "inputs": [
            {
                "name": "image",
                "shape": list(pixels.shape),
                "datatype": "UINT8",
                "data": pixels.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": "logits"}],
    }
    with server.client() as client:
        nested_answer = client.post(INFER, json=nested)
        flat_answer = client.post(INFER, json=flat)
        body, headers = _uint8_request(pixels, parameters={"binary_data_output": True})
        binary_answer = client.post(INFER, content=body, headers=headers)

    for answer in (nested_answer, flat_answer):
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert HEADER.lower() not in answer.headers
    document = nested_answer.json()
    assert document["id"] == "json-1"
    assert document["model_name"] == "cifar10.fastnet"
    assert document["model_version"] == "2"
    (output,) = document["outputs"]
    assert output["name"] == "logits"
    assert output["datatype"] == "FP32"
    assert output["shape"] == [3, 10]
    json_logits = np.asarray(output["data"], dtype=np.float32).reshape(3, 10)
    np.testing.assert_array_equal(
        np.asarray(flat_answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 10),
        json_logits,
    )

    # Binary answer: JSON header of the declared length, then little-endian FP32 [3, 10].
    assert binary_answer.status_code == 200, binary_answer.text
    length = int(binary_answer.headers[HEADER])
    header = json.loads(binary_answer.content[:length])
    (described,) = header["outputs"]
    assert described["parameters"] == {"binary_data_size": 3 * 10 * 4}
    assert "data" not in described
    raw = binary_answer.content[length:]
    assert len(raw) == 3 * 10 * 4
    binary_logits = np.frombuffer(raw, dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(binary_logits, json_logits, rtol=0, atol=1e-5)


def test_json_bytes_images_as_base64_and_b64_objects(
    server: LiveServer, sample_images: list[bytes]
) -> None:
    images = sample_images[:2]
    encodings = [
        [base64.b64encode(image).decode() for image in images],
        [[{"b64": base64.b64encode(image).decode()}] for image in images],  # shape [2, 1]
    ]
    answers = []
    with server.client() as client:
        for data in encodings:
            shape = [2] if isinstance(data[0], str) else [2, 1]
            request = {
                "inputs": [{"name": "image", "shape": shape, "datatype": "BYTES", "data": data}]
            }
            response = client.post("/v2/models/gray.tiny/infer", json=request)
            assert response.status_code == 200, response.text
            answers.append(response.json()["outputs"][0]["data"])
        files = [("file", (f"{i}.img", image)) for i, image in enumerate(images)]
        predicted = client.post("/predict/gray/tiny", files=files, params={"top_k": 1}).json()
    assert answers[0] == answers[1]
    logits = np.asarray(answers[0], dtype=np.float32).reshape(2, len(GRAY_LABELS))
    assert list(logits.argmax(axis=1)) == [
        r["predictions"][0]["index"] for r in predicted["results"]
    ]


def test_classification_extension_json_and_binary(
    server: LiveServer, model_repository: Repository, sample_images: list[bytes]
) -> None:
    pixels = _pixels(model_repository.gray, sample_images[:2])
    tensor = {
        "name": "image",
        "shape": list(pixels.shape),
        "datatype": "UINT8",
        "data": pixels.tolist(),
    }
    with server.client() as client:
        logits_answer = client.post("/v2/models/gray.tiny/infer", json={"inputs": [tensor]})
        classified = client.post(
            "/v2/models/gray.tiny/infer",
            json={
                "inputs": [tensor],
                "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
            },
        )
        everything = client.post(
            "/v2/models/gray.tiny/infer",
            json={
                "inputs": [tensor],
                "outputs": [
                    {"name": "logits", "parameters": {"classification": 100, "binary_data": True}}
                ],
            },
        )
    logits = np.asarray(logits_answer.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, -1)
    assert classified.status_code == 200, classified.text
    (output,) = classified.json()["outputs"]
    assert output["datatype"] == "BYTES"
    assert output["shape"] == [2, 3]
    rows = [output["data"][0:3], output["data"][3:6]]
    for row, row_logits in zip(rows, logits, strict=True):
        parsed = [item.split(":", 2) for item in row]
        indices = [int(index) for _, index, _ in parsed]
        assert indices == list(np.argsort(-row_logits, kind="stable")[:3])
        assert [label for _, _, label in parsed] == [GRAY_LABELS[i] for i in indices]
        assert [np.float32(value) for value, _, _ in parsed] == [row_logits[i] for i in indices]

    # k above the class count: every class; binary BYTES elements are length-prefixed.
    assert everything.status_code == 200, everything.text
    length = int(everything.headers[HEADER])
    (described,) = json.loads(everything.content[:length])["outputs"]
    assert described["shape"] == [2, len(GRAY_LABELS)]
    raw, items = everything.content[length:], []
    while raw:
        (size,) = struct.unpack("<I", raw[:4])
        items.append(raw[4 : 4 + size].decode())
        raw = raw[4 + size :]
    assert len(items) == 2 * len(GRAY_LABELS)
    assert items[: len(GRAY_LABELS)][0] == rows[0][0]


def test_health_routes_and_the_model_name_mapping(server: LiveServer) -> None:
    with server.client() as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        assert client.get("/v2/models/cifar10.fastnet/ready").json() == {
            "name": "cifar10.fastnet",
            "ready": True,
        }
        names = {f"{m['dataset']}.{m['model']}" for m in client.get("/models").json()["models"]}
        for name in names:
            assert client.get(f"/v2/models/{name}").json()["name"] == name
        openapi = client.get("/openapi.json").json()
    assert "/v2/models/{name}/infer" in openapi["paths"]


# --------------------------------------------------------------------------- errors


def test_unknown_models_versions_and_routes(server: LiveServer) -> None:
    with server.client() as client:
        _error(client.get("/v2/models/cifar10.nope"), 404, "unknown model 'cifar10.nope'")
        _error(client.post("/v2/models/cifar10.nope/infer", json={}), 404, "unknown model")
        _error(client.get("/v2/models/cifar10_fastnet"), 404, "'<dataset>.<model>'")
        _error(client.get("/v2/models/cifar10.fastnet/versions/7"), 404, "no version 7")
        _error(
            client.get("/v2/models/cifar10.fastnet/versions/x/ready"), 400, "invalid model version"
        )
        _error(client.get("/v2/models/cifar10.fastnet/versions/7/ready"), 404, "no version 7")
        _error(client.get("/v2/nothing/here"), 404, "no route /v2/nothing/here")
        wrong = client.get(INFER)
        _error(wrong, 405, "use POST")
        assert wrong.headers["allow"] == "POST"
        _error(client.delete("/v2"), 405, "use GET")


def _image_tensor(shape: list[int], datatype: str = "UINT8", **parameters: Any) -> dict[str, Any]:
    return {"name": "image", "shape": shape, "datatype": datatype, "parameters": parameters}


@pytest.mark.parametrize(
    ("request_body", "binary", "contains"),
    [
        # shape / data length
        (
            {"inputs": [_image_tensor([1, 31, 32, 3], binary_data_size=2976)]},
            2976,
            "shape [1, 31, 32, 3]",
        ),
        (
            {"inputs": [_image_tensor([1, 32, 32], binary_data_size=3072)]},
            3072,
            "shape [1, 32, 32]",
        ),
        (
            {"inputs": [_image_tensor([2, 32, 32, 3], binary_data_size=3072)]},
            3072,
            "needs 6144 bytes",
        ),
        ({"inputs": [_image_tensor([0, 32, 32, 3], binary_data_size=0)]}, 0, "holds no image"),
        ({"inputs": [_image_tensor([5, 32, 32, 3], binary_data_size=15360)]}, 15360, "at most 4"),
        # datatype
        (
            {"inputs": [_image_tensor([1, 32, 32, 3], "FP32", binary_data_size=12288)]},
            12288,
            "datatype FP32",
        ),
        # binary sections
        (
            {"inputs": [_image_tensor([1, 32, 32, 3], binary_data_size=3072)]},
            3000,
            "runs past the end",
        ),
        (
            {"inputs": [_image_tensor([1, 32, 32, 3], binary_data_size=3072)]},
            3100,
            "add up to 3072",
        ),
        (
            {"inputs": [_image_tensor([1, 32, 32, 3], binary_data_size=-1)]},
            0,
            "binary_data_size must be",
        ),
        (
            {"inputs": [_image_tensor([1], "BYTES", binary_data_size=8)]},
            struct.pack("<I", 100) + b"abcd",
            "declares",
        ),
        # structure
        ({"inputs": []}, 0, "inputs"),
        (
            {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]},
            0,
            "neither 'data' nor",
        ),
        (
            {"inputs": [{**_image_tensor([1, 32, 32, 3], binary_data_size=3072), "name": "x"}]},
            3072,
            "unexpected input 'x'",
        ),
        (
            {
                "inputs": [_image_tensor([1, 32, 32, 3], binary_data_size=3072)],
                "outputs": [{"name": "probs"}],
            },
            3072,
            "unknown output 'probs'",
        ),
        (
            {
                "inputs": [_image_tensor([1, 32, 32, 3], binary_data_size=3072)],
                "outputs": [{"name": "logits", "parameters": {"classification": -2}}],
            },
            3072,
            "classification",
        ),
        (
            {
                "inputs": [_image_tensor([1, 32, 32, 3], binary_data_size=3072)],
                "parameters": {"binary_data_output": "yes"},
            },
            3072,
            "true or false",
        ),
        (
            {"inputs": [{"name": "image", "shape": ["1"], "datatype": "BYTES", "data": ["eA=="]}]},
            0,
            "inputs.0.shape.0",
        ),
    ],
)
def test_bad_tensors_are_400(
    server: LiveServer, request_body: dict[str, Any], binary: int | bytes, contains: str
) -> None:
    section = binary if isinstance(binary, bytes) else bytes(binary)
    body, headers = _binary_body(request_body, section)
    with server.client() as client:
        _error(client.post(INFER, content=body, headers=headers), 400, contains)


@pytest.mark.parametrize(
    ("data", "contains"),
    [
        ([[1, 2], [3]], "not a regular array"),
        ([0.5] * 3072, "list of integers"),
        ([256] * 3072, "within 0..255"),
        ([1] * 3071, "needs 3072 values, got 3071"),
        ("abc", "list of integers"),
    ],
)
def test_bad_json_uint8_data_is_400(server: LiveServer, data: Any, contains: str) -> None:
    tensor = {"name": "image", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": data}
    with server.client() as client:
        _error(client.post(INFER, json={"inputs": [tensor]}), 400, contains)


def test_bad_framing_and_json_are_400(server: LiveServer) -> None:
    header = b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["eA=="]}]}'
    with server.client() as client:
        for value in ("abc", "-3", "1.5"):
            response = client.post(INFER, content=header, headers={HEADER: value})
            _error(response, 400, "must be a non-negative integer")
        response = client.post(INFER, content=header, headers={HEADER: str(len(header) + 1)})
        _error(response, 400, f"only {len(header)} bytes")
        _error(client.post(INFER, content=b'{"inputs": [', headers={}), 400, "malformed JSON")
        _error(client.post(INFER, content=b"[1, 2]"), 400, "must be a JSON object")
        _error(
            client.post(INFER, content=header[:-1], headers={HEADER: str(len(header) - 1)}),
            400,
            "malformed JSON",
        )
        bad_b64 = {
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]
        }
        _error(client.post(INFER, json=bad_b64), 400, "not valid base64")
        truncated_length = {"inputs": [_image_tensor([1], "BYTES", binary_data_size=2)]}
        body, headers = _binary_body(truncated_length, b"\x01\x00")
        _error(client.post(INFER, content=body, headers=headers), 400, "truncated BYTES element")


def test_image_and_body_limits(server: LiveServer, sample_images: list[bytes]) -> None:
    with server.client() as client:
        corrupt = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode()],
                }
            ]
        }
        response = client.post(INFER, json=corrupt)
        assert response.status_code == 422
        _error(response, 422, "")
        too_big = b"{" + b" " * 1_000_001 + b"}"  # the shared server takes 1 MB
        _error(client.post(INFER, content=too_big), 413, "larger than 1000000 bytes")
        bomb = gzip.compress(b" " * 2_000_000)
        _error(
            client.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"}),
            413,
            "larger than",
        )
        _error(
            client.post(INFER, content=b"{}", headers={"Content-Encoding": "br"}),
            415,
            "Content-Encoding",
        )
        _error(
            client.post(INFER, content=b"not gzip", headers={"Content-Encoding": "gzip"}),
            400,
            "not valid gzip",
        )


# --------------------------------------------------------------------------- overload


@pytest.fixture(scope="module")
def slow_v2_server(model_repository: Repository) -> Iterator[tuple[LiveServer, Controls]]:
    """gray/tiny only, one session, batches of 1, a queue of 2, a 400 ms deadline."""
    controls = Controls()
    root = model_repository.root.parent / "v2-slow-repository"
    if not root.exists():
        shutil.copytree(model_repository.gray, root / "gray" / "tiny" / "1")
    with serve(
        root,
        session_factory=controlled_factory(controls),
        max_batch_size=1,
        max_queue_size=2,
        request_timeout_ms=400,
        max_queue_delay_ms=0,
    ) as live:
        yield live, controls


def test_queue_full_is_503_with_retry_after_and_deadline_is_504(
    slow_v2_server: tuple[LiveServer, Controls],
    model_repository: Repository,
    sample_images: list[bytes],
) -> None:
    server, controls = slow_v2_server
    pixels = _pixels(model_repository.gray, sample_images[:1])
    body, headers = _uint8_request(pixels)

    def post(_: int) -> httpx.Response:
        with server.client() as client:
            return client.post("/v2/models/gray.tiny/infer", content=body, headers=headers)

    controls.delay_s = 0.3
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            responses = list(pool.map(post, range(10)))
    finally:
        controls.delay_s = 0.0
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503, 504}, statuses
    full = [r for r in responses if r.status_code == 503]
    late = [r for r in responses if r.status_code == 504]
    assert full and late, statuses
    for response in full:
        _error(response, 503, "queue is full")
        assert int(response.headers["retry-after"]) >= 1
    for response in late:
        _error(response, 504, "deadline")
    time.sleep(1.0)
    assert post(0).status_code == 200

    controls.fail = True
    try:
        _error(post(0), 500, "the model failed")
    finally:
        controls.fail = False


# --------------------------------------------------------------------------- access control


@pytest.fixture(scope="module")
def secured_server(
    model_repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """gray/tiny v1 and a corrupt v2; API key `k-123`, admin token `adm-456`."""
    root = tmp_path_factory.mktemp("v2-secured")
    copy_version(root, model_repository.gray)
    broken = copy_version(root, model_repository.gray, version=2)
    (broken / MANIFEST_FILENAME).write_text("{not json")
    with serve(root, api_keys=["k-123"], admin_token="adm-456") as live:
        yield live


KEY = {"Authorization": "Bearer k-123"}
ADMIN = {"X-API-Key": "adm-456"}


def test_inference_needs_the_api_key(
    secured_server: LiveServer, model_repository: Repository, sample_images: list[bytes]
) -> None:
    body, headers = _uint8_request(_pixels(model_repository.gray, sample_images[:1]))
    with secured_server.client() as client:
        missing = client.post("/v2/models/gray.tiny/infer", content=body, headers=headers)
        _error(missing, 401, "missing API key")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = client.post(
            "/v2/models/gray.tiny/infer",
            content=body,
            headers={**headers, "Authorization": "Bearer nope"},
        )
        _error(wrong, 401, "invalid API key")
        right = client.post("/v2/models/gray.tiny/infer", content=body, headers={**headers, **KEY})
        assert right.status_code == 200, right.text
        assert right.json()["model_version"] == "1"
        # Metadata and health stay open, like /models and /readyz.
        assert client.get("/v2/models/gray.tiny").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200


def test_repository_extension(secured_server: LiveServer, server: LiveServer) -> None:
    with secured_server.client() as client:
        _error(client.post("/v2/repository/index"), 401, "missing admin token")
        _error(client.post("/v2/repository/index", headers=KEY), 401, "invalid admin token")
        index = client.post("/v2/repository/index", headers=ADMIN)
        assert index.status_code == 200, index.text
        entries = {(e["name"], e["version"]): e for e in index.json()}
        assert entries[("gray.tiny", "1")]["state"] == "READY"
        assert entries[("gray.tiny", "2")]["state"] == "UNAVAILABLE"
        assert entries[("gray.tiny", "2")]["reason"]
        ready_only = client.post("/v2/repository/index", headers=ADMIN, json={"ready": True}).json()
        assert [(e["name"], e["version"]) for e in ready_only] == [("gray.tiny", "1")]

        unload = client.post("/v2/repository/models/gray.tiny/unload", headers=ADMIN)
        assert unload.status_code == 200, unload.text
        _error(client.get("/v2/models/gray.tiny"), 404, "unknown model")
        assert client.get("/v2/models/gray.tiny/ready").status_code == 404
        _error(
            client.post("/v2/repository/models/gray.tiny/unload", headers=ADMIN), 404, "not loaded"
        )

        load = client.post("/v2/repository/models/gray.tiny/load", headers=ADMIN)
        assert load.status_code == 200, load.text
        assert client.get("/v2/models/gray.tiny/ready").json()["ready"] is True
        assert client.get("/v2/models/gray.tiny").json()["versions"] == ["1"]
        _error(
            client.post("/v2/repository/models/gray.nope/load", headers=ADMIN),
            404,
            "no model 'gray.nope'",
        )
        override = {"parameters": {"config": "{}"}}
        _error(
            client.post("/v2/repository/models/gray.tiny/load", headers=ADMIN, json=override),
            400,
            "not supported",
        )
    with server.client() as client:  # no admin token configured: management is off
        _error(client.post("/v2/repository/index", headers=ADMIN), 403, "disabled")
