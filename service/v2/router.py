"""The /v2 routes: server and model metadata, health, inference, the repository extension.

Inference shares everything with `/predict` past the wire format: the model's batcher (so the
two protocols batch together), decoding, the request metrics and the per-version counters.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request
from pydantic import ValidationError
from starlette.responses import Response
from starlette.routing import Match

from imgzoo import __version__
from imgzoo.manifest import INPUT_NAME, OUTPUT_NAME
from service.dataplane import DataPlane
from service.deps import DataPlaneDep, RegistryDep, SettingsDep
from service.errors import BadRequest, ModelNotFound, VersionNotFound
from service.middleware import record_stages, request_started
from service.registry import ModelRegistry, ModelVersion
from service.responses import OrjsonResponse
from service.security import require_admin, require_api_key
from service.settings import Settings
from service.v2.codec import (
    HEADER_LENGTH,
    binary_sections,
    encode_response,
    first_error,
    parse_request,
    read_body,
    split_body,
)
from service.v2.errors import V2Route, v2_error
from service.v2.inference import requested_outputs, run
from service.v2.names import parse_version, split_v2_name, v2_name
from service.v2.schemas import (
    ErrorResponse,
    InferenceResponse,
    LiveResponse,
    ModelMetadata,
    ModelReadyResponse,
    ReadyResponse,
    RepositoryEntry,
    RepositoryIndexRequest,
    ServerMetadata,
)
from service.v2.tensors import FP32, UINT8, image_input, input_shape

SERVER_NAME = "imgzoo"
EXTENSIONS = ("binary_tensor_data", "classification", "model_repository")
PLATFORM = "onnxruntime_onnx"
_SMALL_BODY = 64 * 1024  # repository requests carry a few parameters at most

router = APIRouter(route_class=V2Route, tags=["v2 (Open Inference Protocol)"])

_MODEL = "/v2/models/{name}"
_VERSION = "/v2/models/{name}/versions/{version}"
# A version in a path: documented as the positive integer it must be, checked by
# `parse_version` (so a bad one answers the protocol's 400 with our own message).
Version = Annotated[
    str,
    Path(
        description="Model version, a positive integer.",
        json_schema_extra={"pattern": "^[1-9][0-9]*$"},
    ),
]
# The repository extension answers an empty 200: documented without a body.
_EMPTY_OK: dict[int | str, dict[str, Any]] = {200: {"description": "Done.", "content": {}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Bad tensor, shape, datatype, binary lengths or JSON; model not ready (ready route).",
        401: "Missing or wrong API key (when keys are configured).",
        404: "Unknown model or version.",
        413: "Body larger than max_upload_bytes, or an encoded image above max_image_pixels.",
        415: "Unsupported Content-Encoding, or an encoded image format not accepted.",
        422: "An encoded (BYTES) image that does not decode.",
        503: "Queue full (with Retry-After), model not ready, or shutting down.",
        504: "The images were not processed before their deadline.",
    }.items()
}
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The JSON inference request, optionally followed by raw tensor bytes "
        f"(binary tensor data extension; `{HEADER_LENGTH}` gives the JSON's length).",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


# --------------------------------------------------------------------------- server


@router.get("/v2", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> Response:
    """Name, version and protocol extensions of the server."""
    body = {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}
    return OrjsonResponse(body)


@router.get("/v2/health/live", response_model=LiveResponse, summary="Server live")
async def server_live() -> Response:
    """200 while the process serves HTTP."""
    return OrjsonResponse({"live": True})


@router.get(
    "/v2/health/ready",
    response_model=ReadyResponse,
    responses={400: {"model": ErrorResponse, "description": "Not ready, and why."}},
    summary="Server ready",
)
async def server_ready(registry: RegistryDep) -> Response:
    """200 when the service is ready (as `/readyz`); 400, as the protocol asks, when not."""
    readiness = registry.readiness()
    if not readiness.ready:
        return v2_error("not ready: " + "; ".join(readiness.reasons), 400)
    return OrjsonResponse({"ready": True})


# --------------------------------------------------------------------------- models


def _lookup(registry: ModelRegistry, name: str, version_text: str | None) -> ModelVersion:
    """The version a path names (the default one when none), or 404 in v2 words."""
    dataset, model = split_v2_name(name)
    version = parse_version(version_text)
    if not registry.has_model(dataset, model):
        raise ModelNotFound(f"unknown model '{name}'")
    versions = registry.versions(dataset, model)
    if version is None:
        return versions[max(versions)]
    if version not in versions:
        loaded = ", ".join(str(v) for v in versions)
        raise VersionNotFound(f"model '{name}' has no version {version} (loaded: {loaded})")
    return versions[version]


def _metadata(registry: ModelRegistry, name: str, version_text: str | None) -> dict[str, Any]:
    entry = _lookup(registry, name, version_text)
    if version_text is None:
        versions = list(registry.versions(entry.dataset, entry.model))
    else:
        versions = [entry.version]
    manifest = entry.manifest
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": UINT8, "shape": input_shape(manifest.input)}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": FP32, "shape": [-1, manifest.num_classes]}],
    }


@router.get(_MODEL, response_model=ModelMetadata, responses=_ERRORS, summary="Model metadata")
async def model_metadata(name: str, registry: RegistryDep) -> Response:
    """Versions, platform, input and output tensors of `<dataset>.<model>` (default version)."""
    return OrjsonResponse(_metadata(registry, name, None))


@router.get(
    _VERSION, response_model=ModelMetadata, responses=_ERRORS, summary="Model version metadata"
)
async def model_version_metadata(name: str, version: Version, registry: RegistryDep) -> Response:
    """Input and output tensors of one version of `<dataset>.<model>`."""
    return OrjsonResponse(_metadata(registry, name, version))


def _model_ready(registry: ModelRegistry, name: str, version_text: str | None) -> Response:
    entry = _lookup(registry, name, version_text)
    if not entry.ready or entry.retired:
        return v2_error(f"model '{name}' version {entry.version} is not ready", 400)
    return OrjsonResponse({"name": name, "ready": True})


@router.get(
    _MODEL + "/ready", response_model=ModelReadyResponse, responses=_ERRORS, summary="Model ready"
)
async def model_ready(name: str, registry: RegistryDep) -> Response:
    """200 when the model's default version serves; 400 when not ready; 404 when unknown."""
    return _model_ready(registry, name, None)


