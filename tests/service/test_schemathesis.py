"""schemathesis against the live `/openapi.json` of a real uvicorn (issue 8, "Bad input").

Every operation of the schema, `/v2` included, gets generated requests, schema-valid and
schema-invalid, with real or junk names in the path. Whatever they hold, the service must answer
without a 5xx, with a status the schema documents for the operation, and with a body and headers
that match the documented response; an operation that needs a token must refuse a request
without one (schemathesis' `ignored_auth`).

`positive_data_acceptance` is left out: a schema cannot say "a decodable PNG" or "a JSON header
followed by that many tensor bytes", so schema-valid bytes are rightly refused with a 4xx.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.security import ADMIN_SCHEME, API_KEY_SCHEME
from service.settings import Settings
from tests.service.conftest import LiveServer, Repository, copy_version, serve

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    negative_data_rejection,
    positive_data_acceptance,
)

KEY = "fuzz-key-0123456789"
ADMIN = "fuzz-admin-abcdef"
# Generated cases per operation and generation mode; ~25 operations, a couple of minutes at most.
EXAMPLES = 8

# Prediction and metadata act on gray/tiny; management on gray/spare, so a generated unload
# never takes away the model the other operations need.
REAL = {"dataset": "gray", "model": "tiny", "name": "gray.tiny", "version": "1"}
SPARE = {"dataset": "gray", "model": "spare", "name": "gray.spare", "version": "1"}


def _operations() -> dict[tuple[str, str], str | None]:
    """Every documented operation and the token it needs (`api`, `admin` or None)."""
    document = create_app(Settings(repository=Path())).openapi()
    found: dict[tuple[str, str], str | None] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            schemes = {name for entry in operation.get("security", []) for name in entry}
            guard = "api" if API_KEY_SCHEME in schemes else None
            guard = "admin" if ADMIN_SCHEME in schemes else guard
            found[method.upper(), path] = guard
    return found


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def fuzzed(
    model_repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("fuzz-repository")
    copy_version(root, model_repository.gray)
    copy_version(root, model_repository.gray, model="spare")
    with serve(
        root,
        api_keys=(KEY,),
        admin_token=ADMIN,
        max_upload_bytes=200_000,
        max_images_per_request=4,
        warmup=False,
    ) as live:
        yield live


@pytest.fixture(scope="module")
def live_schema(fuzzed: LiveServer) -> Any:
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    live = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert live == set(OPERATIONS)  # the live schema is the one the tests were collected from
    return schema


def _png() -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (24, 20), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_operation_is_fuzzed() -> None:
    assert len(OPERATIONS) >= 20
    assert any(path.startswith("/v2") for _, path in OPERATIONS)
    assert ("POST", "/predict/{dataset}/{model}") in OPERATIONS


@pytest.mark.parametrize(
    ("method", "path"), sorted(OPERATIONS), ids=[f"{m} {p}" for m, p in sorted(OPERATIONS)]
)
def test_generated_requests_get_documented_answers(
    fuzzed: LiveServer, live_schema: Any, method: str, path: str
) -> None:
    operation = live_schema[path][method]
    guard = OPERATIONS[method, path]
    names = SPARE if guard == "admin" else REAL
    fixed = {name: names[name] for name in re.findall(r"\{(\w+)\}", path)}
    token = {"api": KEY, "admin": ADMIN}.get(guard or "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    strategy = st.one_of(
        operation.as_strategy(),
        operation.as_strategy(path_parameters=fixed),
        operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
        operation.as_strategy(
            generation_mode=schemathesis.GenerationMode.NEGATIVE, path_parameters=fixed
        ),
    )
    image = _png()
    statuses: list[int] = []

    @settings(
        max_examples=EXAMPLES * 4,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @given(case=strategy, real_image=st.booleans())
    def check(case: Any, real_image: bool) -> None:
        excluded = [positive_data_acceptance]
        if real_image and (case.media_type or "").startswith("image/"):
            case.body = image
            # A negative case whose mutated body was just replaced by a real image may be
            # valid now: its 200 is right, not "negative data accepted".
            excluded.append(negative_data_rejection)
        response = case.call(base_url=fuzzed.url, headers=headers, timeout=30)
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.as_curl_command(), response.text)
        case.validate_response(response, excluded_checks=excluded)
        assert KEY not in response.text and ADMIN not in response.text

    check()
    assert statuses  # the operation was really exercised
