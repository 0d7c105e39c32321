"""`POST /predict/{dataset}/{model}`: classify one or several uploaded images.

The route is declared as usual (OpenAPI, validation, dependencies), but its common case skips
FastAPI's per-request dependency solving, which costs more than a fast network's whole run:
a request whose query string is empty or holds only plain `top_k` / `version` numbers within
their bounds is served directly, with the same API-key check. Any other request takes FastAPI's
own handler, so a bad parameter gets FastAPI's validation error, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from service.dataplane import DataPlane
from service.deps import DataPlaneDep, service_of
from service.middleware import record_stages, request_id, request_started
from service.responses import OrjsonResponse
from service.schemas import ErrorResponse, PredictResponse
from service.security import check_api_key, require_api_key
from service.uploads import FILE_FIELD, read_images

TOP_K_MAX = 1000


@dataclass(frozen=True, slots=True)
class PlainQuery:
    top_k: int | None = None
    version: int | None = None


def plain_query(query_string: bytes) -> PlainQuery | None:
    """The query of the direct path, or None where FastAPI must parse it.

    Only `top_k` and `version`, each at most once, as ASCII digits with no sign, spaces or
    leading zeros, within their bounds (top_k 1-1000, version >= 1).
    """
    if not query_string:
        return PlainQuery()
    values: dict[bytes, int] = {}
    for pair in query_string.split(b"&"):
        name, sep, raw = pair.partition(b"=")
        if not sep or name not in (b"top_k", b"version") or name in values:
            return None
        if not raw.isdigit() or raw.startswith(b"0") or len(raw) > 9:
            return None
        values[name] = int(raw)
    top_k = values.get(b"top_k")
    if top_k is not None and top_k > TOP_K_MAX:
        return None
    return PlainQuery(top_k=top_k, version=values.get(b"version"))


class PredictRoute(APIRoute):
    """An `APIRoute` whose handler takes the direct path when `plain_query` allows it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        solved = super().get_route_handler()

        async def handler(request: Request) -> Response:
            query = plain_query(request.scope.get("query_string", b""))
            if query is None:
                return await solved(request)
            service = service_of(request)
            check_api_key(request, service.settings)
            params = request.path_params
            return await classify(
                request,
                service.dataplane,
                params["dataset"],
                params["model"],
                top_k=query.top_k,
                version=query.version,
            )

        return handler


router = APIRouter(tags=["predict"], route_class=PredictRoute)

_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body (`image/*`), or one or more images as "
        f"multipart/form-data fields named `{FILE_FIELD}`.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "JPEG, PNG, WebP, BMP or GIF (first frame).",
                        }
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed body (bad multipart, bad Content-Length).",
        401: "API keys are configured and the request has none, or a wrong one.",
        404: "Unknown data set, model or version; `details.available` lists what exists.",
        413: "Body larger than max_upload_bytes, or image above max_image_pixels.",
        415: "Neither multipart/form-data nor image/*, or an image format not accepted.",
        422: "Corrupt image, no `file` field, too many images, or a bad query parameter.",
        500: "The model failed on the batch (`inference_failed`) or an internal error.",
        503: "Queue full (`queue_full`, with Retry-After) or shutting down.",
        504: "The image was not processed before its deadline (`deadline_exceeded`).",
    }.items()
}


@router.post(
    "/predict/{dataset}/{model}",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_REQUEST_BODY,
    summary="Classify images",
    dependencies=[Depends(require_api_key)],
)
async def predict(
    request: Request,
    dataset: str,
    model: str,
    *,
    plane: DataPlaneDep,
    top_k: Annotated[
        int | None,
        Query(ge=1, le=TOP_K_MAX, description="Predictions per image; above the class count: all."),
    ] = None,
    version: Annotated[
        int | None, Query(ge=1, description="Model version; the highest when omitted.")
    ] = None,
) -> Response:
    """Top-k labels of each image, best first, with per-stage latency."""
    return await classify(request, plane, dataset, model, top_k=top_k, version=version)


async def classify(
    request: Request,
    plane: DataPlane,
    dataset: str,
    model: str,
    *,
    top_k: int | None,
    version: int | None,
) -> Response:
    """The route's work, whichever path parsed the request."""
    with plane.track(dataset, model) as outcome:
        entry = plane.resolve(dataset, model, version)
        with plane.admit(entry) as arrival:
            images = await read_images(request, plane.upload_limits)
            result = await plane.predict(
                entry,
                images,
                top_k=top_k,
                request_id=request_id(request),
                started=request_started(request),
                pinned=version is not None,
                arrival=arrival,
            )
        outcome.stages = result.stages
    record_stages(request, result.stages)
    return OrjsonResponse(result.body)