@router.get(
    _VERSION + "/ready",
    response_model=ModelReadyResponse,
    responses=_ERRORS,
    summary="Model version ready",
)
async def model_version_ready(name: str, version: Version, registry: RegistryDep) -> Response:
    """200 when this version serves; 400 when not ready; 404 when unknown."""
    return _model_ready(registry, name, version)


# --------------------------------------------------------------------------- inference


async def _infer(
    request: Request, name: str, version_text: str | None, plane: DataPlane
) -> Response:
    try:
        dataset, model = split_v2_name(name)
    except ModelNotFound:
        dataset, model = "", ""  # counted under the unknown-model label
    settings = plane.settings
    with plane.track(dataset, model) as outcome:
        entry = _lookup(plane.registry, name, version_text)
        entry = plane.resolve(entry.dataset, entry.model, entry.version)  # ready, or 503
        with plane.admit(entry) as arrival:
            body = await read_body(request, settings.max_upload_bytes)
            header, binary = split_body(body, request.headers.get(HEADER_LENGTH))
            inference = parse_request(header)
            outputs = requested_outputs(inference)
            images = image_input(
                inference.inputs,
                binary_sections(inference.inputs, binary),
                entry.manifest.input,
                settings.max_images_per_request,
            )
            result = await run(
                plane,
                entry,
                images,
                outputs,
                started=request_started(request),
                pinned=version_text is not None,
                arrival=arrival,
            )
        outcome.stages = result.stages
    record_stages(request, result.stages)
    answer: dict[str, Any] = {"model_name": name, "model_version": str(result.entry.version)}
    if inference.id is not None:
        answer["id"] = inference.id
    encoded = encode_response(answer, result.outputs)
    return Response(encoded.body, media_type=encoded.media_type, headers=encoded.headers)


@router.post(
    _MODEL + "/infer",
    response_model=InferenceResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
    dependencies=[Depends(require_api_key)],
    summary="Inference",
)
async def infer(request: Request, name: str, plane: DataPlaneDep) -> Response:
    """Classify images given as UINT8 `[N, H, W, C]` pixels or BYTES `[N]` encoded images."""
    return await _infer(request, name, None, plane)


@router.post(
    _VERSION + "/infer",
    response_model=InferenceResponse,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
    dependencies=[Depends(require_api_key)],
    summary="Inference on a version",
)
async def infer_version(
    request: Request, name: str, version: Version, plane: DataPlaneDep
) -> Response:
    """Like `/v2/models/{name}/infer`, on one version."""
    return await _infer(request, name, version, plane)


# --------------------------------------------------------------------------- repository


