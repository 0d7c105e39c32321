"""`GET /healthz` (the process answers) and `GET /readyz` (it serves its models)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.catalog import failure_info
from service.deps import RegistryDep
from service.responses import OrjsonResponse
from service.schemas import HealthResponse, ReadinessResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> Response:
    """200 while the process runs its event loop."""
    return OrjsonResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=ReadinessResponse,
    responses={503: {"model": ReadinessResponse, "description": "Not ready; see `reasons`."}},
    summary="Readiness",
)
async def readyz(registry: RegistryDep) -> Response:
    """200 when loading finished, every loaded version is warmed up and at least one serves.

    Failed repository entries are listed; they hold readiness back only with
    `IMGZOO_READINESS_STRICT=true`. 503 while loading, shutting down, or with no model.
    """
    readiness = registry.readiness()
    body = {
        "status": "ready" if readiness.ready else "not_ready",
        "reasons": readiness.reasons,
        "models": sum(len(v) for v in registry.models().values()),
        "failures": [failure_info(f) for f in registry.failures],
    }
    return OrjsonResponse(body, status_code=200 if readiness.ready else 503)
