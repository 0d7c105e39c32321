"""Pretrained weights: local state-dict files and torchvision's ImageNet weights (never fetched)."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from imgzoo.errors import UserError
from models import get_model, list_models
from models.registry import get_spec, imagenet_models
from models.weights import WeightsError, adapt_input_channels, transfer_state

# Our model -> the torchvision builder whose ImageNet weights it takes.
TORCHVISION_TWINS = {"resnet18": "resnet18", "resnet50": "resnet50", "vgg19": "vgg19_bn"}
HEAD_PREFIXES = ("fc.", "classifier.")


def _perturb_buffers(model: nn.Module) -> None:
    """Non-default BN statistics, so a round trip must carry buffers too."""
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.add_(torch.rand_like(buffer))


@pytest.mark.parametrize("name", list_models())
def test_local_weights_round_trip(name: str, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"num_classes": 7, "in_channels": 1, "image_size": 32}
    trained = get_model(name, **kwargs).eval()
    _perturb_buffers(trained)
    path = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), path)
    loaded = get_model(name, **kwargs, weights=path).eval()
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), trained(images), rtol=0, atol=0)


def test_local_weights_accept_checkpoints_and_wrapper_prefixes(tmp_path: Path) -> None:
    trained = get_model("fastnet", num_classes=10).eval()
    state = {f"module._orig_mod.{k}": v for k, v in trained.state_dict().items()}
    path = tmp_path / "best.pt"
    torch.save({"format": "imgzoo-checkpoint", "state_dict": state, "epoch": 3}, path)
    loaded = get_model("fastnet", num_classes=10, weights=str(path)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), trained(images), rtol=0, atol=0)


def test_local_weights_of_another_head_are_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "ten.pt"
    torch.save(get_model("fastnet", num_classes=10).state_dict(), path)
    with pytest.raises(UserError) as info:
        get_model("fastnet", num_classes=7, weights=path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "'head.weight': file [10, 256], network [7, 256]" in message


def test_local_weights_of_another_architecture_are_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(get_model("resnet18", num_classes=10).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        get_model("resnet_small", num_classes=10, weights=path)
    message = str(info.value)
    assert "\n" not in message
    assert "do not fit resnet_small" in message
    assert "missing" in message
    assert "unexpected" in message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no such weights file"),
        (b"not a torch file", "not a readable PyTorch file"),
        ([1, 2, 3], "not a state dict"),
        ({"conv.weight": "text"}, "not a named tensor"),
    ],
)
def test_bad_weight_files(content: object, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=fragment):
        get_model("fastnet", num_classes=10, weights=path)


def test_imagenet_offline_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls: list[str] = []

    def offline(url: str, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as info:
        get_model("resnet18", num_classes=10, weights="imagenet")
    message = str(info.value)
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert "\n" not in message
    assert "cannot get ImageNet weights for resnet18" in message
    assert "Temporary failure in name resolution" in message
    assert "resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


def test_imagenet_for_a_model_without_them(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not try to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    with pytest.raises(WeightsError, match="no ImageNet weights; models with them: resnet18"):
        get_model("fastnet", num_classes=10, weights="imagenet")


def test_imagenet_models_are_the_torchvision_twins() -> None:
    assert set(imagenet_models()) == set(TORCHVISION_TWINS)
    for name, twin in TORCHVISION_TWINS.items():
        spec = get_spec(name)
        assert spec.imagenet_weights is not None
        weights = torchvision.models.get_weight(spec.imagenet_weights)
        with torch.device("meta"):
            reference = torchvision.models.get_model(twin)
        # The weights enum describes exactly the torchvision network we transfer from.
        assert weights.meta["num_params"] == sum(p.numel() for p in reference.parameters())


# Meta tensors carry shapes only; torch notes that copying into them does nothing.
@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")
@pytest.mark.parametrize("name", sorted(TORCHVISION_TWINS))
@pytest.mark.parametrize(("in_channels", "image_size"), [(3, 224), (1, 224), (1, 48)])
def test_imagenet_layout_transfers_all_but_head_and_small_stem(
    name: str, in_channels: int, image_size: int
) -> None:
    with torch.device("meta"):
        source = torchvision.models.get_model(TORCHVISION_TWINS[name]).state_dict()
        model = get_model(name, num_classes=10, in_channels=in_channels, image_size=image_size)
    loaded, skipped = transfer_state(model, source, in_channels=in_channels)
    expected_skips = {k for k in source if k.startswith(HEAD_PREFIXES)}
    if name.startswith("resnet") and image_size <= 64:
        expected_skips |= {k for k in source if k == "conv1.weight" or k.startswith("bn1.")}
    assert set(skipped) == expected_skips
    assert set(loaded) == set(source) - expected_skips


def test_imagenet_weights_are_adapted_not_fetched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    imagenet = torchvision.models.resnet18()
    _perturb_buffers(imagenet)
    source = imagenet.state_dict()
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: source)

    gray = get_model("resnet18", num_classes=10, in_channels=1, image_size=224, weights="imagenet")
    state = gray.state_dict()
    torch.testing.assert_close(state["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(state["layer3.1.conv2.weight"], source["layer3.1.conv2.weight"])
    torch.testing.assert_close(state["bn1.running_var"], source["bn1.running_var"])
    assert state["fc.weight"].shape == (10, 512)

    small = get_model("resnet18", num_classes=10, in_channels=3, image_size=32, weights="imagenet")
    state = small.state_dict()
    assert state["conv1.weight"].shape == (64, 3, 3, 3)
    assert not torch.equal(state["bn1.running_var"], source["bn1.running_var"])
    torch.testing.assert_close(state["layer1.0.conv1.weight"], source["layer1.0.conv1.weight"])


def test_adapt_input_channels() -> None:
    weight = torch.randn(8, 3, 3, 3)
    assert adapt_input_channels(weight, 3) is weight
    gray = adapt_input_channels(weight, 1)
    torch.testing.assert_close(gray, weight.sum(1, keepdim=True))
    # A constant input gives the same response whatever the channel count.
    for channels in (1, 2, 4, 6):
        adapted = adapt_input_channels(weight, channels)
        assert adapted.shape == (8, channels, 3, 3)
        torch.testing.assert_close(adapted.sum(dim=(1, 2, 3)), weight.sum(dim=(1, 2, 3)))
