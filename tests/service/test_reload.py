"""Hot model management: reload, poll, load / unload, failures, and no lost request on a swap."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgzoo.manifest import MANIFEST_FILENAME, ONNX_FILENAME
from service.core import Service
from service.errors import ModelNotReady, VersionNotFound
from service.schemas import ModelsResponse, ReloadResponse
from service.settings import Settings
from tests.service.conftest import (
    Controls,
    Repository,
    assert_matches,
    controlled_factory,
    copy_version,
    offline_probabilities,
    serve,
)

PNG = {"content-type": "image/png"}
ADMIN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def repo(model_repository: Repository, tmp_path: Path) -> Path:
    """A private repository holding gray/tiny version 1 (small and fast to load)."""
    root = tmp_path / "repository"
    copy_version(root, model_repository.gray)
    return root


def _reload(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 200, response.text
    return ReloadResponse.model_validate(response.json()).model_dump()


def _served_version(client: httpx.Client, image: bytes, model: str = "tiny") -> int:
    response = client.post(f"/predict/gray/{model}", content=image, headers=PNG)
    assert response.status_code == 200, response.text
    version: int = response.json()["version"]
    return version


def _versions(client: httpx.Client) -> dict[str, list[int]]:
    listing = ModelsResponse.model_validate(client.get("/models").json())
    return {f"{m.dataset}/{m.model}": [v.version for v in m.versions] for m in listing.models}


def _load_failures(client: httpx.Client) -> dict[tuple[str, str], float]:
    return {
        (s.labels["dataset"], s.labels["model"]): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == "imgzoo_model_load_failures_total"
    }


def _replace_in_place(version_dir: Path, source: Path) -> None:
    """Swap a version directory for a fresh copy of `source`, the way an export does."""
    staging = version_dir.parent / f".staging-{version_dir.name}"
    shutil.copytree(source, staging)
    old = version_dir.parent / f".old-{version_dir.name}"
    version_dir.rename(old)
    staging.rename(version_dir)
    shutil.rmtree(old)


def test_new_versions_and_models_appear_and_leave_without_restart(
    repo: Path, model_repository: Repository, sample_images: list[bytes]
) -> None:
    image = sample_images[0]
    with serve(repo, admin_token=ADMIN) as live, live.client() as client:
        assert _served_version(client, image) == 1
        assert _reload(client)["unchanged"] == 1  # nothing new: nothing reloaded

        copy_version(repo, model_repository.gray, version=2)
        copy_version(repo, model_repository.gray, model="tiny_b")
        report = _reload(client)
        assert report["added"] == ["gray/tiny/2", "gray/tiny_b/1"]
        assert report["unchanged"] == 1 and report["removed"] == report["failed"] == []
        assert _versions(client) == {"gray/tiny": [1, 2], "gray/tiny_b": [1]}
        assert _served_version(client, image) == 2  # the highest version serves by default
        assert _served_version(client, image, "tiny_b") == 1

        shutil.rmtree(repo / "gray" / "tiny" / "2")
        shutil.rmtree(repo / "gray" / "tiny_b")
        report = _reload(client)
        assert report["removed"] == ["gray/tiny/2", "gray/tiny_b/1"]
        assert _versions(client) == {"gray/tiny": [1]}
        assert _served_version(client, image) == 1
        gone = client.post("/predict/gray/tiny_b", content=image, headers=PNG)
        assert gone.status_code == 404


def test_a_corrupt_version_is_refused_and_the_old_keeps_answering(
    repo: Path, model_repository: Repository, sample_images: list[bytes]
) -> None:
    image = sample_images[1]
    reference = offline_probabilities(model_repository.gray, image)
    with serve(repo, admin_token=ADMIN) as live, live.client() as client:
        # A new version whose model file does not match its manifest's sha256.
        bad = copy_version(repo, model_repository.gray, version=2)
        data = bytearray((bad / ONNX_FILENAME).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / ONNX_FILENAME).write_bytes(bytes(data))
        report = _reload(client)
        assert report["added"] == []
        assert [f["path"] for f in report["failed"]] == ["gray/tiny/2"]
        assert "sha256 differs" in report["failed"][0]["reason"]

        response = client.post("/predict/gray/tiny", content=image, headers=PNG)
        assert response.status_code == 200 and response.json()["version"] == 1
        assert_matches(response.json()["predictions"], reference, 5)
        listing = client.get("/models/gray/tiny").json()
        assert [f["path"] for f in listing["failures"]] == ["gray/tiny/2"]
        assert _load_failures(client) == {("gray", "tiny"): 1}

        # The same broken files are not retried (nor counted) on every reload.
        assert _reload(client)["failed"] == []
        assert _load_failures(client) == {("gray", "tiny"): 1}

        # The serving version's own files broken in place (bad manifest): it keeps serving
        # from memory, and the failure is reported.
        manifest = repo / "gray" / "tiny" / "1" / MANIFEST_FILENAME
        manifest.write_text(manifest.read_text().replace('"labels"', '"labelz"'))
        report = _reload(client)
        assert {f["path"] for f in report["failed"]} == {"gray/tiny/1"}
        assert "invalid manifest" in report["failed"][0]["reason"]
        response = client.post("/predict/gray/tiny", content=image, headers=PNG)
        assert response.status_code == 200 and response.json()["version"] == 1
        assert_matches(response.json()["predictions"], reference, 5)
        assert _load_failures(client) == {("gray", "tiny"): 2}

        # Fixed files load again and clear the failures.
        shutil.rmtree(bad)
        _replace_in_place(repo / "gray" / "tiny" / "1", model_repository.gray)
        report = _reload(client)
        assert report["replaced"] == ["gray/tiny/1"] and report["failed"] == []
        assert client.get("/models").json()["failures"] == []


def test_a_vanished_repository_changes_nothing(repo: Path, sample_images: list[bytes]) -> None:
    with serve(repo, admin_token=ADMIN) as live, live.client() as client:
        moved = repo.with_name("elsewhere")
        repo.rename(moved)
        try:
            response = client.post("/admin/reload", headers=AUTH)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "repository_unavailable"
            assert str(repo) not in response.text  # no internal path
            assert _served_version(client, sample_images[0]) == 1
            assert _versions(client) == {"gray/tiny": [1]}
        finally:
            moved.rename(repo)
        assert _reload(client)["unchanged"] == 1
        assert client.get("/readyz").status_code == 200


def test_the_poll_interval_picks_up_new_versions(
    repo: Path, model_repository: Repository, sample_images: list[bytes]
) -> None:
    with serve(repo, reload_interval_s=0.2) as live, live.client() as client:
        copy_version(repo, model_repository.gray, version=3)
        deadline = time.monotonic() + 60
        while _versions(client) != {"gray/tiny": [1, 3]}:
            assert time.monotonic() < deadline, "the poller never loaded version 3"
            time.sleep(0.1)
        assert _served_version(client, sample_images[0]) == 3


def test_load_and_unload_a_model(
    repo: Path, model_repository: Repository, sample_images: list[bytes]
) -> None:
    image = sample_images[2]
    with serve(repo, admin_token=ADMIN) as live, live.client() as client:
        unload = client.post("/admin/models/gray/tiny/unload", headers=AUTH)
        assert unload.status_code == 200 and unload.json()["status"] == "unloaded"
        assert client.post("/predict/gray/tiny", content=image, headers=PNG).status_code == 404
        _reload(client)  # an unloaded model stays unloaded across reloads
        assert _versions(client) == {}
        again = client.post("/admin/models/gray/tiny/unload", headers=AUTH)
        assert again.status_code == 404

        load = client.post("/admin/models/gray/tiny/load", headers=AUTH)
        assert load.status_code == 200, load.text
        assert [v["version"] for v in load.json()["versions"]] == [1]
        assert _served_version(client, image) == 1

        missing = client.post("/admin/models/gray/nope/load", headers=AUTH)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

        broken = copy_version(repo, model_repository.gray, model="broken")
        (broken / ONNX_FILENAME).unlink()
        failed = client.post("/admin/models/gray/broken/load", headers=AUTH)
        assert failed.status_code == 400
        body = failed.json()["error"]
        assert body["code"] == "model_load_failed"
        assert body["details"]["failures"][0]["path"] == "gray/broken/1"


def test_no_request_is_lost_across_swaps_under_concurrent_load(
    repo: Path, model_repository: Repository, sample_images: list[bytes]
) -> None:
    """1,000 requests from 16 clients while three reloads swap versions: all answer, all match."""
    images = sample_images[:8]
    references = [offline_probabilities(model_repository.gray, image) for image in images]
    controls = Controls()
    controls.delay_s = 0.01  # batches take a little while, so requests queue on the old version
    total, clients = 1000, 16
    results: list[tuple[int, dict[str, Any], int]] = []
    lock = threading.Lock()
    counter = iter(range(total))

    with (
        # One session per version, so that loading a version under load stays quick and
        # each swap below happens while requests are still coming.
        serve(
            repo, session_factory=controlled_factory(controls), admin_token=ADMIN, sessions=1
        ) as live,
        live.client() as admin,
    ):

        def client_loop() -> None:
            with live.client() as client:
                while True:
                    with lock:
                        index = next(counter, None)
                    if index is None:
                        return
                    image = index % len(images)
                    response = client.post("/predict/gray/tiny", content=images[image], headers=PNG)
                    body = response.json()
                    with lock:
                        results.append((response.status_code, body, image))

        def progress() -> int:
            with lock:
                return len(results)

        def wait_for(done: int) -> None:
            deadline = time.monotonic() + 120
            while progress() < done and time.monotonic() < deadline:
                time.sleep(0.005)

        with ThreadPoolExecutor(clients) as pool:
            futures = [pool.submit(client_loop) for _ in range(clients)]
            wait_for(20)
            _replace_in_place(repo / "gray" / "tiny" / "1", model_repository.gray)
            assert _reload(admin)["replaced"] == ["gray/tiny/1"]  # v1 retired under load
            wait_for(progress() + 50)
            copy_version(repo, model_repository.gray, version=2)
            assert _reload(admin)["added"] == ["gray/tiny/2"]  # traffic moves to v2
            wait_for(progress() + 50)
            shutil.rmtree(repo / "gray" / "tiny" / "2")
            assert _reload(admin)["removed"] == ["gray/tiny/2"]  # v2 retired under load
            for future in futures:
                future.result()
        assert progress() == total
        served = {body.get("version") for _, body, _ in results}
        counters = client_counters(admin)

    failures = [(status, body) for status, body, _ in results if status != 200]
    assert not failures, failures[:3]
    for _, body, image in results:
        assert_matches(body["predictions"], references[image], 5)
    assert served == {1, 2}  # both versions really answered during the run
    assert counters == {1: counters[1]}  # only v1 remains, retired ones are gone


def test_a_request_resolved_before_its_version_left_follows_what_it_asked_for(
    repo: Path, model_repository: Repository, sample_images: list[bytes]
) -> None:
    """The race behind a lost request: a request resolves the latest version, a reload
    removes that version, then the request runs. Asked for "the latest", it runs on the
    latest one now; asked for that version number, it gets 404 (the number is gone)."""
    image = sample_images[0]
    reference = offline_probabilities(model_repository.gray, image)
    copy_version(repo, model_repository.gray, version=2)
    settings = Settings(repository=repo, providers="cpu", intra_op_threads=1, decode_threads=1)

    async def scenario() -> tuple[int, dict[str, Any], str]:
        service = Service(settings)
        await service.start()
        try:
            plane = service.dataplane
            latest = plane.resolve("gray", "tiny", None)
            pinned = plane.resolve("gray", "tiny", 2)
            assert latest.version == pinned.version == 2
            shutil.rmtree(repo / "gray" / "tiny" / "2")
            assert (await service.registry.reload()).removed == ["gray/tiny/2"]
            assert latest.retired
            follows = await plane.predict(
                latest, [image], top_k=5, request_id="r1", started=0.0, pinned=False
            )
            with pytest.raises(VersionNotFound) as refused:
                await plane.predict(
                    pinned, [image], top_k=5, request_id="r2", started=0.0, pinned=True
                )
            return follows.body["version"], follows.body, refused.value.message
        finally:
            await service.stop()

    version, body, message = asyncio.run(scenario())
    assert version == 1
    assert_matches(body["predictions"], reference, 5)
    assert message == "gray/tiny has no version 2"


def test_pixels_checked_for_a_version_that_left_are_not_run_on_another_input(
    repo: Path, model_repository: Repository
) -> None:
    """/v2 checks raw pixels against the version it resolved. When that version leaves
    and the latest one now takes another input, the request gets a retryable 503 instead
    of reaching (and failing) a batch of the other version."""
    copy_version(repo, model_repository.fastnet, dataset="gray", model="tiny", version=2)
    settings = Settings(repository=repo, providers="cpu", intra_op_threads=1, decode_threads=1)

    async def scenario() -> tuple[tuple[int, ...], ModelNotReady, int]:
        service = Service(settings)
        await service.start()
        try:
            plane = service.dataplane
            latest = plane.resolve("gray", "tiny", None)
            spec = latest.manifest.input
            pixels = np.zeros((spec.height, spec.width, spec.channels), dtype=np.uint8)
            shutil.rmtree(repo / "gray" / "tiny" / "2")
            assert (await service.registry.reload()).removed == ["gray/tiny/2"]
            with pytest.raises(ModelNotReady) as refused:
                await plane.infer(latest, [pixels], pinned=False)
            now = plane.resolve("gray", "tiny", None)
            return pixels.shape, refused.value, now.batcher.queue_depth
        finally:
            await service.stop()

    shape, refused, queued = asyncio.run(scenario())
    assert shape == (32, 32, 3)  # the 3-channel 32x32 input of version 2, not v1's 24x20x1
    assert refused.status_code == 503
    assert refused.headers == {"Retry-After": "1"}
    assert refused.message.startswith("gray/tiny was replaced by version 1, which takes another")
    assert queued == 0


def client_counters(client: httpx.Client) -> dict[int, int]:
    info = client.get("/models/gray/tiny").json()
    return {v["version"]: v["counters"]["requests"] for v in info["versions"]}
