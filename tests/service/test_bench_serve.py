"""`imgzoo bench serve`: the figures' maths, the load generator against a real server, the
naive server's network, bad arguments, and one quick end-to-end run."""

from __future__ import annotations

import io
import json
import math
import socket
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from imgzoo.cli import main
from service.bench.serve_load import LoadGenerator, LoadResult, LoadSpec
from service.bench.serve_models import repository_models
from service.bench.serve_requests import (
    KINDS,
    Target,
    build_requests,
    check_answer,
    load_images,
)
from service.bench.serve_requests import Image as EncodedImage
from service.bench.serve_stats import median_of, percentile, summarize
from service.imaging import DecodeLimits, decode_image
from tests.service.conftest import LiveServer, Repository

# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 99.9, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpy_linear(q: float, n: int) -> None:
    values = list(np.random.default_rng(n).exponential(5.0, size=n))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_on_known_values() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5  # halfway between 2 and 3
    assert percentile(values, 100) == 4.0
    assert percentile(values, 75) == pytest.approx(3.25)
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        percentile(values, 101)


def test_summary_and_median_of_repeats() -> None:
    result = LoadResult(concurrency=4, images_per_request=8, window_s=2.0, ok=10)
    result.latencies_ms = [float(i) for i in range(1, 11)]
    result.statuses = Counter({503: 2})
    result.resets = 1
    one = summarize(result)
    assert one.requests_per_s == 5.0 and one.images_per_s == 40.0
    assert one.p50_ms == 5.5 and one.p99_ms == pytest.approx(9.91)
    assert one.errors == 3 and one.error_kinds == {"http_503": 2, "connection_reset": 1}

    faster = LoadResult(concurrency=4, images_per_request=8, window_s=2.0, ok=20)
    faster.latencies_ms = [1.0] * 20
    slowest = LoadResult(concurrency=4, images_per_request=8, window_s=2.0, ok=4)
    slowest.latencies_ms = [50.0] * 4
    median = median_of([summarize(faster), one, summarize(slowest)])
    assert median.requests_per_s == 5.0  # of 10, 5, 2
    assert median.p50_ms == 5.5  # of 1, 5.5, 50
    assert median.ok == 34 and median.errors == 3 and median.repeats == 3
    assert median.to_dict()["images_per_s"] == 40.0
    with pytest.raises(ValueError, match="different concurrencies"):
        median_of([one, summarize(LoadResult(concurrency=1, images_per_request=1, window_s=1))])


# --------------------------------------------------------------------------- images


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_round_robin_over_folders_from_a_directory_and_a_tarball(tmp_path: Path) -> None:
    root = tmp_path / "train"
    for label, count in (("cat", 3), ("dog", 1), ("ship", 2)):
        (root / label).mkdir(parents=True)
        for i in range(count):
            (root / label / f"{label}{i}.png").write_bytes(_png(i))
    expected = ["cat0.png", "dog0.png", "ship0.png", "cat1.png", "ship1.png"]
    found = load_images(root, 5)
    assert [i.name for i in found.images] == expected
    assert {i.content_type for i in found.images} == {"image/png"}

    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="train")
    assert [i.name for i in load_images(archive, 5).images] == expected
    assert [i.data for i in load_images(archive, 2).images] == [_png(0), _png(0)]

    demo = load_images(None, 3)
    assert len(demo.images) == 3 and all(i.data.startswith(b"\x89PNG") for i in demo.images)


# --------------------------------------------------------------------------- load generator


@pytest.fixture(scope="module")
def load() -> Iterator[LoadGenerator]:
    with LoadGenerator() as generator:
        yield generator


def _pixels(version_dir: Path, images: list[EncodedImage]) -> list[bytes]:
    from imgzoo.manifest import load_manifest

    spec = load_manifest(version_dir).input
    return [decode_image(i.data, spec, DecodeLimits()).tobytes() for i in images]


@pytest.mark.parametrize("kind", KINDS)
def test_load_generator_measures_every_request_kind_on_a_real_server(
    kind: str, server: LiveServer, model_repository: Repository, load: LoadGenerator
) -> None:
    images = list(load_images(None, 8).images)
    target = Target("cifar10", "fastnet", 32, 32, 3)
    host = f"127.0.0.1:{server.port}"
    pixels = _pixels(model_repository.fastnet, images)
    # The shared server takes at most 4 images per request.
    requests, per_request = build_requests(kind, host, target, images, pixels=pixels, multi=4)
    assert len(requests) == len(images)
    spec = LoadSpec("127.0.0.1", server.port, requests, per_request, 2, 1.0, warmup_s=0.3)
    result = load.run(spec)
    assert result.errors == 0, (result.statuses, result.sample_error)
    assert result.ok > 0 and len(result.latencies_ms) == result.ok
    assert min(result.latencies_ms) > 0
    assert result.images_per_s == pytest.approx(result.ok * per_request / 1.0)
    assert result.sample_ok is not None
    assert check_answer(kind, result.sample_ok, per_request, 10) is None
    if kind.startswith("v2-"):  # logits of another shape than the model's are refused
        assert check_answer(kind, result.sample_ok, per_request, 7) is not None


