"""Errors on /v2 in the protocol's shape, `{"error": "<one line>"}`, scoped to these routes.

`V2Route` wraps every /v2 endpoint: the service's own errors keep their status and headers
(404 unknown model, 400 bad tensor, 503 queue full with Retry-After, 504 deadline, 401/403
from access control); FastAPI's validation and HTTP errors become 400 / their status; anything
else is logged with the request id and answered 500 without detail. The native API's error
shape is untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from service.errors import ServiceError
from service.middleware import request_id
from service.responses import OrjsonResponse

logger = logging.getLogger(__name__)

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


def v2_error(message: str, status_code: int, headers: dict[str, str] | None = None) -> Response:
    """The protocol's error answer."""
    return OrjsonResponse({"error": message}, status_code=status_code, headers=headers or None)


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid value"))
    return f"{where}: {message}" if where else message


class V2Route(APIRoute):
    """An APIRoute whose failures answer in the v2 error shape."""

    def get_route_handler(self) -> Endpoint:
        handler = super().get_route_handler()

        async def v2_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except ServiceError as exc:
                return v2_error(exc.message, exc.status_code, exc.headers)
            except RequestValidationError as exc:
                return v2_error(_validation_message(exc), 400)
            except HTTPException as exc:
                message = exc.detail if isinstance(exc.detail, str) else "request refused"
                return v2_error(message, exc.status_code, dict(exc.headers or {}))
            except Exception:
                logger.exception("v2 request %s failed", request_id(request))
                return v2_error("internal server error", 500)

        return v2_handler
