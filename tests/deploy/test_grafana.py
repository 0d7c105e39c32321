"""Grafana provisioning and the dashboard: every query names metrics the service exports."""

from __future__ import annotations

import re

import pytest

from service.metrics import ServiceMetrics
from tests.deploy.helpers import DEPLOY, REPO, load_json, load_yaml

DASHBOARD = load_json(DEPLOY / "grafana" / "dashboards" / "imgzoo.json")
DATASOURCES = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
PROVIDERS = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "imgzoo.yml")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
_METRIC = re.compile(r"\bimgzoo_[a-z_]+\b")


def exported() -> dict[str, set[str]]:
    """Series names the service exposes -> their label names (histogram `le` included)."""
    metrics = ServiceMetrics()
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        labels = set(getattr(family, "_labelnames", ()))
        for sample in family.samples:
            labels |= set(sample.labels)
        for suffix in _SUFFIXES.get(family.type, ("",)):
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = labels | extra
    # Labelled metrics without children expose no samples: take the labels from the objects.
    for attr in vars(metrics).values():
        labelnames = getattr(attr, "_labelnames", None)
        name = getattr(attr, "_name", None)
        if labelnames and name:
            for series in [n for n in names if n.startswith(name)]:
                names[series] |= set(labelnames)
    return names


EXPORTED = exported()
EXPRESSIONS = [
    (panel["title"], target["expr"]) for panel in DASHBOARD["panels"] for target in panel["targets"]
]


def test_the_service_exports_the_metrics_the_dashboard_is_about() -> None:
    for name in (
        "imgzoo_requests_total",
        "imgzoo_request_duration_seconds_bucket",
        "imgzoo_batch_size_bucket",
        "imgzoo_queue_depth",
        "imgzoo_model_ready",
    ):
        assert name in EXPORTED, name
    assert {"dataset", "model", "stage"} <= EXPORTED["imgzoo_request_duration_seconds_bucket"]


@pytest.mark.parametrize(("title", "expr"), EXPRESSIONS, ids=[t for t, _ in EXPRESSIONS])
def test_every_query_uses_exported_series_and_labels(title: str, expr: str) -> None:
    used = set(_METRIC.findall(expr))
    assert used, f"{title}: no imgzoo_ metric"
    unknown = used - set(EXPORTED)
    assert not unknown, f"{title}: not exported by service/metrics.py: {unknown}"
    available = set().union(*(EXPORTED[name] for name in used))
    grouped = {
        label.strip()
        for group in re.findall(r"\bby \(([^)]*)\)", expr)
        for label in group.split(",")
    }
    selected = set(re.findall(r"([a-z_]+)=~?\"", expr))
    assert grouped | selected <= available, f"{title}: labels {grouped | selected - available}"


def test_dashboard_covers_rate_latency_batch_queue_errors_per_model() -> None:
    text = " ".join(expr for _, expr in EXPRESSIONS)
    assert "rate(imgzoo_requests_total" in text
    assert 'status=~"[45].."' in text
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, dataset, model, stage)" in text
    assert "imgzoo_batch_size" in text and "imgzoo_queue_depth" in text
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert variables == {"dataset", "model"}
    per_model = [e for _, e in EXPRESSIONS if "imgzoo_inflight_requests" not in e]
    assert all('model=~"$model"' in e for e in per_model)


def test_panels_use_the_provisioned_data_source() -> None:
    (source,) = DATASOURCES["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    uids = {panel["datasource"]["uid"] for panel in DASHBOARD["panels"]}
    assert uids == {source["uid"]}
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_provider_path_is_where_compose_mounts_the_dashboards() -> None:
    (provider,) = PROVIDERS["providers"]
    grafana = load_yaml(REPO / "docker-compose.yml")["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
