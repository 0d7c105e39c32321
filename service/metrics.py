"""Prometheus metrics of one app, in the app's own `CollectorRegistry` (never the global one).

Counters and histograms are updated where things happen; queue depth and model readiness are
read from the model registry at scrape time, so they can never go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# An unknown dataset / model is counted under this label value; it cannot collide with a real
# name (names start with a letter or digit), and keeps user input out of label values.
UNKNOWN = "_unknown"

STAGES = ("decode", "queue", "inference", "total")
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class VersionState:
    """What the scrape-time collector reports about one loaded model version."""

    dataset: str
    model: str
    version: int
    provider: str
    ready: bool
    queue_depth: int


LiveSource = Callable[[], Iterable[VersionState]]


class _LiveCollector(Collector):
    def __init__(self) -> None:
        self.source: LiveSource = lambda: ()

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "imgzoo_model_ready",
            "1 when a model version is loaded and warmed up, with the provider it runs on.",
            labels=["dataset", "model", "version", "provider"],
        )
        depth = GaugeMetricFamily(
            "imgzoo_queue_depth",
            "Images waiting in a model version's batching queue.",
            labels=["dataset", "model", "version"],
        )
        for state in self.source():
            version = str(state.version)
            labels = [state.dataset, state.model, version]
            ready.add_metric([*labels, state.provider], 1.0 if state.ready else 0.0)
            depth.add_metric(labels, float(state.queue_depth))
        yield ready
        yield depth


class ServiceMetrics:
    """Every metric of the service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "imgzoo_requests",
            "Prediction requests by model and HTTP status.",
            ["dataset", "model", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "imgzoo_request_duration_seconds",
            "Prediction latency by stage: decode, queue, inference, total.",
            ["dataset", "model", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "imgzoo_batch_size",
            "Images per inference batch.",
            ["dataset", "model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inflight = Gauge(
            "imgzoo_inflight_requests",
            "Prediction requests being processed.",
            registry=self.registry,
        )
        self.load_failures = Counter(
            "imgzoo_model_load_failures",
            "Model versions (or model directories) that failed to load.",
            ["dataset", "model"],
            registry=self.registry,
        )
        self.failed_entries = Gauge(
            "imgzoo_repository_failed_entries",
            "Repository entries (versions, model directories) failing to load as of the last scan.",
            registry=self.registry,
        )
        self.reloads = Counter(
            "imgzoo_repository_scans",
            "Repository scans (start-up, reloads, polls): `ok`, or `error` when the repository "
            "could not be read and nothing changed.",
            ["result"],
            registry=self.registry,
        )
        self._live = _LiveCollector()
        self.registry.register(self._live)
        # The labelled children, looked up once: `labels()` costs more than the update itself,
        # and the keys are bounded (known models or UNKNOWN, the service's statuses, STAGES).
        self._request_counters: dict[tuple[str, str, int], Counter] = {}
        self._stage_histograms: dict[tuple[str, str, str], Histogram] = {}

    def set_live_source(self, source: LiveSource) -> None:
        """Where readiness and queue depth are read from at scrape time."""
        self._live.source = source

    def observe_request(
        self, dataset: str, model: str, status: int, stages: dict[str, float] | None = None
    ) -> None:
        """Count one prediction request; `stages` are seconds per stage."""
        key = (dataset, model, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self.requests.labels(dataset, model, str(status))
            self._request_counters[key] = counter
        counter.inc()
        for stage, seconds in (stages or {}).items():
            stage_key = (dataset, model, stage)
            histogram = self._stage_histograms.get(stage_key)
            if histogram is None:
                histogram = self._stage_histograms[stage_key] = self.duration.labels(*stage_key)
            histogram.observe(seconds)

    def batch_observer(self, dataset: str, model: str) -> Callable[[int], None]:
        """A callback recording the size of each batch of one model."""
        child = self.batch_size.labels(dataset, model)
        return child.observe

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
