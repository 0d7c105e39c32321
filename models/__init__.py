"""The model zoo: network definitions and the name -> builder registry (torch only).

    from models import get_model, list_models
    net = get_model("fastnet", num_classes=10, in_channels=3, image_size=32)

The public names are imported on first use: `imgzoo` imports `models.cli` to build its
parser, and that must not pull in torch (the serving install has none).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.complexity import count_flops, count_parameters
    from models.registry import UnknownModelError, get_model, list_models, register_model

__all__ = [
    "UnknownModelError",
    "count_flops",
    "count_parameters",
    "get_model",
    "list_models",
    "register_model",
]

_HOMES = {
    "UnknownModelError": "models.registry",
    "get_model": "models.registry",
    "list_models": "models.registry",
    "register_model": "models.registry",
    "count_flops": "models.complexity",
    "count_parameters": "models.complexity",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(import_module(home), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
