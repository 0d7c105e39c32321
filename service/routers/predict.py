"""`POST /predict/{dataset}/{model}`: classify one or several uploaded images."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from service.deps import DataPlaneDep
from service.middleware import record_stages, request_id, request_started
from service.responses import OrjsonResponse
from service.schemas import ErrorResponse, PredictResponse
from service.security import require_api_key
from service.uploads import FILE_FIELD, read_images

router = APIRouter(tags=["predict"])

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
        Query(ge=1, le=1000, description="Predictions per image; above the class count: all."),
    ] = None,
    version: Annotated[
        int | None, Query(ge=1, description="Model version; the highest when omitted.")
    ] = None,
) -> Response:
    """Top-k labels of each image, best first, with per-stage latency."""
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
                arrival=arrival,
            )
        outcome.stages = result.stages
    record_stages(request, result.stages)
    return OrjsonResponse(result.body)
