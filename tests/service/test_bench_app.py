"""`imgzoo bench app`: the request path's CPU, measured in process through a zero-cost session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgzoo.cli import main
from service.bench.app_cpu import ZeroSession


class _Output:
    shape = ("batch", 10)


class _Inner:
    def get_outputs(self) -> list[_Output]:
        return [_Output()]


def test_the_zero_session_answers_zeros_of_the_batch_and_class_count() -> None:
    session = ZeroSession(_Inner())
    (logits,) = session.run(None, {"image": np.zeros((3, 32, 32, 3), np.uint8)})
    assert logits.shape == (3, 10) and logits.dtype == np.float32 and not logits.any()


def test_both_kinds_are_measured_and_answered_200(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "app", "--requests", "30", "--warmup", "3", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert "demo" in report["image"]
    assert [r["kind"] for r in report["results"]] == ["multipart", "raw"]
    for result in report["results"]:
        assert result["requests"] == 30
        # A real request path costs tens of µs at the very least, and far less than a second.
        assert 10 < result["cpu_us"] < 1e6 and result["wall_us"] > 0


def test_profile_prints_the_costliest_functions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "app", "--requests", "5", "--warmup", "1", "--kinds", "raw"]) == 0
    plain = capsys.readouterr().out
    assert "raw" in plain and "multipart" not in plain and "tottime" not in plain
    assert main(["bench", "app", "--requests", "5", "--warmup", "1", "--profile", "5"]) == 0
    profiled = capsys.readouterr().out
    assert "tottime" in profiled and "cumtime" in profiled


def test_an_image_the_service_refuses_fails_the_benchmark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every timed answer must be a 200: a benchmark of error answers would measure nothing."""
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    argv = ["bench", "app", "--images", str(tmp_path), "--requests", "3", "--warmup", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "multipart requests answered 422" in err and "Traceback" not in err


def test_an_unknown_kind_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "app", "--kinds", "multipart,v2"]) == 2
    assert "unknown kind 'v2'" in capsys.readouterr().err
