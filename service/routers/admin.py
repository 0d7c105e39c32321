"""Management routes (`/admin/...`): hot reload and per-model load / unload.

Every route needs the admin token (`service.security.require_admin`); without a configured
token they answer 403.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from service.catalog import model_info
from service.deps import RegistryDep
from service.registry import RepositoryUnavailable
from service.responses import OrjsonResponse
from service.schemas import ErrorResponse, ModelInfo, ReloadResponse, UnloadResponse
from service.security import require_admin

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong admin token."},
    403: {"model": ErrorResponse, "description": "No admin token configured: disabled."},
}
_MODEL: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    404: {"model": ErrorResponse, "description": "No such model."},
}


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        **_AUTH,
        503: {"model": ErrorResponse, "description": "The repository could not be read."},
    },
    summary="Re-scan the repository",
)
async def reload(registry: RegistryDep) -> Response:
    """Load new and changed versions beside the serving ones, swap them in, retire removed ones.

    Requests already queued on a retired version finish on it. A version that fails to load
    is listed in `failed` and leaves the version serving before in place; it is tried again
    once its files change. 503 `repository_unavailable` when the repository cannot be read
    (nothing served changes).
    """
    report = await registry.reload()
    if report.error:
        raise RepositoryUnavailable(
            f"the model repository cannot be read: {report.error}", details=report.to_dict()
        )
    return OrjsonResponse(report.to_dict())


@router.post(
    "/models/{dataset}/{model}/load",
    response_model=ModelInfo,
    responses={**_MODEL, 400: {"model": ErrorResponse, "description": "No version loads."}},
    summary="Load a model",
)
async def load_model(dataset: str, model: str, registry: RegistryDep) -> Response:
    """(Re)load every version of one model, also one unloaded before; answers its description."""
    await registry.load_model(dataset, model)
    return OrjsonResponse(model_info(registry, dataset, model))


@router.post(
    "/models/{dataset}/{model}/unload",
    response_model=UnloadResponse,
    responses=_MODEL,
    summary="Unload a model",
)
async def unload_model(dataset: str, model: str, registry: RegistryDep) -> Response:
    """Stop serving a model (queued requests finish); it stays unloaded until loaded again."""
    await registry.unload_model(dataset, model)
    return OrjsonResponse({"dataset": dataset, "model": model, "status": "unloaded"})
