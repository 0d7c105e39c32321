"""Faults at start-up and while serving (issue 8, "Faults"); extends test_repository_faults.py.

- start-up: model files truncated, emptied or missing, manifests unreadable, missing or with a
  wrong sha256, a model without versions, a repository with no good version at all: the service
  starts, serves every good version, and reports the bad ones in /models, /readyz, the v2
  repository index and the metrics;
- serving: an inference error fails only the batch it happened in; a model slower than its
  deadline answers 504 and recovers with right answers; the repository vanishing in the middle
  of a reload (while it is scanned, or while a new version loads) changes nothing served.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import service.registry
from imgzoo.manifest import MANIFEST_FILENAME, ONNX_FILENAME, load_manifest, sha256_file
from service.runtime import Session, SessionSpec, create_ort_session
from service.schemas import ModelsResponse
from tests.service.conftest import (
    LiveServer,
    Repository,
    assert_matches,
    copy_version,
    offline_probabilities,
    serve,
)

PNG = {"content-type": "image/png"}
ADMIN = "faults-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


# --------------------------------------------------------------------------- helpers


def _rewrite_hashes(version_dir: Path) -> None:
    """Make the manifest agree with the files as they are now (so only the graph is bad)."""
    manifest = load_manifest(version_dir)
    files = {name: version_dir / name for name in manifest.sha256}
    metrics = manifest.metrics.model_copy(
        update={"file_sizes": {n: p.stat().st_size for n, p in files.items()}}
    )
    updated = manifest.model_copy(
        update={"sha256": {n: sha256_file(p) for n, p in files.items()}, "metrics": metrics}
    )
    (version_dir / MANIFEST_FILENAME).write_text(updated.to_json())


def _samples(client: httpx.Client, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric, keyed by its sorted labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _uniform_png(value: int, size: tuple[int, int] = (20, 24)) -> bytes:
    """A grey image of one value: it stays that value through resizing and the graph's input."""
    buffer = io.BytesIO()
    Image.new("L", size, value).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- start-up faults

# path -> a fragment of the reason it is reported with
STARTUP_FAULTS = {
    "gray/truncated/1": "INVALID_PROTOBUF",  # half a graph, with hashes that match it
    "gray/truncatedsha/1": "size",  # half a graph, the manifest still describing all of it
    "gray/emptyfile/1": "No graph was found",  # zero bytes, hashes matching
    "gray/wrongsha/1": "sha256 differs",  # intact graph, a wrong sha256 in the manifest
    "gray/notjson/1": "manifest",  # manifest.json that is not JSON
    "gray/nomanifest/1": "cannot read manifest",  # manifest.json missing
    "gray/noversions": "no version directories",  # a model directory and nothing in it
}


