"""The name -> builder registry and `get_model`'s argument checks."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import models
from imgzoo.errors import UserError
from models import UnknownModelError, get_model, list_models, register_model, registry

EXPECTED_ZOO = {"fastnet", "resnet18", "resnet50", "resnet_small", "vgg19"}


def test_list_models_is_sorted_and_holds_the_zoo() -> None:
    names = list_models()
    assert names == sorted(names)
    assert set(names) >= EXPECTED_ZOO


@pytest.mark.parametrize("name", sorted(EXPECTED_ZOO))
def test_duplicate_registration_raises(name: str) -> None:
    before = dict(registry._REGISTRY)

    def builder(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        return nn.Linear(in_channels, num_classes)

    with pytest.raises(ValueError, match="already registered"):
        register_model(name)(builder)
    assert before == registry._REGISTRY  # the original builder is kept


def test_register_new_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("tiny_linear")
    def tiny(*, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        """A flatten + linear layer."""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    assert "tiny_linear" in list_models()
    model = get_model("tiny_linear", num_classes=4, in_channels=1, image_size=16)
    assert model(torch.zeros(3, 1, 16, 16)).shape == (3, 4)
    assert registry.get_spec("tiny_linear").description == "A flatten + linear layer."


@pytest.mark.parametrize("bad", ["ResNet", "", "my-net", "_x", "a" * 65])
def test_register_rejects_invalid_names(bad: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        register_model(bad)


def test_unknown_model_is_a_user_error_naming_known_models() -> None:
    with pytest.raises(UserError) as info:
        get_model("resnet19", num_classes=10)
    assert isinstance(info.value, UnknownModelError)
    message = str(info.value)
    assert "\n" not in message
    assert "'resnet19'" in message
    for name in list_models():
        assert name in message
    assert "did you mean 'resnet18'" in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 10, "in_channels": 0}, "in_channels"),
        ({"num_classes": 10, "image_size": 8}, "image_size"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs: dict[str, int], fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        get_model("fastnet", **kwargs)


def test_vgg_needs_room_for_its_pools() -> None:
    with pytest.raises(UserError, match="VGG needs image_size >= 32"):
        get_model("vgg19", num_classes=10, image_size=16)


def test_builds_are_independent() -> None:
    a = get_model("fastnet", num_classes=10)
    b = get_model("fastnet", num_classes=10)
    assert a is not b
    assert a.state_dict().keys() == b.state_dict().keys()
    assert any(not torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_package_exports() -> None:
    assert set(models.__all__) == {
        "get_model",
        "register_model",
        "list_models",
        "count_parameters",
        "count_flops",
        "UnknownModelError",
    }
    with pytest.raises(AttributeError):
        _ = models.no_such_name  # type: ignore[attr-defined]


def test_cli_and_registry_import_without_torch() -> None:
    code = (
        "import sys, models, models.cli, models.registry\n"
        "from models import UnknownModelError\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
