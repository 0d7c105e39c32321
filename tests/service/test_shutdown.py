"""SIGTERM against a real `imgzoo serve` process with requests in flight (issue 8, "Faults").

Readiness goes false at once, new requests get 503 `shutting_down`, the requests already in the
batcher finish with their right answers, a client that never finishes its body is cut off, and
the process exits, with status 0, within the configured grace period.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import Repository, assert_matches, offline_probabilities

PNG = {"content-type": "image/png"}
GRACE_S = 6.0
DELAY_S = 1.0
# The in-flight requests wait this long in the batcher for the holding request's image, which
# was admitted and so is announced as arriving (a batch never waits when nothing is on its way).
QUEUE_DELAY_MS = 1500


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")


@pytest.fixture
def process(
    model_repository: Repository, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    repository = tmp_path / "repo"
    shutil.copytree(model_repository.gray, repository / "gray" / "tiny" / "1")
    port = _free_port()
    command = [
        sys.executable, "-m", "imgzoo", "serve", "--repository", str(repository),
        "--port", str(port), "--providers", "cpu", "--threads", "1", "--decode-threads", "1",
        "--sessions", "1",
        "--max-batch-size", "8", "--max-queue-delay-ms", str(QUEUE_DELAY_MS),
        "--graceful-shutdown-s", str(GRACE_S), "--shutdown-delay-s", str(DELAY_S),
    ]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert child.poll() is None, child.communicate()[0]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        yield child, url
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=30)


def test_sigterm_drains_in_flight_requests_and_exits_within_the_grace_period(
    process: tuple[subprocess.Popen[str], str],
    model_repository: Repository,
    sample_images: list[bytes],
) -> None:
    child, url = process
    port = int(url.rsplit(":", 1)[1])
    images = sample_images[:3]
    answers: dict[int, httpx.Response] = {}

    def post(index: int) -> None:
        answers[index] = httpx.post(
            f"{url}/predict/gray/tiny", content=images[index], headers=PNG, timeout=30
        )

    # A request admitted and still sending its body is announced to the batcher as arriving,
    # so the three requests below wait in their batch for it (a batch never waits for nobody).
    holder = socket.create_connection(("127.0.0.1", port), timeout=30)
    holder.sendall(
        b"POST /predict/gray/tiny HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {len(images[0])}\r\n\r\n".encode()
        + images[0][:100]
    )
    deadline = time.monotonic() + 30  # generous: the whole suite may be loading the CPU
    while _gauge(url, "imgzoo_inflight_requests") < 1:
        assert time.monotonic() < deadline, "the holding request was never admitted"
        time.sleep(0.02)
    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    while _gauge(url, "imgzoo_inflight_requests") < len(images) + 1:
        assert time.monotonic() < deadline, "the requests never got in flight"
        time.sleep(0.02)
    # A client that sends half its body and then nothing: only the grace period ends it.
    stalled = socket.create_connection(("127.0.0.1", port), timeout=30)
    stalled.sendall(
        b"POST /predict/gray/tiny HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 1000\r\n\r\n" + images[0][:100]
    )

    signalled = time.monotonic()
    child.send_signal(signal.SIGTERM)

    # At once: not ready, and a new request on a new connection is refused with 503.
    with httpx.Client(base_url=url, timeout=10) as client:
        ready = client.get("/readyz")
        refused = client.post("/predict/gray/tiny", content=images[0], headers=PNG)
        v2_ready = client.get("/v2/health/ready")
    assert time.monotonic() - signalled < DELAY_S, "the checks ran after the listener closed"
    assert ready.status_code == 503 and "shutting down" in ready.json()["reasons"]
    assert v2_ready.status_code == 400
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "shutting_down"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["connection"] == "close"

    # The holding request finishes its body after the batch window and is answered alone.
    time.sleep(max(0.0, signalled + QUEUE_DELAY_MS / 1000 + 0.3 - time.monotonic()))
    holder.sendall(images[0][100:])
    held = holder.recv(65536).decode("latin-1")
    holder.close()
    assert held.startswith("HTTP/1.1 200"), held

    # The requests that were in flight finish, each with its own image's answer.
    for thread in threads:
        thread.join(timeout=30)
    for index, image in enumerate(images):
        response = answers[index]
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["batch_size"] == len(images)  # they were batched together, then drained
        assert_matches(body["predictions"], offline_probabilities(model_repository.gray, image), 5)

    # After the delay the listener is closed: new connections are refused outright.
    time.sleep(max(0.0, signalled + DELAY_S + 0.5 - time.monotonic()))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)

    output = child.communicate(timeout=GRACE_S + 30)[0]
    elapsed = time.monotonic() - signalled
    stalled.close()
    assert child.returncode == 0, output
    assert elapsed <= GRACE_S, f"exited {elapsed:.2f} s after SIGTERM; grace {GRACE_S} s\n{output}"
    assert "shutting down: not ready, refusing new requests" in output
    assert "Application shutdown complete" in output
    # The stalled client is the one task uvicorn cancels at the end of the grace period (it logs
    # that cancellation with a traceback); nothing else may fail.
    cancelled = "CancelledError: Task cancelled, timeout graceful shutdown exceeded"
    assert output.count("Traceback") == output.count(cancelled) <= 1, output
