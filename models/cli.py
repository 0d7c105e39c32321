"""`imgzoo models`: the zoo as a table (or JSON) of parameters and FLOPs per data-set input.

torch is imported inside the command, so `imgzoo --help` stays fast and torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class InputShape:
    """A data set's network input: the shapes the table reports."""

    dataset: str
    channels: int
    size: int
    num_classes: int

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.channels}x{self.size}x{self.size}"


INPUT_SHAPES = (
    InputShape("cifar10", 3, 32, 10),
    InputShape("fer2013", 1, 48, 7),
    InputShape("butterfly", 3, 64, 100),
    InputShape("butterfly", 3, 224, 100),
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `imgzoo models`."""
    parser = subparsers.add_parser(
        "models",
        help="list the model zoo with parameters and FLOPs",
        description=(
            "List the registered networks with their parameter count and forward FLOPs for one "
            "image (a multiply-add counts as 2 FLOPs) at each data set's input size: "
            + ", ".join(f"{s.label} ({s.num_classes} classes)" for s in INPUT_SHAPES)
            + "."
        ),
    )
    parser.add_argument("names", nargs="*", metavar="MODEL", help="only these models")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.set_defaults(func=run)


def format_parameters(count: int) -> str:
    """2_030_000 -> '2.0M'; small counts in K."""
    return f"{count / 1e6:.1f}M" if count >= 100_000 else f"{count / 1e3:.1f}K"


def format_flops(flops: int) -> str:
    """410_000_000 -> '0.41G'."""
    return f"{flops / 1e9:.2f}G"


def describe_models(names: list[str]) -> list[dict[str, Any]]:
    """Per model: name, description, ImageNet availability and cost at every input shape."""
    import torch

    from models.complexity import count_flops, count_parameters
    from models.registry import get_model, get_spec, list_models

    rows = []
    for name in names or list_models():
        spec = get_spec(name)
        inputs = []
        for shape in INPUT_SHAPES:
            # On the meta device: shapes only, so counting FLOPs of VGG-19 at 224 px is free.
            with torch.device("meta"):
                model = get_model(
                    name,
                    num_classes=shape.num_classes,
                    in_channels=shape.channels,
                    image_size=shape.size,
                )
            flops = count_flops(model, in_channels=shape.channels, image_size=shape.size)
            inputs.append({**asdict(shape), "parameters": count_parameters(model), "flops": flops})
        rows.append(
            {
                "name": name,
                "description": spec.description,
                "imagenet_weights": spec.imagenet_weights is not None,
                "inputs": inputs,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per model; each input column shows 'parameters / FLOPs'."""
    header = ["model", *(s.label for s in INPUT_SHAPES), "imagenet"]
    body = [
        [
            row["name"],
            *(
                f"{format_parameters(i['parameters'])} / {format_flops(i['flops'])}"
                for i in row["inputs"]
            ),
            "yes" if row["imagenet_weights"] else "-",
        ]
        for row in rows
    ]
    widths = [max(len(line[col]) for line in [header, *body]) for col in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if col == 0 else cell.rjust(width)
            for col, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in [header, *body]
    ]
    note = "cells: parameters / forward FLOPs per image (multiply-add = 2 FLOPs)"
    return "\n".join([*lines, "", note])


def run(args: argparse.Namespace) -> int:
    rows = describe_models(list(args.names))
    if args.json:
        json.dump({"models": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 0
