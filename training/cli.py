"""`imgzoo train`, `imgzoo recipes`, `imgzoo evaluate` and `imgzoo bench train`.

Nothing heavy at import time (torch, matplotlib, ...): each command imports what it needs, so
`imgzoo --help` stays fast and works in the torch-free serving install.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from imgzoo.errors import UserError


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this part's subcommands."""
    _register_train(subparsers)
    _register_recipes(subparsers)
    _register_evaluate(subparsers)


# --- imgzoo train --------------------------------------------------------------------------


def _register_train(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a named recipe (or data set + model)",
        description=(
            "Train a network. Pick a recipe (`imgzoo recipes` lists them) or a data set and a "
            "model; change any recipe field with --set key=value. Under torchrun, trains with "
            "DDP. Writes best.pt, last.pt, metrics.jsonl, plots and summary.json to --out."
        ),
    )
    what = p.add_argument_group("what to train")
    what.add_argument("--recipe", metavar="NAME", help="a named recipe (see `imgzoo recipes`)")
    what.add_argument(
        "--dataset", metavar="NAME", help="data set (with --model, or overriding the recipe's)"
    )
    what.add_argument("--model", metavar="NAME", help="architecture (see `imgzoo models`)")
    what.add_argument("--data-root", type=Path, metavar="DIR", help="where the data set lives")
    what.add_argument(
        "--download", action="store_true", help="download the data set if its library can"
    )
    what.add_argument(
        "--limit-per-class", type=int, metavar="N", help="use at most N images per class and split"
    )
    what.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="decoded-image cache (default ~/.cache/imgzoo/datasets)",
    )
    what.add_argument("--no-cache", action="store_true", help="decode images without the cache")
    what.add_argument(
        "--weights", metavar="imagenet|FILE", help="initial weights: imagenet or a local state dict"
    )
    hp = p.add_argument_group("common recipe overrides")
    hp.add_argument("--epochs", type=int, metavar="N")
    hp.add_argument(
        "--batch-size", type=int, metavar="N", help="images per optimiser step (all processes)"
    )
    hp.add_argument("--lr", type=float, metavar="LR", help="peak learning rate")
    hp.add_argument("--seed", type=int, metavar="N")
    hp.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any recipe field (repeatable), e.g. --set amp=bf16 --set cutout=8",
    )
    run = p.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    run.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory (default runs/<recipe>-<time>)"
    )
    run.add_argument(
        "--resume", type=Path, metavar="LAST_PT", help="continue a run from its last.pt"
    )
    run.add_argument(
        "--stop-after",
        type=int,
        metavar="EPOCH",
        help="end this invocation after EPOCH epochs (resume later with --resume)",
    )
    run.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op CPU threads (default: torch's; 1 is faster on a busy machine)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--export", action="store_true", help="export best.pt into --repository afterwards"
    )
    run.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        metavar="DIR",
        help="model repository for --export (default: model_repository)",
    )
    p.set_defaults(func=_train_command)


def _build_recipe(args: argparse.Namespace) -> tuple[Any, Path | None]:
    """The recipe the flags describe, and the data root (from the checkpoint when resuming)."""
    from training.recipes import RecipeError, default_recipe, get_recipe

    data_root: Path | None = args.data_root
    if args.resume is not None:
        from training.checkpoint import load_checkpoint
        from training.recipes import Recipe

        if args.recipe or args.dataset or args.model:
            raise RecipeError(
                "--resume continues the checkpoint's recipe; drop --recipe/--dataset/--model"
            )
        ckpt = load_checkpoint(args.resume)
        recipe = Recipe.from_dict(ckpt.hyperparameters)
        if data_root is None and ckpt.data.root:
            data_root = Path(ckpt.data.root)
    elif args.recipe:
        recipe = get_recipe(args.recipe)
        changes = {k: v for k, v in (("dataset", args.dataset), ("model", args.model)) if v}
        recipe = recipe.override(**changes)
    elif args.dataset and args.model:
        recipe = default_recipe(args.dataset, args.model)
    else:
        raise RecipeError("say what to train: --recipe NAME, or --dataset NAME and --model NAME")
    flags = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "weights": args.weights,
    }
    recipe = recipe.override(**{k: v for k, v in flags.items() if v is not None})
    recipe = recipe.override_from_strings(args.assignments)
    return recipe, data_root


def _set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise UserError("--threads must be >= 1")
    import torch

    torch.set_num_threads(threads)


