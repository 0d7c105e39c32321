"""The JSON response class of the service: orjson, which also writes numpy scalars."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

from service.errors import ServiceError


class OrjsonResponse(JSONResponse):
    """`application/json` rendered by orjson."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one error shape of the native API."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(exc: ServiceError) -> OrjsonResponse:
    return OrjsonResponse(
        error_body(exc.code, exc.message, exc.details),
        status_code=exc.status_code,
        headers=exc.headers or None,
    )
