"""Figures of `imgzoo bench serve`: percentiles, one point's summary, the median of repeats."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from service.bench.serve_load import LoadResult

PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between the closest ranks.

    The same definition as `numpy.percentile`'s default: rank `q / 100 * (n - 1)` in the sorted
    values. NaN for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class PointSummary:
    """One measurement (or the median of repeated ones) at one concurrency."""

    concurrency: int
    images_per_s: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    ok: int
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)
    repeats: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: floats rounded, NaN (no successful request) as null."""
        return {key: json_number(value) for key, value in asdict(self).items()}


def json_number(value: Any) -> Any:
    """A float rounded to 3 decimals, NaN as None; anything else unchanged."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    return value


def summarize(result: LoadResult) -> PointSummary:
    """The throughput, latency percentiles and error counts of one measurement."""
    latencies = result.latencies_ms
    kinds = {f"http_{status}": n for status, n in sorted(result.statuses.items())}
    if result.resets:
        kinds["connection_reset"] = result.resets
    if result.timeouts:
        kinds["timeout"] = result.timeouts
    return PointSummary(
        concurrency=result.concurrency,
        images_per_s=result.images_per_s,
        requests_per_s=result.requests_per_s,
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        mean_ms=statistics.fmean(latencies) if latencies else math.nan,
        ok=result.ok,
        errors=result.errors,
        error_kinds=kinds,
    )


def median_of(points: Sequence[PointSummary]) -> PointSummary:
    """Each figure's median over repeats of one point; counts (ok, errors) are summed."""
    if not points:
        raise ValueError("no measurement to take the median of")
    concurrencies = {p.concurrency for p in points}
    if len(concurrencies) != 1:
        raise ValueError(f"repeats of different concurrencies: {sorted(concurrencies)}")
    kinds: dict[str, int] = {}
    for point in points:
        for kind, count in point.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + count

    def median(name: str) -> float:
        values = [getattr(p, name) for p in points]
        finite = [v for v in values if not math.isnan(v)]
        return statistics.median(finite) if finite else math.nan

    return PointSummary(
        concurrency=points[0].concurrency,
        images_per_s=median("images_per_s"),
        requests_per_s=median("requests_per_s"),
        p50_ms=median("p50_ms"),
        p95_ms=median("p95_ms"),
        p99_ms=median("p99_ms"),
        mean_ms=median("mean_ms"),
        ok=sum(p.ok for p in points),
        errors=sum(p.errors for p in points),
        error_kinds=kinds,
        repeats=len(points),
    )


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when the denominator is not a positive number."""
    if not denominator > 0 or math.isnan(numerator):
        return None
    return numerator / denominator
