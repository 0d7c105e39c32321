"""/metrics: valid Prometheus text (promtool), and values that move with the traffic."""

from __future__ import annotations

import subprocess

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_tool
from tests.service.conftest import LiveServer

PNG = {"content-type": "image/png"}


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:  # fmt: skip
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_promtool_accepts_the_live_metrics(server: LiveServer, sample_images: list[bytes]) -> None:
    promtool = require_tool("promtool")
    with server.client() as client:
        client.post("/predict/gray/tiny", content=sample_images[0], headers=PNG)
        client.post("/predict/nope/nope", content=sample_images[0], headers=PNG)
        text = client.get("/metrics").text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_metric_values_follow_requests(server: LiveServer, sample_images: list[bytes]) -> None:
    requests = 5
    with server.client() as client:
        before = _samples(client.get("/metrics").text)
        for image in sample_images[:requests]:
            assert client.post("/predict/gray/tiny", content=image, headers=PNG).status_code == 200
        assert client.post("/predict/gray/tiny", content=b"", headers=PNG).status_code == 422
        assert client.post("/predict/x/y", content=b"", headers=PNG).status_code == 404
        response = client.get("/metrics")
    after = _samples(response.text)
    assert response.headers["content-type"].startswith("text/plain")

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    ok = {"dataset": "gray", "model": "tiny"}
    assert delta("imgzoo_requests_total", **ok, status="200") == requests
    assert delta("imgzoo_requests_total", **ok, status="422") == 1
    unknown = {"dataset": "_unknown", "model": "_unknown", "status": "404"}
    assert delta("imgzoo_requests_total", **unknown) == 1
    for stage in ("decode", "queue", "inference", "total"):
        assert delta("imgzoo_request_duration_seconds_count", **ok, stage=stage) == requests
    # Every image is in exactly one batch: the batch sizes add up to the images.
    assert delta("imgzoo_batch_size_sum", **ok) == requests
    assert delta("imgzoo_batch_size_count", **ok) >= 1
    assert _value(after, "imgzoo_inflight_requests") == 0
    for version in ("1", "2"):
        labels = {"dataset": "cifar10", "model": "fastnet", "version": version}
        assert _value(after, "imgzoo_model_ready", **labels, provider="CPUExecutionProvider") == 1
        assert _value(after, "imgzoo_queue_depth", **labels) == 0
    assert not any(name == "imgzoo_model_load_failures_total" for name, _ in after)
