"""One exception hierarchy for the service; each error carries its HTTP status and a stable code.

Routers raise these; one handler turns them into the native JSON error shape
`{"error": {"code": ..., "message": ..., "details": ...}}` (or `{"error": "..."}` on /v2).
Messages are written for clients: no paths, no tracebacks, no internals.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error the service answers with. Subclasses fix status and code."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


class BadRequest(ServiceError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class ModelNotFound(ServiceError):
    status_code = 404
    code = "model_not_found"


class VersionNotFound(ServiceError):
    status_code = 404
    code = "version_not_found"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class ImageTooLarge(ServiceError):
    """Too many pixels (a decompression bomb, or simply too big to decode safely)."""

    status_code = 413
    code = "image_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidImage(ServiceError):
    """Bytes that claim to be an image but do not decode."""

    status_code = 422
    code = "invalid_image"


class InvalidInput(ServiceError):
    """A well-formed request whose values are wrong (top_k, tensor shape, ...)."""

    status_code = 422
    code = "invalid_input"


class ModelNotReady(ServiceError):
    status_code = 503
    code = "model_not_ready"


class QueueFull(ServiceError):
    status_code = 503
    code = "queue_full"


class ShuttingDown(ServiceError):
    status_code = 503
    code = "shutting_down"


class DeadlineExceeded(ServiceError):
    status_code = 504
    code = "deadline_exceeded"


class InferenceFailed(ServiceError):
    """The runtime failed on a batch; only that batch's requests get this."""

    status_code = 500
    code = "inference_failed"