def test_errors_are_counted_not_raised(server: LiveServer, load: LoadGenerator) -> None:
    images = list(load_images(None, 4).images)
    wrong = Target("cifar10", "nope", 32, 32, 3)
    requests, _ = build_requests("single", f"127.0.0.1:{server.port}", wrong, images)
    result = load.run(LoadSpec("127.0.0.1", server.port, requests, 1, 3, duration_s=0.4))
    assert result.ok == 0 and not result.latencies_ms
    assert set(result.statuses) == {404} and result.statuses[404] > 0
    assert result.errors == result.statuses[404]
    assert result.sample_error is not None and b"model_not_found" in result.sample_error
    assert summarize(result).error_kinds == {"http_404": result.statuses[404]}

    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    refused = load.run(LoadSpec("127.0.0.1", closed, requests, 1, 2, duration_s=0.3))
    assert refused.ok == 0 and refused.resets > 0 and refused.errors == refused.resets


def test_check_answer_rejects_what_is_not_a_prediction() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    assert check_answer("single", head + b"{}", 1, 10) is not None
    assert check_answer("single", head + b"not json", 1, 10) is not None
    single = b'{"predictions": [{"label": "cat", "index": 3, "probability": 0.5}]}'
    assert check_answer("single", head + single, 1, 10) is None
    assert check_answer("multi", head + single, 4, 10) is not None  # no per-image results
    assert check_answer("v2-uint8", head + b"{}", 1, 10) is not None


# --------------------------------------------------------------------------- naive network


def test_repository_model_feeds_the_same_network_to_the_naive_server(
    model_repository: Repository, tmp_path: Path
) -> None:
    (model,) = repository_models(model_repository.root, ["cifar10/fastnet@1"], tmp_path)
    assert model.version_dir == tmp_path / "repository" / "cifar10" / "fastnet" / "1"
    assert (model.version_dir / "model.onnx").read_bytes() == (
        model_repository.fastnet / "model.onnx"
    ).read_bytes()
    assert model.checkpoint is not None and model.no_checkpoint_reason is None

    from export.wrapper import wrapper_for
    from training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(model.checkpoint)
    eager = wrapper_for(checkpoint.build_model(), checkpoint.data)
    batch = np.stack(
        [
            decode_image(i.data, model.manifest.input, DecodeLimits())
            for i in load_images(None, 4).images
        ]
    )
    session = ort.InferenceSession(str(model.version_dir / "model.onnx"))
    expected = session.run(["logits"], {"image": batch})[0]
    with torch.no_grad():
        got = eager(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- command


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--concurrency", "0"], "--concurrency: '0' is not an integer"),
        (["--concurrency", "1,x"], "--concurrency: 'x'"),
        (["--kinds", "single,grpc"], "--kinds: unknown 'grpc'"),
        (["--servers", "bentoml"], "--servers: unknown 'bentoml'"),
        (["--model", "cifar10/fastnet"], "--model needs --repository"),
        (["--duration", "0"], "--duration must be positive"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--multi-images", "1"], "--multi-images must be 2 or more"),
        (["--images", "/nonexistent/images"], "no such file or directory"),
        (["--repository", "/nonexistent/repo"], "not a directory"),
        (["--repository", ".", "--model", "Bad/Name"], "expected dataset/name"),
    ],
)
def test_bad_arguments_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["bench", "serve", "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("imgzoo bench: error: ")
    assert message in err
    assert not (tmp_path / "out").exists()


def test_quick_run_writes_json_markdown_and_plot(
    model_repository: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["bench", "serve", "--quick", "--repository", str(model_repository.root),
            "--model", "cifar10/fastnet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| server | c | img/s | req/s | p50 ms | p95 ms | p99 ms | errors |" in printed

    report = json.loads((out / "bench-serve.json").read_text())
    assert report["command"].startswith("imgzoo bench serve --quick --repository")
    assert report["settings"]["concurrency"] == [1, 4]
    assert [m["key"] for m in report["models"]] == ["cifar10/fastnet"]
    assert report["models"][0]["version"] == 2  # the highest version
    assert report["ceiling"]["cifar10/fastnet"]["decode_and_run_images_per_s"] > 0
    assert [s["name"] for s in report["servers"]] == ["imgzoo", "torch-naive", "ort-naive"]
    for server in report["servers"]:
        model = server["models"]["cifar10/fastnet"]
        assert list(model["kinds"]) == ["single"]
        sweep = model["kinds"]["single"]
        assert sweep["answer_check"] == "ok"
        assert [p["concurrency"] for p in sweep["points"]] == [1, 4]
        for point in sweep["points"]:
            assert point["images_per_s"] > 0 and point["errors"] == 0, (server["name"], point)
            assert 0 < point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
        assert model["burst"]["after_over_fresh"] > 0
    ratios = report["ratios"]["cifar10/fastnet"]
    assert ratios[0]["imgzoo_over_ceiling"] == pytest.approx(
        ratios[0]["imgzoo"] / ratios[0]["ceiling"]
    )

    markdown = (out / "bench-serve.md").read_text()
    assert "## Ceiling: in-process ONNX Runtime, no HTTP" in markdown
    assert "Reference figures from issue 7" in markdown
    assert (out / "bench-serve.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (out / "logs" / "imgzoo.log").is_file()
