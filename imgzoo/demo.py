"""`imgzoo demo`: the main job `make run` runs, end to end on embedded data.

Train the `demo_fastnet` recipe on the embedded demo data set, export the best checkpoint into
the model repository, write one sample image per class for the README's curl calls, then serve
the repository on localhost. A repository that already holds the demo model is reused, so a
second `make run` starts serving in seconds (`--retrain` trains a new version).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

DEMO_RECIPE = "demo_fastnet"
DEMO_DATASET = "demo"
DEMO_MODEL = "fastnet"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train the demo model, export it and serve it (what `make run` does)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="model repository to export into and serve (default: %(default)s)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=Path("runs"),
        help="where training runs go (default: %(default)s)",
    )
    parser.add_argument(
        "--samples",
        type=Path,
        default=Path("samples"),
        help="where to write one sample image per class (default: %(default)s)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port to serve on (default: %(default)s)"
    )
    parser.add_argument(
        "--retrain", action="store_true", help="train and export a new version even if one exists"
    )
    parser.add_argument(
        "--no-serve", action="store_true", help="stop after training and export (used by the tests)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def existing_versions(repository: Path) -> list[int]:
    """Versions of the demo model already in the repository."""
    model_dir = repository / DEMO_DATASET / DEMO_MODEL
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def write_samples(dest: Path) -> list[Path]:
    """One demo image per class, named `<label>.png`, for curl calls and the web page."""
    from training.demo_data import demo_labels, write_demo_images

    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_demo_images(Path(tmp), count=8 * len(demo_labels()))
        for label in demo_labels():
            first = next(p for p in paths if p.name.rsplit("_", 1)[0] == label)
            target = dest / f"{label}.png"
            shutil.copyfile(first, target)
            written.append(target)
    return written


def train_and_export(args: argparse.Namespace) -> None:
    from export.api import export_checkpoint
    from training.engine import train
    from training.recipes import get_recipe

    recipe = get_recipe(DEMO_RECIPE)
    print(f"[1/3] training {DEMO_RECIPE} on the embedded demo data set ({recipe.epochs} epochs)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = train(
        recipe,
        data_root=None,
        out_dir=args.runs / f"{DEMO_RECIPE}-{stamp}",
        progress=not args.no_progress,
    )
    test = "n/a" if result.test_accuracy is None else f"{result.test_accuracy:.2%}"
    print(
        f"      validation accuracy {result.final_val_accuracy:.2%} (epoch "
        f"{result.best_epoch}), test accuracy {test}, {result.seconds:.0f} s -> {result.run_dir}"
    )
    print(f"[2/3] exporting {result.best_checkpoint} into {args.repository}")
    exported = export_checkpoint(
        result.best_checkpoint, args.repository, progress=not args.no_progress
    )
    for parity in exported.parity:
        print(
            f"      parity {parity.runtime}: max |diff| {parity.max_abs_diff:.2e} "
            f"(tolerance {parity.tolerance:.1e}), top-1 agreement {parity.top1_agreement:.2%}"
        )
    print(f"      wrote {exported.version_dir}")


def run(args: argparse.Namespace) -> int:
    versions = existing_versions(args.repository)
    if versions and not args.retrain:
        print(
            f"[1/3] {args.repository}/{DEMO_DATASET}/{DEMO_MODEL} already has version(s) "
            f"{versions}; reusing it (--retrain trains a new one)"
        )
        print("[2/3] nothing to export")
    else:
        train_and_export(args)
    samples = write_samples(args.samples)
    print(f"      sample images: {', '.join(str(p) for p in samples[:3])}, ...")
    if args.no_serve:
        return 0
    base = f"http://{args.host}:{args.port}"
    print(f"[3/3] serving {args.repository} on {base} (Ctrl-C stops)")
    print(f"      curl -s -F file=@{samples[0]} {base}/predict/{DEMO_DATASET}/{DEMO_MODEL}")
    from imgzoo.cli import build_parser

    serve_args = build_parser().parse_args(
        [
            "serve",
            "--repository",
            str(args.repository),
            "--host",
            args.host,
            "--port",
            str(args.port),
        ]
    )
    exit_code: int = serve_args.func(serve_args)
    return exit_code
