"""The name -> builder registry of the zoo, and `get_model`, the one way to build a network.

Builders register themselves with `@register_model(name)` when their module is imported; the
lookup functions import the built-in architecture modules first, so `get_model` works whichever
module a caller imported.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from imgzoo.errors import UserError
from imgzoo.names import is_valid_name

if TYPE_CHECKING:
    from torch import nn

# Modules whose import registers the built-in architectures.
_BUILTIN_MODULES = ("models.resnet", "models.vgg", "models.resnet_small", "models.fastnet")

# Below this, the last stage of the nets would have no pixels left.
MIN_IMAGE_SIZE = 16

IMAGENET = "imagenet"
"""The `weights` value that asks for torchvision's ImageNet-pretrained weights."""


class ModelBuilder(Protocol):
    """What `register_model` decorates: keyword-only arguments, returns a fresh module."""

    def __call__(self, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module: ...


BuilderT = TypeVar("BuilderT", bound=ModelBuilder)


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture.

    imagenet_weights names torchvision weights (`get_weight` syntax, e.g.
    "ResNet18_Weights.IMAGENET1K_V1") whose layers fit this architecture, or None.
    """

    name: str
    builder: ModelBuilder
    imagenet_weights: str | None = None

    @property
    def description(self) -> str:
        """First line of the builder's docstring."""
        doc = (self.builder.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[str, ModelSpec] = {}


class UnknownModelError(UserError):
    """A model name that no builder is registered under."""

    def __init__(self, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        super().__init__(f"unknown model {name!r}{hint}; known models: {', '.join(known)}")
        self.name = name
        self.known = known


def register_model(
    name: str, *, imagenet_weights: str | None = None
) -> Callable[[BuilderT], BuilderT]:
    """Decorator registering a builder `(*, num_classes, in_channels, image_size) -> nn.Module`.

    Raises ValueError for a name already taken or one that is not a valid repository name.
    """
    if not is_valid_name(name):
        raise ValueError(f"model name {name!r} must match ^[a-z0-9][a-z0-9_]{{0,63}}$")

    def decorate(builder: BuilderT) -> BuilderT:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, builder, imagenet_weights)
        return builder

    return decorate


def _load_builtin_models() -> None:
    for module in _BUILTIN_MODULES:
        import_module(module)


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load_builtin_models()
    return sorted(_REGISTRY)


def imagenet_models() -> list[str]:
    """Names of the registered models that have ImageNet-pretrained weights, sorted."""
    _load_builtin_models()
    return sorted(n for n, spec in _REGISTRY.items() if spec.imagenet_weights)


def get_spec(name: str) -> ModelSpec:
    """The registration of `name`; UnknownModelError naming the known models otherwise."""
    _load_builtin_models()
    spec = _REGISTRY.get(name)
    if spec is None:
        raise UnknownModelError(name, sorted(_REGISTRY))
    return spec


def _check_arguments(num_classes: int, in_channels: int, image_size: int) -> None:
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    if in_channels < 1:
        raise UserError(f"in_channels must be at least 1, got {in_channels}")
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {image_size}")


def get_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    weights: str | Path | None = None,
) -> nn.Module:
    """Build the registered network `name` for square `image_size` inputs.

    weights: None (fresh initialisation); "imagenet" (torchvision's ImageNet-pretrained
    weights where the model has them, adapted to `in_channels`; layers whose shape differs,
    such as a small-input stem or the head, keep their fresh initialisation); or the path of a
    local state dict (or imgzoo checkpoint) that must fit the network exactly.
    Bad names, arguments or weight files raise a `UserError` subclass with a one-line message.
    """
    spec = get_spec(name)
    _check_arguments(num_classes, in_channels, image_size)
    model = spec.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if weights is None:
        return model

    from models import weights as weight_loading

    if isinstance(weights, str) and weights == IMAGENET:
        weight_loading.load_imagenet_weights(model, spec, in_channels=in_channels)
    else:
        weight_loading.load_local_weights(model, Path(weights), model_name=name)
    return model