async def _small_json(request: Request, settings: Settings) -> dict[str, Any]:
    """The optional JSON object of a repository request ({} for an empty body)."""
    body = await read_body(request, min(_SMALL_BODY, settings.max_upload_bytes))
    if not body.strip():
        return {}
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON in the request: {exc}") from None
    if not isinstance(raw, dict):
        raise BadRequest("the request body must be a JSON object")
    return raw


def _index(registry: ModelRegistry, ready_only: bool) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for (dataset, model), versions in registry.models().items():
        for entry in versions.values():
            ready = entry.ready and not entry.retired
            entries.append(
                {
                    "name": v2_name(dataset, model),
                    "version": str(entry.version),
                    "state": "READY" if ready else "LOADING",
                    "reason": "",
                }
            )
    if not ready_only:
        for failure in registry.failures:
            parts = failure.path.split("/")
            named = bool(failure.dataset and failure.model)
            entries.append(
                {
                    "name": v2_name(failure.dataset, failure.model) if named else failure.path,
                    "version": parts[2] if len(parts) == 3 and parts[2].isdigit() else None,
                    "state": "UNAVAILABLE",
                    "reason": failure.reason,
                }
            )
    if ready_only:
        entries = [e for e in entries if e["state"] == "READY"]
    return entries


@router.post(
    "/v2/repository/index",
    response_model=list[RepositoryEntry],
    responses=_ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Repository index",
)
async def repository_index(
    request: Request, registry: RegistryDep, settings: SettingsDep
) -> Response:
    """Every model version: `READY`, or `UNAVAILABLE` with the reason it failed to load.

    Body (optional): `{"ready": true}` lists only the versions that serve.
    """
    try:
        options = RepositoryIndexRequest.model_validate(await _small_json(request, settings))
    except ValidationError as exc:
        raise BadRequest(f"invalid index request: {first_error(exc)}") from None
    return OrjsonResponse(_index(registry, options.ready))


def _no_overrides(options: dict[str, Any]) -> None:
    parameters = options.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be a JSON object")
    if any(key == "config" or key.startswith("file:") for key in parameters):
        raise BadRequest("loading with a config or file override is not supported")


@router.post(
    "/v2/repository/models/{name}/load",
    response_class=Response,
    responses={**_ERRORS, **_EMPTY_OK},
    dependencies=[Depends(require_admin)],
    summary="Load a model",
)
async def repository_load(
    request: Request, name: str, registry: RegistryDep, settings: SettingsDep
) -> Response:
    """(Re)load every version of `<dataset>.<model>` from the repository, hot.

    400 when none of its versions loads (the old ones keep serving), 404 when the repository
    has no such model.
    """
    _no_overrides(await _small_json(request, settings))
    dataset, model = split_v2_name(name)
    try:
        await registry.load_model(dataset, model)
    except ModelNotFound:
        raise ModelNotFound(f"the repository has no model '{name}'") from None
    return Response(status_code=200)


@router.post(
    "/v2/repository/models/{name}/unload",
    response_class=Response,
    responses={**_ERRORS, **_EMPTY_OK},
    dependencies=[Depends(require_admin)],
    summary="Unload a model",
)
async def repository_unload(
    request: Request, name: str, registry: RegistryDep, settings: SettingsDep
) -> Response:
    """Stop serving `<dataset>.<model>` (queued requests finish) until it is loaded again."""
    await _small_json(request, settings)
    dataset, model = split_v2_name(name)
    try:
        await registry.unload_model(dataset, model)
    except ModelNotFound:
        raise ModelNotFound(f"model '{name}' is not loaded") from None
    return Response(status_code=200)


# --------------------------------------------------------------------------- the rest of /v2


_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@router.api_route("/v2", methods=_ANY_METHOD, include_in_schema=False)
@router.api_route("/v2/{path:path}", methods=_ANY_METHOD, include_in_schema=False)
async def not_found(request: Request) -> Response:
    """Unknown /v2 paths (404) and wrong methods on known ones (405), in the v2 shape."""
    allowed: set[str] = set()
    for route in router.routes:  # this router's own: the app may nest included routers
        methods = getattr(route, "methods", None)
        if getattr(route, "endpoint", None) is not_found or not methods:
            continue
        match, _ = route.matches(request.scope)
        if match is Match.PARTIAL:
            allowed |= set(methods)
    if allowed:
        methods_text = ", ".join(sorted(allowed))
        return v2_error(
            f"method {request.method} not allowed here; use {methods_text}",
            405,
            {"Allow": methods_text},
        )
    return v2_error(f"no route {request.url.path[:200]}", 404)
