"""Access control: API keys on prediction, the admin token on management, CORS, secrecy."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.security import ADMIN_SCHEME, API_KEY_SCHEME, matches_any
from service.settings import Settings
from tests.service.conftest import LiveServer, Repository, copy_version, serve

KEYS = ("key-one-0123456789", "key-two-9876543210")
ADMIN = "admin-secret-abcdef"
WRONG = "wrong-token-000000"
PNG = {"content-type": "image/png"}
# /predict serves a plain query without FastAPI's dependency solving and anything else with it
# (service.routers.predict): the key checks must agree on both paths.
PREDICT_PATHS = pytest.mark.parametrize(
    "query", ["", "?top_k=2", "?top_k=2&unused=1"], ids=["direct", "direct-query", "solved"]
)

# Every route that must be protected, and by which token (the v2 routes are discovered too).
EXPECTED = {
    ("POST", "/predict/{dataset}/{model}"): "api",
    ("POST", "/admin/reload"): "admin",
    ("POST", "/admin/models/{dataset}/{model}/load"): "admin",
    ("POST", "/admin/models/{dataset}/{model}/unload"): "admin",
}
OPEN = ["/", "/ui/config", "/models", "/models/gray/tiny", "/healthz", "/readyz", "/metrics"]


def _protected_routes() -> dict[tuple[str, str], str]:
    """Every route whose OpenAPI operation names a security scheme, and which one."""
    schema = create_app(Settings(repository=Path())).openapi()
    routes: dict[tuple[str, str], str] = {}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            schemes = {name for entry in operation.get("security", []) for name in entry}
            if API_KEY_SCHEME in schemes:
                routes[method.upper(), path] = "api"
            elif ADMIN_SCHEME in schemes:
                routes[method.upper(), path] = "admin"
    return routes


PROTECTED = _protected_routes()


def _url(path: str, guard: str = "admin") -> str:
    # Management acts on gray/spare, a model only these tests load and unload; prediction on
    # gray/tiny, which always serves.
    model = "tiny" if guard == "api" else "spare"
    values = {"dataset": "gray", "model": model, "version": "1"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), f"gray.{model}"), path)


@pytest.fixture(scope="module")
def secured(
    model_repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("auth-repository")
    copy_version(root, model_repository.gray)
    copy_version(root, model_repository.gray, model="spare")
    with serve(root, api_keys=KEYS, admin_token=ADMIN) as live:
        yield live


@pytest.fixture(scope="module")
def no_admin(
    model_repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("open-repository")
    copy_version(root, model_repository.gray)
    with serve(root) as live:
        yield live


def _request(
    client: httpx.Client, method: str, path: str, headers: dict[str, str], image: bytes
) -> httpx.Response:
    body = image if path.startswith("/predict") else None
    url = _url(path, PROTECTED[method, path])
    return client.request(method, url, content=body, headers={**PNG, **headers})


def test_every_expected_route_is_protected() -> None:
    assert {route: PROTECTED.get(route) for route in EXPECTED} == EXPECTED
    assert PROTECTED  # and whatever else (the /v2 routes) carries a guard is tested below


@pytest.mark.parametrize(("method", "path"), sorted(PROTECTED))
@pytest.mark.parametrize("case", ["no token", "wrong token", "right token"])
def test_protected_routes_need_their_token(
    secured: LiveServer, sample_images: list[bytes], method: str, path: str, case: str
) -> None:
    right = KEYS[1] if PROTECTED[method, path] == "api" else ADMIN
    headers = {
        "no token": {},
        "wrong token": {"Authorization": f"Bearer {WRONG}"},
        "right token": {"Authorization": f"Bearer {right}"},
    }[case]
    with secured.client() as client:
        response = _request(client, method, path, headers, sample_images[0])
    if case == "right token":
        assert response.status_code not in (401, 403), response.text
        if path.startswith("/predict") or path == "/admin/reload":
            assert response.status_code == 200, response.text
        return
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    if not path.startswith("/v2"):  # /v2 answers in its protocol's own error shape
        error = response.json()["error"]
        assert error["code"] == "unauthorized"
        assert ("missing" if case == "no token" else "invalid") in error["message"]
    assert WRONG not in response.text


def test_api_keys_are_not_admin_tokens_and_vice_versa(secured: LiveServer) -> None:
    with secured.client() as client:
        assert client.post("/admin/reload", headers={"X-API-Key": KEYS[0]}).status_code == 401
        predict = client.post(
            "/predict/gray/tiny", content=b"x", headers={**PNG, "X-API-Key": ADMIN}
        )
        assert predict.status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEYS[0]}"},
        {"Authorization": f"bearer {KEYS[1]}"},
        {"X-API-Key": KEYS[0]},
        {"X-API-Key": KEYS[1]},
        {"Authorization": f"Basic {WRONG}", "X-API-Key": KEYS[0]},
        {"Authorization": f"Bearer  {KEYS[0]}"},
    ],
    ids=["bearer-1", "lowercase-scheme", "x-api-key-1", "x-api-key-2", "basic-then-key", "spaces"],
)
@PREDICT_PATHS
def test_every_key_works_in_either_header(
    secured: LiveServer, sample_images: list[bytes], headers: dict[str, str], query: str
) -> None:
    with secured.client() as client:
        response = client.post(
            f"/predict/gray/tiny{query}", content=sample_images[0], headers={**PNG, **headers}
        )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "tiny"
    if query:
        assert len(response.json()["predictions"]) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Basic {KEYS[0]}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {KEYS[0]}x"},
        {"X-API-Key": KEYS[0][:-1]},
        {"X-API-Key": ""},
        {"X-API-Key": "ключ"},
        {"Authorization": f"Bearer {WRONG}", "X-API-Key": KEYS[0]},
    ],
    ids=[
        "basic-scheme",
        "empty-bearer",
        "longer",
        "prefix",
        "empty",
        "non-ascii",
        "wrong-bearer-first",
    ],
)
@PREDICT_PATHS
def test_near_misses_are_refused(secured: LiveServer, headers: dict[str, str], query: str) -> None:
    with secured.client() as client:
        encoded = {k: v.encode() for k, v in headers.items()}
        response = client.post(
            f"/predict/gray/tiny{query}", content=b"x", headers={**PNG, **encoded}
        )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_open_routes_need_no_token(secured: LiveServer) -> None:
    with secured.client() as client:
        for path in OPEN:
            assert client.get(path).status_code == 200, path


@pytest.mark.parametrize("path", sorted(p for m, p in PROTECTED if PROTECTED[m, p] == "admin"))
def test_management_is_disabled_without_an_admin_token(no_admin: LiveServer, path: str) -> None:
    method = next(m for m, p in PROTECTED if p == path)
    with no_admin.client() as client:
        for headers in ({}, {"Authorization": f"Bearer {ADMIN}"}):
            response = client.request(method, _url(path), headers=headers)
            assert response.status_code == 403, response.text
            if not path.startswith("/v2"):
                assert response.json()["error"]["code"] == "forbidden"


def test_prediction_is_open_without_api_keys(
    no_admin: LiveServer, sample_images: list[bytes]
) -> None:
    with no_admin.client() as client:
        response = client.post("/predict/gray/tiny", content=sample_images[0], headers=PNG)
        assert response.status_code == 200
        assert client.get("/ui/config").json()["api_key_required"] is False


def test_tokens_never_reach_logs_reprs_or_errors(
    secured: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(repository=Path(), api_keys=KEYS, admin_token=ADMIN)
    shown = f"{settings!r} {settings} {settings.model_dump_json()}"
    with caplog.at_level(logging.DEBUG), secured.client() as client:
        client.post("/admin/reload", headers={"Authorization": f"Bearer {WRONG}"})
        client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        client.post("/predict/gray/tiny", content=b"x", headers={**PNG, "X-API-Key": WRONG})
        openapi = client.get("/openapi.json").text
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in (*KEYS, ADMIN, WRONG):
        assert secret not in shown
        assert secret not in logged
        assert secret not in openapi
    with pytest.raises(ValueError) as invalid:
        Settings(repository=Path(), api_keys=("has a space",))
    assert "has a space" not in str(invalid.value)


def test_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGZOO_API_KEYS", f"{KEYS[0]}, {KEYS[1]}")
    monkeypatch.setenv("IMGZOO_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("IMGZOO_CORS_ORIGINS", '["https://zoo.example.org"]')
    settings = Settings()
    assert [k.get_secret_value() for k in settings.api_keys] == list(KEYS)
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == ADMIN
    assert settings.cors_origins == ("https://zoo.example.org",)
    monkeypatch.setenv("IMGZOO_API_KEYS", "")
    assert Settings().api_keys == ()
    with pytest.raises(ValueError):
        Settings(cors_origins=("https://zoo.example.org/path",))


def test_comparison_checks_every_key() -> None:
    secrets = Settings(repository=Path(), api_keys=KEYS).api_keys
    assert matches_any(KEYS[0], secrets) and matches_any(KEYS[1], secrets)
    assert not matches_any(KEYS[0][:-1], secrets)
    assert not matches_any("", secrets)
    assert not matches_any("é" * 3, secrets)


def test_cors_allows_only_the_configured_origins(
    model_repository: Repository, tmp_path: Path
) -> None:
    copy_version(tmp_path, model_repository.gray)
    allowed, other = "https://zoo.example.org", "https://evil.example"
    header = "access-control-allow-origin"

    def preflight(origin: str) -> dict[str, Any]:
        return {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }

    with serve(tmp_path, cors_origins=(allowed,), api_keys=KEYS) as live, live.client() as client:
        answer = client.options("/predict/gray/tiny", headers=preflight(allowed))  # no token
        simple = client.get("/models", headers={"Origin": allowed})
        refused = client.options("/predict/gray/tiny", headers=preflight(other))
        foreign = client.get("/models", headers={"Origin": other})
    assert answer.status_code == 200 and answer.headers[header] == allowed
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    assert simple.headers[header] == allowed
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    assert header not in refused.headers and header not in foreign.headers


def test_no_cors_headers_unless_configured(no_admin: LiveServer) -> None:
    with no_admin.client() as client:
        response = client.get("/models", headers={"Origin": "https://zoo.example.org"})
    assert "access-control-allow-origin" not in response.headers
