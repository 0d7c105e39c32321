"""`imgzoo` command line: one parser, subcommands contributed by each part.

Each part has a `cli` module with `register(subparsers)` that adds its subcommands and sets
`func` on them. Those modules import nothing heavy at import time, so `imgzoo --help` is fast
and the serving install (no torch) still gets every command's help; a command whose extra is
missing says which one to install.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from imgzoo import __version__
from imgzoo.errors import UserError

# Parts in the order their commands appear in --help.
_PARTS = (
    "models.cli",
    "training.cli",
    "training.sweep_cli",
    "export.cli",
    "service.cli",
    "imgzoo.zoo",
    "imgzoo.demo",
)

Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgzoo",
        description="Train compact image classifiers, export them to ONNX and TorchScript, "
        "and serve them.",
    )
    parser.add_argument("--version", action="version", version=f"imgzoo {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [import_module(part) for part in _PARTS]
    for module in modules:
        module.register(subparsers)
    # `imgzoo bench KIND`: each part may contribute benchmark kinds (train, soak, ...).
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks that print figures",
        description=(
            "Benchmarks that print figures (docs/ records them with the machine and versions)."
        ),
    )
    kinds = bench.add_subparsers(dest="bench", metavar="KIND", required=True)
    for module in modules:
        if hasattr(module, "register_bench"):
            module.register_bench(kinds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func: Command | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except UserError as exc:
        print(f"imgzoo {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        extra = "train" if exc.name and exc.name.split(".")[0] in _TRAIN_MODULES else "serve"
        print(
            f"imgzoo {args.command}: error: missing dependency {exc.name!r}; "
            f"install the '{extra}' extra: pip install 'imgzoo[{extra}]'",
            file=sys.stderr,
        )
        return 3
    except KeyboardInterrupt:
        print(f"imgzoo {args.command}: interrupted", file=sys.stderr)
        return 130


_TRAIN_MODULES = {"torch", "torchvision", "onnx", "onnxscript", "tqdm", "matplotlib"}


if __name__ == "__main__":
    sys.exit(main())
