"""Access control on every route of the app, constant-time checks, and nothing leaked
(issue 8, "Security"); test_auth.py covers the token mechanics.

- Every route the app has, also those not in the OpenAPI schema, must be listed in ACCESS with
  the token it needs, so a new route fails here until someone decides; each is then called
  live without a token (and with the wrong one) and must answer as listed.
- Token comparisons run `hmac.compare_digest` against every configured key, with no early exit.
- While error requests are made (wrong tokens, corrupt images carrying a marker, bad JSON,
  failed inference, a reload with a broken version), neither the answers nor the logs carry a
  token, the image bytes or the repository's path.
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import service.security
from imgzoo.manifest import ONNX_FILENAME
from service.app import create_app
from service.runtime import Session, SessionSpec, create_ort_session
from service.settings import Settings
from tests.service.conftest import LiveServer, Repository, copy_version, serve

KEY = "sec-api-key-0123456789"
OTHER_KEY = "sec-api-key-9876543210"
ADMIN = "sec-admin-token-abcdef"
WRONG = "sec-wrong-token-000000"
MARKER = b"IMAGE-CONTENT-MARKER-7f3a"
POISON = 201  # a uniform image of this grey level makes its batch fail

# (method, path) -> who may call it: "open", "api" (an API key when keys are configured) or
# "admin" (the admin token). A route missing here fails `test_every_route_is_classified`.
ACCESS = {
    ("GET", "/"): "open",
    ("GET", "/static"): "open",
    ("GET", "/ui/config"): "open",
    ("GET", "/openapi.json"): "open",
    ("GET", "/docs"): "open",
    ("GET", "/docs/oauth2-redirect"): "open",
    ("GET", "/redoc"): "open",
    ("GET", "/healthz"): "open",
    ("GET", "/readyz"): "open",
    ("GET", "/metrics"): "open",
    ("GET", "/models"): "open",
    ("GET", "/models/{dataset}/{model}"): "open",
    ("POST", "/predict/{dataset}/{model}"): "api",
    ("POST", "/admin/reload"): "admin",
    ("POST", "/admin/models/{dataset}/{model}/load"): "admin",
    ("POST", "/admin/models/{dataset}/{model}/unload"): "admin",
    ("GET", "/v2"): "open",
    ("GET", "/v2/health/live"): "open",
    ("GET", "/v2/health/ready"): "open",
    ("GET", "/v2/models/{name}"): "open",
    ("GET", "/v2/models/{name}/versions/{version}"): "open",
    ("GET", "/v2/models/{name}/ready"): "open",
    ("GET", "/v2/models/{name}/versions/{version}/ready"): "open",
    ("POST", "/v2/models/{name}/infer"): "api",
    ("POST", "/v2/models/{name}/versions/{version}/infer"): "api",
    ("POST", "/v2/repository/index"): "admin",
    ("POST", "/v2/repository/models/{name}/load"): "admin",
    ("POST", "/v2/repository/models/{name}/unload"): "admin",
    # The v2 catch-all: 404 / 405 in the protocol's shape for whatever else is under /v2.
    **{
        (m, p): "open"
        for p in ("/v2", "/v2/{path}")
        for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
    },
}


def _walk(routes: Sequence[Any]) -> Iterator[Any]:
    """Every leaf route, looking into included routers (FastAPI keeps them nested)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes)
        else:
            yield route


def _app_routes() -> set[tuple[str, str]]:
    app = create_app(Settings(repository=Path(), api_keys=(KEY,), admin_token=ADMIN))
    found: set[tuple[str, str]] = set()
    for route in _walk(app.routes):
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # {path:path} -> {path}
        methods = getattr(route, "methods", None) or {"GET"}  # a mount serves GET
        found |= {(m, path) for m in methods if m not in ("HEAD", "OPTIONS")}
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    assert documented <= found, "the route walk missed documented routes"
    return found


ROUTES = _app_routes()


def test_every_route_is_classified() -> None:
    unlisted = ROUTES - set(ACCESS)
    assert not unlisted, f"routes without a decided access level: {sorted(unlisted)}"
    assert not set(ACCESS) - ROUTES, "ACCESS lists routes the app no longer has"


@pytest.fixture(scope="module")
def secured(
    model_repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("security-repository")
    copy_version(root, model_repository.gray)
    copy_version(root, model_repository.gray, model="spare")

    def factory(model: bytes, spec: SessionSpec) -> Session:
        return _PoisonedSession(create_ort_session(model, spec))

    with serve(root, session_factory=factory, api_keys=(KEY, OTHER_KEY), admin_token=ADMIN) as live:
        yield live


class _PoisonedSession:
    """A real session that fails batches holding a POISON image (with a message of its own)."""

    def __init__(self, inner: Session) -> None:
        self._inner = inner

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> Sequence[Any]:
        if any(np.all(image == POISON) for image in input_feed["image"]):
            raise RuntimeError("injected failure, for the logs only")
        return self._inner.run(output_names, input_feed)

    def get_providers(self) -> list[str]:
        return self._inner.get_providers()

    def get_inputs(self) -> list[Any]:
        return self._inner.get_inputs()

    def get_outputs(self) -> list[Any]:
        return self._inner.get_outputs()


def _url(path: str, access: str) -> str:
    model = "spare" if access == "admin" else "tiny"
    values = {"dataset": "gray", "model": model, "name": f"gray.{model}", "version": "1"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "anything"), path)


