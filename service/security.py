"""Access control: API keys for prediction, an admin token for management.

Both are FastAPI dependencies (`Depends(require_api_key)`, `Depends(require_admin)`). A token is
accepted as `Authorization: Bearer <token>` or `X-API-Key: <token>`; it is compared with every
configured key with `hmac.compare_digest` (constant time, no early exit on the first match), and
never logged or echoed. Missing or wrong token: 401 with `WWW-Authenticate: Bearer`; management
without a configured admin token: 403 (the routes exist but are disabled).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import SecretStr
from starlette.datastructures import Headers

from service.errors import Forbidden, Unauthorized
from service.settings import Settings

API_KEY_HEADER = "X-API-Key"
# OpenAPI security scheme names: what a route needs can be read from /openapi.json.
API_KEY_SCHEME = "APIKey"
ADMIN_SCHEME = "AdminToken"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}

# auto_error=False: our own errors (one JSON shape) rather than FastAPI's. These objects only
# read the headers, and document each route's scheme in OpenAPI ("Authorize" in /docs).
_api_bearer = HTTPBearer(
    scheme_name=API_KEY_SCHEME, auto_error=False, description="`Authorization: Bearer <key>`"
)
_api_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name=f"{API_KEY_SCHEME}Header",
    auto_error=False,
    description="The API key in `X-API-Key`.",
)
_admin_bearer = HTTPBearer(
    scheme_name=ADMIN_SCHEME, auto_error=False, description="`Authorization: Bearer <token>`"
)
_admin_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name=f"{ADMIN_SCHEME}Header",
    auto_error=False,
    description="The admin token in `X-API-Key`.",
)

Credentials = HTTPAuthorizationCredentials | None


def _settings(request: Request) -> Settings:
    settings = request.app.state.service.settings
    if not isinstance(settings, Settings):  # pragma: no cover - wiring bug
        raise RuntimeError("the app has no imgzoo settings")
    return settings


def presented_token(bearer: str | None, api_key: str | None) -> str | None:
    """The token a request carries: the bearer credentials first, else `X-API-Key`."""
    return bearer or api_key or None


def _credentials(bearer: Credentials) -> str | None:
    return bearer.credentials if bearer is not None else None


def token_from_headers(headers: Headers) -> str | None:
    """`presented_token` read straight from the headers, as the two schemes above read them.

    For a route that serves its common case without FastAPI's dependency solving
    (`service.routers.predict`): it must accept and refuse exactly what the dependencies do.
    """
    authorization = headers.get("authorization")
    scheme, credentials = get_authorization_scheme_param(authorization)
    bearer = credentials if scheme.lower() == "bearer" else None
    return presented_token(bearer, headers.get(API_KEY_HEADER))


def check_api_key(request: Request, settings: Settings) -> None:
    """`require_api_key` without the dependency machinery (see `token_from_headers`)."""
    if settings.api_keys:
        _check(token_from_headers(request.headers), settings.api_keys, "API key")


def matches_any(token: str, secrets: Sequence[SecretStr]) -> bool:
    """Whether `token` equals one of `secrets`, comparing with every one in constant time."""
    # Header values arrive latin-1 decoded; compare raw bytes so no input can raise.
    given = token.encode("latin-1", "replace")
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given, secret.get_secret_value().encode("latin-1"))
    return matched


def _check(token: str | None, secrets: Sequence[SecretStr], what: str) -> None:
    if token is None:
        raise Unauthorized(
            f"missing {what}: send 'Authorization: Bearer <token>' or '{API_KEY_HEADER}: <token>'",
            headers=_CHALLENGE,
        )
    if not matches_any(token, secrets):
        raise Unauthorized(f"invalid {what}", headers=_CHALLENGE)


async def require_api_key(
    request: Request,
    bearer: Annotated[Credentials, Depends(_api_bearer)],
    api_key: Annotated[str | None, Depends(_api_header)],
) -> None:
    """Prediction routes: open when no API key is configured, else one of the keys."""
    keys = _settings(request).api_keys
    if keys:
        _check(presented_token(_credentials(bearer), api_key), keys, "API key")


async def require_admin(
    request: Request,
    bearer: Annotated[Credentials, Depends(_admin_bearer)],
    api_key: Annotated[str | None, Depends(_admin_header)],
) -> None:
    """Management routes: 403 when no admin token is configured, else the admin token."""
    token = _settings(request).admin_token
    if token is None:
        raise Forbidden("management routes are disabled: the service has no admin token")
    _check(presented_token(_credentials(bearer), api_key), [token], "admin token")
