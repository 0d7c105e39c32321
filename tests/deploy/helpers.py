"""Shared paths and loaders of the deploy tests (quick: no Docker engine, no network)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# `${VAR:-default}` / `${VAR}` in compose files.
_SUBST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def with_defaults(value: str, env: dict[str, str] | None = None) -> str:
    """A compose string with `${VAR:-default}` resolved from `env`, else the default."""
    env = env or {}
    return _SUBST.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)


def load_script_module(name: str) -> ModuleType:
    """Import `deploy/<name>.py` (a standalone script, not a package module)."""
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
