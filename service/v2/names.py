"""v2 model names: `<dataset>/<model>` of the repository is `<dataset>.<model>` on `/v2`.

Data set and model names match `^[a-z0-9][a-z0-9_]{0,63}$`, so neither holds a dot and the
mapping is one-to-one; a dot (unlike a slash) needs no escaping in a URL path segment.
"""

from __future__ import annotations

from imgzoo.names import is_valid_name, is_valid_version
from service.errors import BadRequest, ModelNotFound

SEPARATOR = "."


def v2_name(dataset: str, model: str) -> str:
    """The v2 model name of `<dataset>/<model>`."""
    return f"{dataset}{SEPARATOR}{model}"


def split_v2_name(name: str) -> tuple[str, str]:
    """`(dataset, model)` of a v2 model name; ModelNotFound when it cannot name a model."""
    dataset, dot, model = name.partition(SEPARATOR)
    if not dot or not is_valid_name(dataset) or not is_valid_name(model):
        raise ModelNotFound(f"unknown model '{_shown(name)}': v2 names are '<dataset>.<model>'")
    return dataset, model


def parse_version(text: str | None) -> int | None:
    """The version a path names (None: the default one); BadRequest for a non-number."""
    if text is None or text == "":
        return None
    if not is_valid_version(text):
        raise BadRequest(f"invalid model version '{_shown(text)}': a positive integer is expected")
    return int(text)


def _shown(text: str, limit: int = 100) -> str:
    """Client input echoed in a message: printable and bounded."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[:limit] + "..."
