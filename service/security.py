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
from pydantic import SecretStr

from service.errors import Forbidden, Unauthorized
from service.settings import Settings

API_KEY_HEADER = "X-API-Key"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}

# auto_error=False: our own errors (one JSON shape) rather than FastAPI's; these objects only
# read the headers and document the schemes in OpenAPI ("Authorize" in /docs).
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>`")
_api_key = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="The same token in `X-API-Key`."
)

BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
ApiKeyDep = Annotated[str | None, Depends(_api_key)]


def _settings(request: Request) -> Settings:
    settings = request.app.state.service.settings
    if not isinstance(settings, Settings):  # pragma: no cover - wiring bug
        raise RuntimeError("the app has no imgzoo settings")
    return settings


def presented_token(bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> str | None:
    """The token a request carries: the bearer credentials first, else `X-API-Key`."""
    if bearer is not None and bearer.credentials:
        return bearer.credentials
    return api_key or None


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


async def require_api_key(request: Request, bearer: BearerDep, api_key: ApiKeyDep) -> None:
    """Prediction routes: open when no API key is configured, else one of the keys."""
    keys = _settings(request).api_keys
    if keys:
        _check(presented_token(bearer, api_key), keys, "API key")


async def require_admin(request: Request, bearer: BearerDep, api_key: ApiKeyDep) -> None:
    """Management routes: 403 when no admin token is configured, else the admin token."""
    token = _settings(request).admin_token
    if token is None:
        raise Forbidden("management routes are disabled: the service has no admin token")
    _check(presented_token(bearer, api_key), [token], "admin token")
