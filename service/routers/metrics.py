"""`GET /metrics`: Prometheus text exposition of the app's own registry."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from service.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
    summary="Prometheus metrics",
)
async def metrics(metrics: MetricsDep) -> Response:
    """Requests, per-stage latency, batch sizes, queue depth, readiness and load failures."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
