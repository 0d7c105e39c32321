"""`imgzoo bench train`: measured figures and machine description."""

from __future__ import annotations

import json

import pytest

from imgzoo.cli import main


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
    assert data["machine"]["torch"] and data["machine"]["device"] == "cpu"


def test_bench_unknown_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "train", "--dataset", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert "imgzoo bench: error: unknown data set 'imagenet'" in err
    assert "Traceback" not in err