def cache_dir_from_args(args: argparse.Namespace) -> Path | None:
    """The decoded-image cache `--cache-dir` / `--no-cache` ask for (also used by sweep)."""
    if args.no_cache:
        return None
    if args.cache_dir is not None:
        return Path(args.cache_dir)
    from training.cache import default_cache_dir

    return default_cache_dir()


def check_recipe_names(recipe: Any) -> None:
    """Unknown model / data set names fail before any data is read (also used by sweep)."""
    from models import get_model, list_models
    from training.datasets import dataset_names

    if recipe.dataset not in dataset_names():
        raise UserError(
            f"unknown data set {recipe.dataset!r} (known: {', '.join(dataset_names())})"
        )
    if recipe.model not in list_models():
        get_model(recipe.model, num_classes=2)  # raises UnknownModelError listing the names
        raise UserError(f"unknown model {recipe.model!r}")


def _train_command(args: argparse.Namespace) -> int:
    if args.limit_per_class is not None and args.limit_per_class < 1:
        raise UserError("--limit-per-class must be >= 1")
    recipe, data_root = _build_recipe(args)
    check_recipe_names(recipe)
    _set_threads(args.threads)
    from training.engine import train

    out = args.out
    if out is None:
        out = (
            args.resume.parent
            if args.resume
            else Path("runs") / (f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        )
    result = train(
        recipe,
        data_root=data_root,
        out_dir=out,
        device=args.device,
        resume=args.resume,
        cache_dir=cache_dir_from_args(args),
        progress=not args.no_progress,
        limit_per_class=args.limit_per_class,
        download=args.download,
        stop_after_epoch=args.stop_after,
    )
    if not result.is_main:
        return 0
    test = f"{100 * result.test_accuracy:.2f}%" if result.test_accuracy is not None else "n/a"
    kept = "best" if recipe.keep == "best" else "last"
    tta = (
        f" ({100 * result.val_accuracy_tta:.2f}% with tta={recipe.tta})"
        if result.val_accuracy_tta is not None
        else ""
    )
    print(
        f"{recipe.name}: {kept} val accuracy {100 * result.final_val_accuracy:.2f}%{tta} "
        f"(epoch {result.best_epoch}), test {test}, {result.seconds:.1f}s training, "
        f"{result.epochs_run}/{recipe.epochs} epochs on {result.device}"
    )
    print(f"run directory: {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    if args.export:
        from export.api import export_checkpoint

        exported = export_checkpoint(
            result.best_checkpoint,
            args.repository,
            data_root=data_root,
            progress=not args.no_progress,
            cache_dir=cache_dir_from_args(args),
        )
        print(f"exported: {exported.version_dir}")
    return 0


# --- imgzoo recipes ------------------------------------------------------------------------


def _register_recipes(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "recipes",
        help="list the training recipes",
        description="List the named training recipes, or show every field of one.",
    )
    p.add_argument("name", nargs="?", help="show every field of this recipe")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_recipes_command)


def _recipes_command(args: argparse.Namespace) -> int:
    from training.recipes import RECIPES, get_recipe, sgd_hyperparameters

    if args.name:
        data = get_recipe(args.name).to_dict()
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            width = max(len(k) for k in data)
            for key, value in data.items():
                print(f"{key:<{width}}  {value}")
        return 0
    # The lr column is what the optimiser gets (airbench-unit recipes are converted).
    torch_lr = {r.name: sgd_hyperparameters(r)[0] for r in RECIPES.values()}
    rows = [r.to_dict() for r in RECIPES.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (
        "recipe",
        "dataset",
        "model",
        "size",
        "epochs",
        "batch",
        "optim",
        "lr",
        "schedule",
        "ema",
        "amp",
    )
    table = [header] + [
        (
            r["name"],
            r["dataset"],
            r["model"],
            str(r["image_size"] or "native"),
            str(r["epochs"]),
            str(r["batch_size"]),
            r["optimizer"] + ("+la" if r["lookahead_k"] else ""),
            f"{torch_lr[r['name']]:.3g}",
            r["schedule"],
            f"{r['ema_decay']:g}" if r["ema_decay"] else "off",
            r["amp"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


# --- imgzoo evaluate -----------------------------------------------------------------------


def _register_evaluate(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy, per-class precision / recall / F1 and a confusion matrix of a checkpoint",
        description=(
            "Evaluate a checkpoint on a split of its data set (the same validation split it "
            "was selected on) or on an image folder whose class folders carry its labels."
        ),
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    p.add_argument(
        "--data-root",
        type=Path,
        metavar="DIR",
        help="data set root (default: the one it trained on)",
    )
    p.add_argument("--split", choices=("val", "test", "train"), default="val")
    p.add_argument(
        "--folder",
        type=Path,
        metavar="DIR",
        help="evaluate on DIR/<class>/* (or DIR/<split>/<class>/*) instead",
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="write confusion PNG and report JSON here"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256, metavar="N")
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="decoded-image cache (default ~/.cache/imgzoo/datasets)",
    )
    p.add_argument("--no-cache", action="store_true", help="decode images without the cache")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_evaluate_command)


def _evaluate_command(args: argparse.Namespace) -> int:
    from training.checkpoint import load_checkpoint
    from training.distributed import resolve_device
    from training.eval_inputs import folder_images, split_images
    from training.evaluate import evaluate_model

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.build_model()
    device = resolve_device(args.device)
    progress = not args.no_progress
    if args.folder is not None:
        images, labels, source = folder_images(
            args.folder, ckpt.data, split=args.split, progress=progress
        )
    else:
        images, labels, source = split_images(
            ckpt.data,
            args.split,
            data_root=args.data_root,
            cache_dir=cache_dir_from_args(args),
            progress=progress,
        )
    report = evaluate_model(
        model.to(device),
        images,
        labels,
        ckpt.data.labels,
        ckpt.data.input_preprocess(),
        batch_size=args.batch_size,
        device=device,
    )
    if args.json:
        print(
            json.dumps({"checkpoint": str(args.checkpoint), "source": source, **report.to_dict()})
        )
    else:
        print(f"{args.checkpoint}: {ckpt.architecture} on {source}")
        print(report.format_table())
    out = args.out or args.checkpoint.parent
    from training.plots import plot_confusion

    tag = "folder" if args.folder is not None else args.split
    png = plot_confusion(
        report.confusion,
        ckpt.data.labels,
        out / f"confusion_{tag}.png",
        title=f"{ckpt.architecture}: {source}",
    )
    (out / f"evaluation_{tag}.json").write_text(
        json.dumps(
            {"checkpoint": str(args.checkpoint), "source": source, **report.to_dict()}, indent=2
        )
        + "\n"
    )
    if not args.json:
        print(f"confusion matrix: {png}")
    return 0


# --- imgzoo bench train ----------------------------------------------------------------------


def register_bench(kinds: argparse._SubParsersAction[Any]) -> None:
    """Add `imgzoo bench train`."""
    t = kinds.add_parser(
        "train",
        help="training throughput (images/s) per model",
        description=(
            "Time training steps (forward, backward, SGD step, with batch augmentation) on "
            "random images at a data set's input size; prints images/s per model, the machine "
            "and library versions."
        ),
    )
    t.add_argument("--models", nargs="+", metavar="NAME", help="models (default: all registered)")
    t.add_argument("--dataset", default="cifar10", help="input size and classes of this data set")
    t.add_argument("--image-size", type=int, metavar="PX", help="override the input size")
    t.add_argument("--steps", type=int, default=10, metavar="N", help="timed steps per model")
    t.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed steps first")
    t.add_argument("--batch-size", type=int, metavar="N", help="default 128 (32 for large models)")
    t.add_argument("--amp", choices=("off", "auto", "bf16", "fp16"), default="off")
    t.add_argument("--channels-last", action="store_true")
    t.add_argument(
        "--compile",
        action="store_true",
        help="run the steps through torch.compile (it compiles during the warmup steps)",
    )
    t.add_argument(
        "--gemm-weight-grad-side",
        type=int,
        default=0,
        metavar="PX",
        help=(
            "as the recipe field: convolutions with outputs up to PX a side compute their weight "
            "gradient as one GEMM (0 = off)"
        ),
    )
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int, metavar="N", help="torch intra-op CPU threads")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    t.set_defaults(func=_bench_train_command)


def _bench_train_command(args: argparse.Namespace) -> int:
    from training.bench import benchmark_training, format_results, machine_info

    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    _set_threads(args.threads)
    results = benchmark_training(
        models=args.models,
        dataset=args.dataset,
        image_size=args.image_size,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        amp=args.amp,
        channels_last=args.channels_last,
        compile_model=args.compile,
        gemm_weight_grad_side=args.gemm_weight_grad_side,
        device=args.device,
    )
    info = machine_info(args.device)
    if args.json:
        print(json.dumps({"machine": info, "results": [r.to_dict() for r in results]}, indent=2))
    else:
        print(format_results(results, info))
    return 0
