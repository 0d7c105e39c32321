"""`imgzoo serve` as a real process: starts, serves, stops cleanly on SIGTERM."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.service.conftest import Repository


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_command_runs_until_sigterm(
    model_repository: Repository, tmp_path: Path, sample_images: list[bytes]
) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(model_repository.gray, repository / "gray" / "tiny" / "1")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "imgzoo", "serve", "--repository", str(repository),
         "--port", str(port), "--providers", "cpu", "--threads", "1", "--max-batch-size", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        response = httpx.post(
            f"{url}/predict/gray/tiny",
            content=sample_images[0],
            headers={"content-type": "image/png"},
        )
        assert response.status_code == 200
        assert response.json()["batch_size"] == 1
        models = httpx.get(f"{url}/models").json()
        assert models["models"][0]["versions"][0]["batching"]["max_batch_size"] == 4
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    # uvicorn finishes the graceful shutdown, then re-raises SIGTERM (exit status 143).
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "execution provider: CPUExecutionProvider (requested cpu" in output
    assert f"imgzoo serving {repository} on http://127.0.0.1:{port}" in output


def test_serve_command_refuses_a_missing_repository_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imgzoo", "serve", "--repository", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"imgzoo serve: error: model repository {tmp_path / 'absent'} is not a directory"
    ]


def test_serve_command_refuses_invalid_flags(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imgzoo", "serve", "--repository", str(tmp_path),
         "--max-batch-size", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "invalid setting max_batch_size" in result.stderr
    assert "Traceback" not in result.stderr
