"""Naming rules of the model repository (DESIGN.md): `<dataset>/<model>/<version>`."""

import re

NAME_PATTERN = r"^[a-z0-9][a-z0-9_]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)


def is_valid_name(name: str) -> bool:
    """True when `name` may be a data set or model directory in the repository."""
    return bool(_NAME_RE.fullmatch(name))


def is_valid_version(text: str) -> bool:
    """True for a positive decimal integer without sign or leading zeros."""
    return text.isdigit() and not text.startswith("0")