@pytest.fixture(scope="module")
def faulty_repository(
    model_repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("faulty")
    gray = model_repository.gray
    copy_version(root, gray)  # gray/tiny/1: the one good version
    graph = (gray / ONNX_FILENAME).read_bytes()

    truncated = copy_version(root, gray, model="truncated")
    (truncated / ONNX_FILENAME).write_bytes(graph[: len(graph) // 2])
    _rewrite_hashes(truncated)

    truncated_sha = copy_version(root, gray, model="truncatedsha")
    (truncated_sha / ONNX_FILENAME).write_bytes(graph[: len(graph) // 2])

    empty = copy_version(root, gray, model="emptyfile")
    (empty / ONNX_FILENAME).write_bytes(b"")
    _rewrite_hashes(empty)

    wrong_sha = copy_version(root, gray, model="wrongsha")
    raw = json.loads((wrong_sha / MANIFEST_FILENAME).read_text())
    raw["sha256"][ONNX_FILENAME] = "0" * 64
    (wrong_sha / MANIFEST_FILENAME).write_text(json.dumps(raw))

    not_json = copy_version(root, gray, model="notjson")
    (not_json / MANIFEST_FILENAME).write_text('{"schema_version": 1, "dataset": ')

    no_manifest = copy_version(root, gray, model="nomanifest")
    (no_manifest / MANIFEST_FILENAME).unlink()

    (root / "gray" / "noversions").mkdir()
    return root


def test_startup_faults_are_reported_everywhere_while_the_good_model_serves(
    faulty_repository: Path, model_repository: Repository, sample_images: list[bytes]
) -> None:
    with serve(faulty_repository, admin_token=ADMIN) as live, live.client() as client:
        listing = ModelsResponse.model_validate(client.get("/models").json())
        good = client.post("/predict/gray/tiny", content=sample_images[1], headers=PNG)
        bad = client.post("/predict/gray/truncated", content=sample_images[1], headers=PNG)
        ready = client.get("/readyz")
        index = client.post("/v2/repository/index", headers=AUTH).json()
        v2_bad = client.get("/v2/models/gray.wrongsha/ready")
        failures = _samples(client, "imgzoo_model_load_failures_total")
        failed_entries = _samples(client, "imgzoo_repository_failed_entries")
        model_ready = _samples(client, "imgzoo_model_ready")

    # /models: the good model serves, every bad entry is listed with a client-safe reason.
    assert [(m.dataset, m.model) for m in listing.models] == [("gray", "tiny")]
    reported = {f.path: f.reason for f in listing.failures}
    assert set(reported) == set(STARTUP_FAULTS)
    for path, fragment in STARTUP_FAULTS.items():
        assert fragment in reported[path], (path, reported[path])
        assert str(faulty_repository) not in reported[path]

    # The good model answers, and answers right; the bad ones do not exist for clients.
    assert good.status_code == 200, good.text
    reference = offline_probabilities(model_repository.gray, sample_images[1])
    assert_matches(good.json()["predictions"], reference, 5)
    assert bad.status_code == 404
    assert bad.json()["error"]["details"]["available"] == ["gray/tiny"]
    assert v2_bad.status_code == 404

    # /readyz: ready (failures do not hold readiness back by default), failures listed.
    assert ready.status_code == 200
    assert {f["path"] for f in ready.json()["failures"]} == set(STARTUP_FAULTS)

    # v2 repository index: the good version READY, the bad ones UNAVAILABLE with reasons.
    states = {(e["name"], e["version"]): (e["state"], e["reason"]) for e in index}
    assert states[("gray.tiny", "1")] == ("READY", "")
    assert states[("gray.truncated", "1")][0] == "UNAVAILABLE"
    assert "INVALID_PROTOBUF" in states[("gray.truncated", "1")][1]
    assert sum(state == "UNAVAILABLE" for state, _ in states.values()) == len(STARTUP_FAULTS)

    # Metrics: one load failure per bad entry, the failing-entry gauge, readiness of the good.
    per_model = {dict(labels)["model"]: value for labels, value in failures.items()}
    assert per_model == {path.split("/")[1]: 1.0 for path in STARTUP_FAULTS}
    assert list(failed_entries.values()) == [len(STARTUP_FAULTS)]
    assert {dict(labels)["model"]: value for labels, value in model_ready.items()} == {"tiny": 1.0}


def test_a_repository_of_only_bad_versions_starts_alive_but_not_ready(
    faulty_repository: Path, tmp_path: Path
) -> None:
    root = tmp_path / "bad-only"
    source = faulty_repository / "gray" / "truncated" / "1"
    copy_version(root, source)
    with serve(root) as live, live.client() as client:
        alive = client.get("/healthz")
        ready = client.get("/readyz")
        listing = client.get("/models").json()
        failed_entries = _samples(client, "imgzoo_repository_failed_entries")
    assert alive.status_code == 200
    assert ready.status_code == 503 and ready.json()["reasons"] == ["no model loaded"]
    assert [f["path"] for f in listing["failures"]] == ["gray/truncated/1"]
    assert list(failed_entries.values()) == [1.0]


# --------------------------------------------------------------------------- serving faults

POISON = 13  # a uniform image of this grey level makes the batch holding it fail


class FaultControls:
    """What the sessions of the serving-faults server do: fail on poison, be slow, or hold
    every run until `gate` is set (a test that needs runs in flight at once, however late
    the requests arrive)."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.gate: threading.Event | None = None
        self.poisoned_batches: list[int] = []
        self.lock = threading.Lock()


class FaultySession:
    """A real session that fails any batch holding a poison image and can be slowed down."""

    def __init__(self, inner: Session, controls: FaultControls) -> None:
        self._inner = inner
        self._controls = controls

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> Sequence[Any]:
        batch = input_feed["image"]
        if any(np.all(image == POISON) for image in batch):
            with self._controls.lock:
                self._controls.poisoned_batches.append(len(batch))
            raise RuntimeError("injected failure on a poisoned batch")
        if self._controls.delay_s:
            time.sleep(self._controls.delay_s)
        gate = self._controls.gate
        if gate is not None and not gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        return self._inner.run(output_names, input_feed)

    def get_providers(self) -> list[str]:
        return self._inner.get_providers()

    def get_inputs(self) -> list[Any]:
        return self._inner.get_inputs()

    def get_outputs(self) -> list[Any]:
        return self._inner.get_outputs()


@pytest.fixture(scope="module")
def faulty_server(
    model_repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, FaultControls]]:
    """gray/tiny (batches of up to 4, 10 s deadline) and gray/slow (a 300 ms deadline)."""
    root = tmp_path_factory.mktemp("serving-faults")
    copy_version(root, model_repository.gray)
    copy_version(root, model_repository.gray, model="slow")
    (root / "gray" / "slow" / "config.json").write_text(json.dumps({"timeout_ms": 300}))
    controls = FaultControls()

    def factory(model: bytes, spec: SessionSpec) -> Session:
        return FaultySession(create_ort_session(model, spec), controls)

    with serve(
        root,
        session_factory=factory,
        max_batch_size=4,
        max_queue_delay_ms=150,
        request_timeout_ms=10_000,
        default_top_k=3,
    ) as live:
        yield live, controls


def _counters(client: httpx.Client, name: str) -> dict[str, int]:
    counters: dict[str, int] = client.get(f"/models/{name}").json()["versions"][0]["counters"]
    return counters


def _post_all(server: LiveServer, path: str, images: Sequence[bytes]) -> list[httpx.Response]:
    def post(image: bytes) -> httpx.Response:
        with server.client() as client:
            return client.post(path, content=image, headers=PNG)

    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        return list(pool.map(post, images))


def test_an_inference_error_fails_only_its_own_batch(
    faulty_server: tuple[LiveServer, FaultControls],
    model_repository: Repository,
    sample_images: list[bytes],
) -> None:
    server, controls = faulty_server
    controls.poisoned_batches.clear()
    with server.client() as client:
        before = _counters(client, "gray/tiny")
    images = [*sample_images[:7], _uniform_png(POISON)]
    responses = _post_all(server, "/predict/gray/tiny", images)

    assert len(controls.poisoned_batches) == 1, controls.poisoned_batches
    failed = [r for r in responses if r.status_code != 200]
    # Exactly the poisoned batch's requests failed, each with the stable error code.
    assert len(failed) == controls.poisoned_batches[0]
    assert responses[-1] in failed
    for response in failed:
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "inference_failed"
        assert "injected" not in response.text  # the runtime's message stays in the logs
    # Every other request got its own image's answer, from the batches before and after.
    for image, response in zip(images, responses, strict=True):
        if response.status_code == 200:
            assert_matches(
                response.json()["predictions"],
                offline_probabilities(model_repository.gray, image),
                3,
            )
    assert len(failed) < len(images)
    with server.client() as client:
        after_image = client.post("/predict/gray/tiny", content=sample_images[8], headers=PNG)
        counters = _counters(client, "gray/tiny")
        statuses = _samples(client, "imgzoo_requests_total")
    assert after_image.status_code == 200  # the next batch runs
    assert counters["failed_batches"] - before["failed_batches"] == 1
    assert counters["in_flight_requests"] == 0  # failed requests gave their place back
    assert statuses[(("dataset", "gray"), ("model", "tiny"), ("status", "500"))] >= len(failed)


def test_a_model_slower_than_its_deadline_gives_504_then_recovers(
    faulty_server: tuple[LiveServer, FaultControls],
    model_repository: Repository,
    sample_images: list[bytes],
) -> None:
    server, controls = faulty_server
    controls.delay_s = 0.6  # every batch takes twice the 300 ms deadline
    try:
        slow = _post_all(server, "/predict/gray/slow", sample_images[10:13])
        with server.client() as client:
            ready_while_slow = client.get("/readyz").status_code
    finally:
        controls.delay_s = 0.0
    for response in slow:
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "deadline_exceeded"
        assert response.json()["error"]["details"]["timeout_ms"] == 300
    assert ready_while_slow == 200  # a slow model is not a dead service

    # Recovery: once the model is fast again, answers come back, each for its own image (no
    # late result of the slow batches lands on a newer request).
    time.sleep(0.8)  # the batch that was running when the deadlines passed finishes
    fresh = sample_images[13:17]
    recovered = _post_all(server, "/predict/gray/slow", fresh)
    for image, response in zip(fresh, recovered, strict=True):
        assert response.status_code == 200, response.text
        reference = offline_probabilities(model_repository.gray, image)
        assert_matches(response.json()["predictions"], reference, 3)
    with server.client() as client:
        counters = _counters(client, "gray/slow")
        statuses = _samples(client, "imgzoo_requests_total")
    assert counters["failed_requests"] >= len(slow)
    assert counters["in_flight_requests"] == 0  # so did the ones past their deadline
    assert statuses[(("dataset", "gray"), ("model", "slow"), ("status", "504"))] == len(slow)


# --------------------------------------------------------------------------- vanishing repository


def _served(client: httpx.Client) -> dict[str, list[int]]:
    models = client.get("/models").json()["models"]
    return {f"{m['dataset']}/{m['model']}": [v["version"] for v in m["versions"]] for m in models}


def _assert_unchanged_and_answering(
    client: httpx.Client, image: bytes, reference: np.ndarray, served: dict[str, list[int]]
) -> None:
    assert _served(client) == served
    response = client.post("/predict/gray/tiny", content=image, headers=PNG)
    assert response.status_code == 200, response.text
    assert_matches(response.json()["predictions"], reference, 5)
    assert client.get("/readyz").status_code == 200


def test_the_repository_vanishing_while_a_reload_scans_it_changes_nothing(
    model_repository: Repository,
    tmp_path: Path,
    sample_images: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "repository"
    copy_version(root, model_repository.gray)
    copy_version(root, model_repository.gray, model="other")
    moved = tmp_path / "moved"
    original = service.registry.load_model_config
    armed = threading.Event()

    def vanish_mid_scan(model_dir: Path, filename: str) -> Any:
        # The scan has listed the data sets and reached a model: now the directory goes.
        if armed.is_set() and root.exists():
            root.rename(moved)
        return original(model_dir, filename)

    monkeypatch.setattr(service.registry, "load_model_config", vanish_mid_scan)
    reference = offline_probabilities(model_repository.gray, sample_images[2])
    with serve(root, admin_token=ADMIN) as live, live.client() as client:
        served = _served(client)
        assert served == {"gray/other": [1], "gray/tiny": [1]}
        armed.set()
        response = client.post("/admin/reload", headers=AUTH)
        armed.clear()
        assert not root.exists()  # the hook really fired during the scan
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "repository_unavailable"
        assert str(tmp_path) not in response.text
        _assert_unchanged_and_answering(client, sample_images[2], reference, served)
        scans = _samples(client, "imgzoo_repository_scans_total")
        assert scans[(("result", "error"),)] == 1

        moved.rename(root)  # back again: a reload finds everything as it was
        report = client.post("/admin/reload", headers=AUTH).json()
        assert (report["status"], report["unchanged"], report["removed"]) == ("ok", 2, [])


def test_the_repository_vanishing_while_a_new_version_loads_changes_nothing(
    model_repository: Repository, tmp_path: Path, sample_images: list[bytes]
) -> None:
    root = tmp_path / "repository"
    copy_version(root, model_repository.gray)
    moved = tmp_path / "moved"
    armed = threading.Event()

    def factory(model: bytes, spec: SessionSpec) -> Session:
        # Called while the new version 2 loads, after the scan: the directory goes now.
        if armed.is_set() and root.exists():
            root.rename(moved)
        return create_ort_session(model, spec)

    reference = offline_probabilities(model_repository.gray, sample_images[3])
    with serve(root, session_factory=factory, admin_token=ADMIN) as live, live.client() as client:
        served = _served(client)
        copy_version(root, model_repository.gray, version=2)
        armed.set()
        response = client.post("/admin/reload", headers=AUTH)
        armed.clear()
        assert not root.exists()
        assert response.status_code == 503, response.text
        assert response.json()["error"]["details"]["added"] == []
        # Version 2 was loaded from a directory that is gone: it is not served.
        _assert_unchanged_and_answering(client, sample_images[3], reference, served)
        assert client.get("/v2/models/gray.tiny/versions/2/ready").status_code == 404

        moved.rename(root)
        report = client.post("/admin/reload", headers=AUTH).json()
        assert report["added"] == ["gray/tiny/2"]
        assert _served(client) == {"gray/tiny": [1, 2]}


# --------------------------------------------------------------------------- admission


def test_overload_is_refused_before_the_body_is_read(
    model_repository: Repository, tmp_path: Path, sample_images: list[bytes]
) -> None:
    """With `max_queue_size + max_batch_size x sessions` requests in flight, the next one gets
    503 `queue_full` at once, from its headers alone, and its place comes back afterwards."""
    copy_version(tmp_path, model_repository.gray)
    controls = FaultControls()

    def factory(model: bytes, spec: SessionSpec) -> Session:
        return FaultySession(create_ort_session(model, spec), controls)

    with serve(
        tmp_path,
        session_factory=factory,
        max_batch_size=1,
        max_queue_size=1,
        max_queue_delay_ms=0,
        sessions=1,
        warmup=False,
    ) as live:
        # Two requests fill the version, one running (held at the gate) and one queued, for as
        # long as the test needs: a fixed delay lost the race under the whole suite's load.
        controls.gate = threading.Event()
        with ThreadPoolExecutor(max_workers=2) as pool:
            busy = [pool.submit(_post_all, live, "/predict/gray/tiny", [image])
                    for image in sample_images[:2]]  # fmt: skip
            with live.client() as client:
                deadline = time.monotonic() + 20
                while (in_flight := _counters(client, "gray/tiny")["in_flight_requests"]) < 2:
                    answered_early = [f.result()[0].text for f in busy if f.done()]
                    assert not answered_early and time.monotonic() < deadline, (
                        f"{in_flight} of 2 requests in flight; answered early: {answered_early}"
                    )
                    time.sleep(0.02)
            # Headers announcing a body that never comes: only an early refusal answers this.
            with socket.create_connection(("127.0.0.1", live.port), timeout=5) as sock:
                sock.sendall(
                    b"POST /predict/gray/tiny HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: image/png\r\nContent-Length: 50000\r\n\r\n"
                )
                reply = sock.recv(65536).decode("latin-1")
            controls.gate.set()
            answered = [future.result()[0] for future in busy]
        controls.gate = None
        with live.client() as client:
            after = client.post("/predict/gray/tiny", content=sample_images[2], headers=PNG)
            counters = _counters(client, "gray/tiny")
    assert reply.startswith("HTTP/1.1 503"), reply
    assert '"code":"queue_full"' in reply and "retry-after: " in reply.lower()
    assert [r.status_code for r in answered] == [200, 200]
    assert after.status_code == 200
    assert counters["in_flight_requests"] == 0 and counters["rejected_images"] == 1
