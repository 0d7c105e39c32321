"""Bad repository content is reported (/models, /readyz, metrics) while good models serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgzoo.manifest import MANIFEST_FILENAME, ONNX_FILENAME, load_manifest, sha256_file
from service.schemas import ModelsResponse
from tests.service.conftest import Repository, copy_version, serve

PNG = {"content-type": "image/png"}

# path -> a fragment of the reason it must be reported with
EXPECTED_FAILURES = {
    "gray/corrupt/1": "INVALID_PROTOBUF",
    "gray/badsha/1": "sha256 differs",
    "gray/badmanifest/1": "invalid manifest",
    "gray/missing/1": "missing",
    "gray/wronggraph/1": "graph input shape",
    "gray/badconfig/config.json": "max_batch_size",
    "gray/notaversion/v1": "not a version number",
    "Bad-Name": "not a valid data set name",
}


def _rewrite_hashes(version_dir: Path) -> None:
    """Make the manifest agree with the files as they are now."""
    manifest = load_manifest(version_dir)
    files = {name: version_dir / name for name in manifest.sha256}
    metrics = manifest.metrics.model_copy(
        update={"file_sizes": {n: p.stat().st_size for n, p in files.items()}}
    )
    updated = manifest.model_copy(
        update={"sha256": {n: sha256_file(p) for n, p in files.items()}, "metrics": metrics}
    )
    (version_dir / MANIFEST_FILENAME).write_text(updated.to_json())


@pytest.fixture(scope="module")
def mixed_repository(
    model_repository: Repository, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    gray = model_repository.gray
    copy_version(root, gray)  # gray/tiny/1: good
    (root / "gray" / "tiny" / "config.json").write_text(json.dumps({"max_batch_size": 2}))

    corrupt = copy_version(root, gray, model="corrupt")
    (corrupt / ONNX_FILENAME).write_bytes(b"this is not a protobuf" * 10)
    _rewrite_hashes(corrupt)  # the hashes match; the graph does not load

    badsha = copy_version(root, gray, model="badsha")
    data = bytearray((badsha / ONNX_FILENAME).read_bytes())
    data[-1] ^= 0xFF
    (badsha / ONNX_FILENAME).write_bytes(bytes(data))

    badmanifest = copy_version(root, gray, model="badmanifest")
    raw = json.loads((badmanifest / MANIFEST_FILENAME).read_text())
    del raw["labels"]
    (badmanifest / MANIFEST_FILENAME).write_text(json.dumps(raw))

    missing = copy_version(root, gray, model="missing")
    (missing / ONNX_FILENAME).unlink()

    # A graph that loads but does not fit its manifest (32x32x3 graph, 24x20x1 manifest).
    wrong = copy_version(root, gray, model="wronggraph")
    shutil.copy(model_repository.fastnet / ONNX_FILENAME, wrong / ONNX_FILENAME)
    _rewrite_hashes(wrong)

    copy_version(root, gray, model="badconfig")
    (root / "gray" / "badconfig" / "config.json").write_text(json.dumps({"max_batch_size": 0}))

    copy_version(root, gray, model="notaversion")
    (root / "gray" / "notaversion" / "1").rename(root / "gray" / "notaversion" / "v1")

    (root / "Bad-Name").mkdir()
    (root / "gray" / ".tmp-export-123").mkdir()  # an export in progress: silently skipped
    return root


def test_bad_versions_are_reported_while_good_ones_serve(
    mixed_repository: Path, sample_images: list[bytes]
) -> None:
    with serve(mixed_repository) as live, live.client() as client:
        listing = ModelsResponse.model_validate(client.get("/models").json())
        prediction = client.post("/predict/gray/tiny", content=sample_images[0], headers=PNG)
        bad = client.post("/predict/gray/corrupt", content=sample_images[0], headers=PNG)
        ready = client.get("/readyz")
        metrics = client.get("/metrics").text

    assert [(m.dataset, m.model) for m in listing.models] == [("gray", "tiny")]
    assert listing.models[0].versions[0].batching.max_batch_size == 2  # config.json applied
    reported = {f.path: f.reason for f in listing.failures}
    assert set(reported) == set(EXPECTED_FAILURES)
    for path, fragment in EXPECTED_FAILURES.items():
        assert fragment in reported[path], (path, reported[path])
        assert str(mixed_repository) not in reported[path]  # no internal path

    assert prediction.status_code == 200
    assert bad.status_code == 404 and bad.json()["error"]["details"]["available"] == ["gray/tiny"]

    # Failed entries are listed but, by default, do not hold readiness back.
    assert ready.status_code == 200
    assert {f["path"] for f in ready.json()["failures"]} == set(EXPECTED_FAILURES)

    failures = {
        (s.labels["dataset"], s.labels["model"]): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "imgzoo_model_load_failures_total"
    }
    assert sum(failures.values()) == len(EXPECTED_FAILURES)
    assert failures[("gray", "corrupt")] == 1


def test_strict_readiness_counts_failed_versions(mixed_repository: Path) -> None:
    with serve(mixed_repository, readiness_strict=True) as live, live.client() as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert any("failed to load" in reason for reason in ready.json()["reasons"])


def test_empty_repository_starts_alive_but_not_ready(
    tmp_path: Path, sample_images: list[bytes]
) -> None:
    with serve(tmp_path) as live, live.client() as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        predict = client.post("/predict/a/b", content=sample_images[0], headers=PNG)
        listing = client.get("/models").json()
    assert ready.status_code == 503 and ready.json()["reasons"] == ["no model loaded"]
    assert predict.status_code == 404 and predict.json()["error"]["details"]["available"] == []
    assert listing == {"models": [], "failures": []}
