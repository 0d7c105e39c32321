"""Request context (pure ASGI, no per-request task): request id, timing headers, last-resort 500.

- `X-Request-ID`: a client's id is kept when it is short and plain, otherwise one is made; it
  goes back on every answer and into the logs.
- `Server-Timing`: the stages a route recorded (`record_stages`) plus the total.
- Any exception no handler turned into an answer becomes a 500 `internal_error` with no
  detail; the traceback is logged with the request id.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import uuid
from collections.abc import Mapping
from time import perf_counter
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.responses import error_body

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_STATE_ID = "request_id"
_STATE_STARTED = "request_started"
_STATE_STAGES = "server_timing"


def request_id(request: Request) -> str:
    """The id of the request (set by the middleware; made up if it did not run)."""
    value = request.scope.get("state", {}).get(_STATE_ID)
    return value if isinstance(value, str) else uuid.uuid4().hex


def request_started(request: Request) -> float:
    """`perf_counter()` when the request arrived."""
    value = request.scope.get("state", {}).get(_STATE_STARTED)
    return value if isinstance(value, float) else perf_counter()


def record_stages(request: Request, stages: Mapping[str, float]) -> None:
    """Stage durations (seconds) for the `Server-Timing` header."""
    request.scope.setdefault("state", {})[_STATE_STAGES] = dict(stages)


def _server_timing(stages: Mapping[str, float], total: float) -> bytes:
    merged = {**stages, "total": stages.get("total", total)}
    entries = (f"{name};dur={seconds * 1000:.3f}" for name, seconds in merged.items())
    return ", ".join(entries).encode()


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Ids are a random per-process prefix and a counter: unique like uuid4 (32 hex digits)
        # without a getrandom() call per request.
        self._id_prefix = os.urandom(8).hex()
        self._id_counter = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        incoming = _header(scope, b"x-request-id")
        if incoming and _REQUEST_ID.match(incoming):
            rid = incoming
        else:
            rid = f"{self._id_prefix}{next(self._id_counter):016x}"
        state: dict[str, Any] = scope.setdefault("state", {})
        state[_STATE_ID] = rid
        state[_STATE_STARTED] = started
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                stages = state.get(_STATE_STAGES) or {}
                headers = [
                    *message.get("headers", []),
                    (b"x-request-id", rid.encode()),
                    (b"server-timing", _server_timing(stages, perf_counter() - started)),
                ]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            logger.exception("request %s %s %s failed", rid, scope.get("method"), scope.get("path"))
            if response_started:
                raise
            body = orjson.dumps(error_body("internal_error", "internal server error"))
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send_with_headers({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            try:
                return str(value.decode("latin-1"))
            except UnicodeDecodeError:
                return None
    return None