@pytest.mark.parametrize(
    ("method", "path"), sorted(ACCESS), ids=[f"{m} {p}" for m, p in sorted(ACCESS)]
)
def test_each_route_answers_as_its_access_level_says(
    secured: LiveServer, method: str, path: str
) -> None:
    access = ACCESS[method, path]
    url = _url(path, access)
    with secured.client() as client:
        bare = client.request(method, url, content=b"x", headers={"content-type": "image/png"})
        wrong = client.request(
            method, url, content=b"x", headers={"Authorization": f"Bearer {WRONG}"}
        )
        # Each token opens only its own routes.
        other = ADMIN if access == "api" else KEY
        crossed = client.request(method, url, headers={"Authorization": f"Bearer {other}"})
    if access == "open":
        assert bare.status_code not in (401, 403), bare.text
        assert wrong.status_code not in (401, 403), wrong.text
        return
    for response in (bare, wrong, crossed):
        assert response.status_code == 401, (response.status_code, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert WRONG not in response.text and KEY not in response.text


def test_tokens_are_compared_in_constant_time_against_every_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(service.security.hmac, "compare_digest", spy)
    secrets = Settings(repository=Path(), api_keys=(KEY, OTHER_KEY)).api_keys
    for token, expected in ((KEY, True), (OTHER_KEY, True), (WRONG, False), (KEY[:-1], False)):
        calls.clear()
        assert service.security.matches_any(token, secrets) is expected
        # No early exit: a match on the first key still compares with the second.
        assert [b for _, b in calls] == [KEY.encode(), OTHER_KEY.encode()]


# --------------------------------------------------------------------------- leaks


def _marked_png(valid: bool) -> bytes:
    """A PNG carrying MARKER in a text chunk; with `valid=False` its pixel data is cut off."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", MARKER.decode())
    buffer = io.BytesIO()
    Image.new("L", (20, 24), POISON).save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    return data if valid else data[: data.index(b"IDAT") + 8]


def test_no_secret_image_content_or_path_in_answers_or_logs(
    secured: LiveServer,
    model_repository: Repository,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = secured.app.state.service
    root: Path = service.registry.root
    api = {"Authorization": f"Bearer {KEY}"}
    answers: list[httpx.Response] = []
    with caplog.at_level(logging.DEBUG), secured.client() as client:

        def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
            response = client.request(method, url, **kwargs)
            answers.append(response)
            return response

        png = {"content-type": "image/png"}
        assert (
            call(
                "POST", "/predict/gray/tiny", content=b"x", headers={**png, "X-API-Key": WRONG}
            ).status_code
            == 401
        )
        assert (
            call("POST", "/admin/reload", headers={"Authorization": f"Bearer {WRONG}"}).status_code
            == 401
        )
        assert (
            call(
                "POST", "/predict/gray/tiny", content=MARKER + b"\x89PNG", headers={**png, **api}
            ).status_code
            == 415
        )
        assert (
            call(
                "POST", "/predict/gray/tiny", content=_marked_png(False), headers={**png, **api}
            ).status_code
            == 422
        )
        assert (
            call(
                "POST",
                "/predict/gray/tiny",
                files={"file": ("a.png", b"\x89PNG\r\n\x1a\n" + MARKER)},
                headers=api,
            ).status_code
            == 422
        )
        bad_bytes = base64.b64encode(b"\xff\xd8\xff" + MARKER).decode()
        tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [bad_bytes]}
        assert (
            call(
                "POST", "/v2/models/gray.tiny/infer", json={"inputs": [tensor]}, headers=api
            ).status_code
            == 422
        )
        assert (
            call(
                "POST",
                "/v2/models/gray.tiny/infer",
                content=b'{"inputs": "' + MARKER + b'"',
                headers=api,
            ).status_code
            == 400
        )
        assert (
            call(
                "POST", "/v2/models/gray.tiny/infer", json={"inputs": MARKER.decode()}, headers=api
            ).status_code
            == 400
        )
        assert (
            call(
                "POST", "/predict/gray/nope", content=_marked_png(True), headers={**png, **api}
            ).status_code
            == 404
        )
        # A decodable image whose batch fails: the runtime's message stays out of the answer.
        assert (
            call(
                "POST", "/predict/gray/tiny", content=_marked_png(True), headers={**png, **api}
            ).status_code
            == 500
        )
        # A broken version appears: the reload reports and logs it without the repository path.
        broken = copy_version(root, model_repository.gray, model="broken")
        (broken / ONNX_FILENAME).write_bytes(b"garbage " + MARKER)
        try:
            report = call("POST", "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"})
        finally:
            shutil.rmtree(broken.parent)
        assert report.status_code == 200 and report.json()["failed"]
        assert (
            call("POST", "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}).status_code
            == 200
        )

    # What the service logged (the test's own HTTP client logs too, in this process).
    logged = "\n".join(
        f"{record.getMessage()}\n{record.exc_text or ''}"
        for record in caplog.records
        if not record.name.startswith(("httpx", "httpcore"))
    )
    assert "batch of 1 failed" in logged  # the logs did see the failures
    texts = [
        (f"answer {r.request.method} {r.request.url.path}", r.text + str(r.headers))
        for r in answers
    ]
    for where, text in [*texts, ("logs", logged)]:
        for secret in (KEY, OTHER_KEY, ADMIN, WRONG):
            assert secret not in text, (where, "token")
        assert MARKER.decode() not in text, (where, "image content")
        if where != "logs":
            assert "injected" not in text, (where, "runtime message")
        assert str(root) not in text and str(root.parent) not in text, (where, "path")
