"""Exception handlers: every failure of the native API answers in one JSON shape.

`{"error": {"code": ..., "message": ..., "details": {...}}}` with the error's status and headers.
Messages come from our own exceptions; nothing from a traceback or a path reaches a client.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.errors import InvalidInput, ServiceError
from service.responses import OrjsonResponse, error_body, error_response

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    return error_response(exc)


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "message": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors()
    ]
    first: dict[str, Any] = errors[0] if errors else {"loc": [], "message": "invalid request"}
    where = ".".join(first["loc"])
    message = f"{where}: {first['message']}" if where else first["message"]
    return OrjsonResponse(
        error_body(InvalidInput.code, message, {"errors": errors}), status_code=422
    )


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return OrjsonResponse(
        error_body(code, message), status_code=exc.status_code, headers=exc.headers
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
