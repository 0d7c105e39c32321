import argparse
from typing import Any


def register(subparsers: "argparse._SubParsersAction[Any]") -> None:
    """imgzoo demo (filled in later)."""
