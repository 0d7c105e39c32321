"""The direct path of /predict (no dependency solving) answers as FastAPI's own path does."""

from __future__ import annotations

from typing import Any

import pytest

from service.routers.predict import PlainQuery, plain_query
from tests.service.conftest import LiveServer


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", PlainQuery()),
        (b"top_k=3", PlainQuery(top_k=3)),
        (b"version=2&top_k=1000", PlainQuery(top_k=1000, version=2)),
        (b"top_k=123456789", None),  # above the bound: FastAPI's 422
        (b"top_k=1001", None),
        (b"top_k=0", None),
        (b"version=0", None),
        (b"top_k=03", None),
        (b"top_k=+3", None),
        (b"top_k=-3", None),
        (b"top_k=%33", None),
        (b"top_k=3&top_k=4", None),
        (b"top_k", None),
        (b"top_k=", None),
        (b"top_k=3&", None),
        (b"unused=1", None),
        (b"top_k=\xd9\xa3", None),  # a non-ASCII digit
    ],
)
def test_plain_query_takes_only_what_needs_no_validation(
    query: bytes, expected: PlainQuery | None
) -> None:
    assert plain_query(query) == expected


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    """The answer without what differs between any two requests (ids, timings)."""
    stable = {k: v for k, v in body.items() if k not in ("request_id", "latency_ms", "results")}
    stable["results"] = [
        {k: v for k, v in result.items() if k not in ("latency_ms", "batch_size")}
        for result in body["results"]
    ]
    stable.pop("batch_size")
    return stable


@pytest.mark.parametrize("query", ["", "?top_k=2", "?version=1&top_k=4"])
def test_direct_and_solved_paths_give_the_same_answer(
    server: LiveServer, sample_images: list[bytes], query: str
) -> None:
    files = {"file": ("x.png", sample_images[3], "image/png")}
    with server.client() as client:
        direct = client.post(f"/predict/gray/tiny{query}", files=files)
        # An unknown parameter sends the request through FastAPI's dependency solving, which
        # ignores it.
        solved = client.post(f"/predict/gray/tiny{query or '?'}&unused=1", files=files)
    assert direct.status_code == solved.status_code == 200, (direct.text, solved.text)
    assert _comparable(direct.json()) == _comparable(solved.json())
    assert direct.headers["content-type"] == solved.headers["content-type"]


@pytest.mark.parametrize(
    ("query", "where"),
    [("?top_k=0", "query.top_k"), ("?top_k=1001", "query.top_k"), ("?version=x", "query.version")],
)
def test_parameters_the_direct_path_declines_get_fastapis_validation_error(
    server: LiveServer, sample_images: list[bytes], query: str, where: str
) -> None:
    with server.client() as client:
        response = client.post(
            f"/predict/gray/tiny{query}", files={"file": ("x.png", sample_images[3], "image/png")}
        )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and error["message"].startswith(f"{where}: ")


def test_unknown_models_and_versions_are_404_on_the_direct_path(
    server: LiveServer, sample_images: list[bytes]
) -> None:
    files = {"file": ("x.png", sample_images[3], "image/png")}
    with server.client() as client:
        missing_model = client.post("/predict/gray/nope", files=files)
        missing_version = client.post("/predict/gray/tiny?version=99", files=files)
    assert missing_model.status_code == missing_version.status_code == 404
    assert missing_model.json()["error"]["code"] == "model_not_found"


def test_a_plain_request_skips_dependency_solving(
    server: LiveServer, sample_images: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fastapi.routing

    solved: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    files = {"file": ("x.png", sample_images[3], "image/png")}
    with server.client() as client:
        assert client.post("/predict/gray/tiny?top_k=2", files=files).status_code == 200
        assert solved == []
        assert client.post("/predict/gray/tiny?unused=1", files=files).status_code == 200
        assert solved == ["/predict/gray/tiny"]
