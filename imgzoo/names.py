"""Naming rules of the model repository (DESIGN.md): `<dataset>/<model>/<version>`."""

import re
from collections.abc import Sequence

NAME_PATTERN = r"^[a-z0-9][a-z0-9_]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)


def is_valid_name(name: str) -> bool:
    """True when `name` may be a data set or model directory in the repository."""
    return bool(_NAME_RE.fullmatch(name))


def is_valid_version(text: str) -> bool:
    """True for a positive decimal integer without sign or leading zeros."""
    return text.isdigit() and not text.startswith("0")


def default_model_name(architectures: Sequence[str]) -> str:
    """A graph's model name: its architecture for one network, `<architecture>_x<k>` for k of
    one architecture, `ensemble_x<k>` for a mix."""
    if len(architectures) == 1:
        return architectures[0]
    kind = architectures[0] if len(set(architectures)) == 1 else "ensemble"
    return f"{kind}_x{len(architectures)}"
