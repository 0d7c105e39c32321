"""Loading pretrained weights into a zoo network: torchvision's ImageNet weights or a local file.

ImageNet weights are transferred layer by layer: a tensor is copied when the network has the
same name with the same shape, the first convolution is adapted to the number of input
channels, and everything else (a 3x3 small-input stem, a head for another number of classes)
keeps its fresh initialisation. A local file, in contrast, must fit exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch import nn

from imgzoo.errors import UserError

if TYPE_CHECKING:
    from models.registry import ModelSpec

log = logging.getLogger(__name__)

# Wrappers that prefix state-dict keys: DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# When a ResNet's 7x7 stem is replaced by a 3x3 one, the ImageNet statistics of the batch norm
# right after it describe the old convolution's output: drop them with it.
_STEM_FOLLOWERS = {"conv1.weight": "bn1."}


class WeightsError(UserError):
    """Weights that cannot be obtained, read, or loaded into the requested network."""


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-conv weight `[out, 3, k, k]` trained on RGB to `in_channels` inputs.

    Whatever the channel count, an input equal in every channel gets the response the RGB
    network gave it: for one channel the RGB filters are summed (a grey image with R = G = B
    looks as before); for a multiple of 3 they are tiled and scaled by 3 / C; otherwise each
    channel gets the RGB sum divided by C.
    """
    rgb = weight.shape[1]
    if in_channels == rgb:
        return weight
    if in_channels % rgb == 0:
        return weight.repeat(1, in_channels // rgb, 1, 1) * (rgb / in_channels)
    summed = weight.sum(dim=1, keepdim=True)
    return (summed / in_channels).repeat(1, in_channels, 1, 1)


def _first_conv_key(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    return None


def _download_imagenet(spec: ModelSpec) -> dict[str, torch.Tensor]:
    from torchvision.models import get_weight

    assert spec.imagenet_weights is not None
    url: str = get_weight(spec.imagenet_weights).url
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    filename = Path(urlparse(url).path).name
    try:
        # Through the module attribute, so the cache lookup and download stay one patchable call.
        state: dict[str, torch.Tensor] = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except (OSError, RuntimeError) as exc:
        reason = " ".join(str(getattr(exc, "reason", exc)).split()) or type(exc).__name__
        raise WeightsError(
            f"cannot get ImageNet weights for {spec.name} ({reason}); offline? put {filename} "
            f"from {url} into {cache_dir}, or pass a local state-dict file"
        ) from None
    return state


def transfer_state(
    model: nn.Module, source: Mapping[str, torch.Tensor], *, in_channels: int
) -> tuple[list[str], list[str]]:
    """Copy every tensor of `source` that fits `model`; return (loaded, skipped) key lists."""
    target = model.state_dict()
    first_conv = _first_conv_key(model)
    skipped: list[str] = []
    updates: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        if key not in target:
            skipped.append(key)
            continue
        value = tensor
        if key == first_conv and value.dim() == 4:
            value = adapt_input_channels(value, in_channels)
        if value.shape != target[key].shape:
            skipped.append(key)
            continue
        updates[key] = value
    for key, prefix in _STEM_FOLLOWERS.items():
        if key in skipped:
            for follower in [k for k in updates if k.startswith(prefix)]:
                del updates[follower]
                skipped.append(follower)
    loaded = sorted(updates)
    model.load_state_dict(updates, strict=False)
    return loaded, skipped


def load_imagenet_weights(model: nn.Module, spec: ModelSpec, *, in_channels: int) -> None:
    """Load torchvision's ImageNet weights for `spec` into `model` (cached, else downloaded)."""
    if spec.imagenet_weights is None:
        from models.registry import imagenet_models

        having = imagenet_models()
        raise WeightsError(
            f"model {spec.name!r} has no ImageNet weights; models with them: {', '.join(having)}"
        )
    state = _download_imagenet(spec)
    loaded, skipped = transfer_state(model, state, in_channels=in_channels)
    if not loaded:
        raise WeightsError(f"no ImageNet weights of {spec.imagenet_weights} fit {spec.name}")
    log.info(
        "%s: loaded %d ImageNet tensors (%s), kept %d fresh: %s",
        spec.name,
        len(loaded),
        spec.imagenet_weights,
        len(skipped),
        ", ".join(skipped[:8]) + (" ..." if len(skipped) > 8 else ""),
    )


def _extract_state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    # An imgzoo checkpoint (or any {"state_dict": ...} wrapper) holds the weights one level down.
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw:
        raise WeightsError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{path}: not a state dict (entry {key!r} is not a named tensor)")
        name = key
        for prefix in _WRAPPER_PREFIXES:
            name = name.removeprefix(prefix)
        state[name] = value
    return state


def _shape(tensor: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in tensor.shape) + "]"


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """None when `state` fits `model` exactly, else a one-line description of the mismatch."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [k for k in target if k in state and state[k].shape != target[k].shape]
    problems = []
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{len(mismatched)} with another shape (e.g. {k!r}: file {_shape(state[k])}, "
            f"network {_shape(target[k])})"
        )
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
    return "; ".join(problems) if problems else None


def load_local_weights(model: nn.Module, path: Path, *, model_name: str) -> None:
    """Load a local state dict (or imgzoo checkpoint) that must fit `model` exactly."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise WeightsError(f"{path}: not a readable PyTorch file ({type(exc).__name__})") from None
    state = _extract_state_dict(raw, path)
    problem = check_fits(model, state)
    if problem is not None:
        raise WeightsError(f"{path}: weights do not fit {model_name}: tensors {problem}")
    model.load_state_dict(state, strict=True)
    log.info("%s: loaded %d tensors from %s", model_name, len(state), path)
