"""`imgzoo models`."""

from __future__ import annotations

import json

import pytest
import torch

from imgzoo.cli import main
from models import count_flops, count_parameters, get_model, list_models
from models.cli import INPUT_SHAPES, format_flops, format_parameters


def test_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in data["models"]}
    assert list(rows) == list_models()
    expected_inputs = [
        ("cifar10", 3, 32, 10),
        ("fer2013", 1, 48, 7),
        ("butterfly", 3, 64, 100),
        ("butterfly", 3, 224, 100),
    ]
    for row in rows.values():
        got = [(i["dataset"], i["channels"], i["size"], i["num_classes"]) for i in row["inputs"]]
        assert got == expected_inputs
        assert row["description"]
        assert all(i["parameters"] > 100_000 and i["flops"] > 10**8 for i in row["inputs"])
    assert rows["resnet18"]["imagenet_weights"] is True
    assert rows["fastnet"]["imagenet_weights"] is False
    # The numbers are those of the real networks.
    fer = rows["resnet_small"]["inputs"][1]
    with torch.device("meta"):
        model = get_model("resnet_small", num_classes=7, in_channels=1, image_size=48)
    assert fer["parameters"] == count_parameters(model)
    assert fer["flops"] == count_flops(model, in_channels=1, image_size=48)


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "fastnet", "resnet_small"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(shape.label in lines[0] for shape in INPUT_SHAPES)
    rows = {line.split()[0]: line for line in lines[1:3]}
    assert set(rows) == {"fastnet", "resnet_small"}
    with torch.device("meta"):
        fastnet = get_model("fastnet", num_classes=10)
    cifar = f"{format_parameters(count_parameters(fastnet))} / "
    cifar += format_flops(count_flops(fastnet, in_channels=3, image_size=32))
    assert cifar in rows["fastnet"]
    assert rows["fastnet"].split()[1] == "2.0M"


def test_models_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "nosuchnet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgzoo models: error: unknown model 'nosuchnet'")
    assert "Traceback" not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("count", "text"), [(2_034_000, "2.0M"), (11_170_000, "11.2M"), (52_100, "52.1K")]
)
def test_format_parameters(count: int, text: str) -> None:
    assert format_parameters(count) == text


@pytest.mark.parametrize(("flops", "text"), [(410_000_000, "0.41G"), (39_019_000_000, "39.02G")])
def test_format_flops(flops: int, text: str) -> None:
    assert format_flops(flops) == text
