"""`imgzoo bench train`: measured figures and machine description."""

from __future__ import annotations

import json

import pytest

from imgzoo.cli import main
from training.host import cpu_flags, cpu_model, loaded_malloc


def test_bench_train_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "bench",
        "train",
        "--models",
        "fastnet",
        "resnet_small",
        "--dataset",
        "fer2013",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "4",
        "--json",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in data["results"]] == ["fastnet", "resnet_small"]
    for r in data["results"]:
        assert (r["channels"], r["image_size"], r["batch_size"]) == (1, 48, 4)
        assert r["images_per_s"] == pytest.approx(4 / r["seconds"])
        assert r["parameters"] > 100_000
        assert r["compiled"] is False and r["warmup_seconds"] < 0.05  # no warmup step
    assert data["machine"]["torch"] and data["machine"]["device"] == "cpu"
    assert data["machine"]["malloc"] == loaded_malloc()
    assert data["machine"]["cpu_flags"] == cpu_flags()
    assert data["machine"]["cpu_model"] == cpu_model()


def test_bench_unknown_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "train", "--dataset", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "imgzoo bench: error: unknown data set 'imagenet'" in err
    assert "Traceback" not in err


def test_bench_compile_runs_the_steps_through_torch_compile(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The steps go through what torch.compile returns (a real compile takes minutes on two
    cores, so a recording stand-in takes its place), and the warmup time is reported."""
    import torch

    compiled: list[torch.nn.Module] = []
    calls = 0

    def fake_compile(model: torch.nn.Module) -> object:
        compiled.append(model)

        def forward(x: torch.Tensor) -> torch.Tensor:
            nonlocal calls
            calls += 1
            out: torch.Tensor = model(x)
            return out

        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    argv = ["bench", "train", "--models", "fastnet", "--dataset", "demo", "--image-size", "16"]
    argv += ["--steps", "2", "--warmup", "1", "--batch-size", "2", "--compile", "--json"]
    assert main([*argv, "--device", "cpu"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert len(compiled) == 1 and calls == 3  # one warmup step + two timed ones
    assert result["compiled"] is True and result["warmup_seconds"] > 0


def test_bench_compile_needs_a_warmup_step(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "train", "--models", "fastnet", "--compile", "--warmup", "0"]
    assert main([*argv, "--device", "cpu"]) == 2
    assert "--warmup >= 1" in capsys.readouterr().err


def test_bench_records_the_gemm_weight_grad_side(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "train", "--models", "fastnet", "--steps", "1", "--warmup", "0"]
    argv += ["--batch-size", "2", "--gemm-weight-grad-side", "8", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "weight gradients as one GEMM for convolution outputs up to 8 px" in out
    assert main([*argv, "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["gemm_weight_grad_side"] == 8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gemm-weight-grad-side", "-1"], "--gemm-weight-grad-side must be >= 0"),
        (["--gemm-weight-grad-side", "8", "--compile"], "does not combine with --compile"),
    ],
)
def test_bench_gemm_weight_grad_side_errors(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "train", "--models", "fastnet", "--device", "cpu", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
