"""`imgzoo export` and `imgzoo repository list`.

Nothing heavy at import time: torch, onnx and the export code load inside the commands, so
`imgzoo --help` stays fast and `imgzoo repository list` works in the torch-free serving install.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from export.repository import RepositoryEntry
    from imgzoo.manifest import Composition, Manifest

DEFAULT_REPOSITORY = Path("model_repository")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `export` and `repository` to the `imgzoo` command."""
    _register_export(subparsers)
    _register_repository(subparsers)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _register_export(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX + TorchScript as a new model-repository version",
        description=(
            "Export a training checkpoint to <repository>/<dataset>/<model>/<version>/ "
            "(model.onnx, model.ts, manifest.json), after checking ONNX Runtime and "
            "TorchScript against PyTorch on real images. Nothing is written if a check fails."
        ),
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        nargs="+",
        help=(
            "checkpoint file written by `imgzoo train`; several make one ensemble graph "
            "(mean of their log-probabilities; same data set, split and input)"
        ),
    )
    parser.add_argument(
        "--repository", type=Path, required=True, metavar="DIR", help="model repository"
    )
    parser.add_argument(
        "--dataset", help="data set name in the repository (default: the checkpoint's)"
    )
    parser.add_argument(
        "--model",
        help="model name in the repository (default: the architecture; <arch>_x<k> for k networks)",
    )
    parser.add_argument(
        "--tta",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help=(
            "test-time augmentation inside the graph, as the recipes measure it: 1 averages "
            "the image and its mirror (2 passes), 2 adds 1 px shifts (6 passes); 0: none. "
            "With --tta or several checkpoints the graph's validation accuracy is measured"
        ),
    )
    parser.add_argument(
        "--version",
        type=_positive_int,
        help="version number (default: the next free one; never overwritten)",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        metavar="DIR",
        help="data set directory for the parity images (default: the checkpoint's)",
    )
    parser.add_argument(
        "--parity-images",
        type=_positive_int,
        default=256,
        metavar="N",
        help="images to check parity on (256)",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="also write model.fp16.onnx (fp16 weights, same interface)",
    )
    parser.add_argument(
        "--no-simplify", action="store_true", help="skip onnxslim graph simplification"
    )
    parser.add_argument("--opset", type=_positive_int, default=None, help="ONNX opset (default 21)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from export.api import export_checkpoint
    from export.onnx_export import DEFAULT_OPSET
    from export.parity import describe
    from training.cache import default_cache_dir

    result = export_checkpoint(
        args.checkpoint,
        args.repository,
        dataset=args.dataset,
        model=args.model,
        version=args.version,
        data_root=args.data_root,
        parity_images=args.parity_images,
        fp16=args.fp16,
        simplify=not args.no_simplify,
        progress=not args.no_progress,
        opset=args.opset if args.opset is not None else DEFAULT_OPSET,
        cache_dir=default_cache_dir(),
        tta=args.tta,
    )
    manifest = result.manifest
    name = f"{manifest.dataset}/{manifest.model}"
    print(f"wrote {name} version {manifest.version}: {result.version_dir}")
    if manifest.composition is not None:
        print(f"  graph  {describe_composition(manifest.composition, manifest)}")
    for parity in manifest.export.parity:
        print(f"  parity {describe(parity)}")
        print(f"         on {parity.image_source}")
    sizes = ", ".join(
        f"{name} {_size(n)}" for name, n in sorted(manifest.metrics.file_sizes.items())
    )
    print(f"  files  {sizes}")
    if manifest.export.simplification:
        print(f"  simplification  {manifest.export.simplification}")
    return 0


def describe_composition(composition: Composition, manifest: Manifest) -> str:
    """One line: members, TTA, passes per image and the accuracy measured on the graph."""
    members = len(composition.members)
    what = f"{members} networks" if members > 1 else "1 network"
    text = f"{what}, tta={composition.tta}, {composition.views} passes an image"
    if manifest.metrics.val_accuracy is not None and composition.val_images:
        text += (
            f"; validation accuracy {manifest.metrics.val_accuracy:.2%} on "
            f"{composition.val_images} images of the {composition.val_source}"
        )
    else:
        text += "; validation accuracy not measured (no data set to measure on)"
    return text


def _register_repository(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "repository",
        help="inspect a model repository",
        description="Inspect a model repository written by `imgzoo export`.",
    )
    actions = parser.add_subparsers(dest="repository_command", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="list every version with its accuracy, size and validity",
        description="List every version of the repository; invalid versions say why.",
    )
    listing.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        metavar="DIR",
        help=f"model repository (default: ./{DEFAULT_REPOSITORY})",
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument(
        "--no-verify", action="store_true", help="skip checking each file's size and sha256"
    )
    listing.set_defaults(func=_run_list)


def _run_list(args: argparse.Namespace) -> int:
    from export.repository import list_repository

    entries = list_repository(args.repository, verify=not args.no_verify)
    if args.json:
        json.dump([e.to_dict() for e in entries], sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not entries:
        print(f"no versions in {args.repository}")
    else:
        print(format_table(entries))
    return 0


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _count(n: int | None, suffix: str = "") -> str:
    if n is None:
        return "-"
    for scale, letter in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.2f}{letter}{suffix}"
    return f"{n}{suffix}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_table(entries: list[RepositoryEntry]) -> str:
    """A plain-text table, one row per version, columns aligned."""
    header = (
        "DATASET",
        "MODEL",
        "VERSION",
        "ARCH",
        "VAL ACC",
        "TEST ACC",
        "PARAMS",
        "FLOPS",
        "SIZE",
        "CREATED",
        "STATUS",
    )
    rows = [header]
    for e in entries:
        rows.append(
            (
                e.dataset,
                e.model,
                "-" if e.version is None else str(e.version),
                e.graph or e.architecture or "-",
                _percent(e.val_accuracy),
                _percent(e.test_accuracy),
                _count(e.parameters),
                _count(e.flops),
                _size(e.size_bytes),
                e.created.strftime("%Y-%m-%d %H:%M") if e.created else "-",
                "ok" if e.valid else f"invalid: {e.reason}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
