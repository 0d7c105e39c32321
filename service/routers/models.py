"""`GET /models`, `GET /models/{dataset}/{model}`: what is loaded, and what failed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from service.catalog import model_info, models_info
from service.deps import RegistryDep
from service.responses import OrjsonResponse
from service.schemas import ErrorResponse, ModelInfo, ModelsResponse

router = APIRouter(tags=["models"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown model; `details.available` lists all."}
}


@router.get("/models", response_model=ModelsResponse, summary="List models")
async def list_models(registry: RegistryDep) -> Response:
    """Every loaded model with its versions, and every repository entry that failed to load."""
    return OrjsonResponse(models_info(registry))


@router.get(
    "/models/{dataset}/{model}",
    response_model=ModelInfo,
    responses=_NOT_FOUND,
    summary="Describe a model",
)
async def get_model(dataset: str, model: str, registry: RegistryDep) -> Response:
    """Versions, readiness, provider, input spec, labels, quality, batching and live counters."""
    return OrjsonResponse(model_info(registry, dataset, model))
