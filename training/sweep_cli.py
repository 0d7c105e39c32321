"""`imgzoo sweep`: train a grid of recipe variants and compare them in a table and plots.

Nothing heavy at import time: torch and matplotlib load inside the command.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from imgzoo.errors import UserError
from training.cli import cache_dir_from_args, check_recipe_names

_EXAMPLE = """\
example (the seed projects' comparison, 3 epochs each):
  imgzoo sweep --recipe cifar10_fastnet --data-root ~/data/cifar10 --limit-per-class 500 \\
      --grid optimizer=sgd,adam,adamw --grid lookahead_k=0,5 --grid schedule=onecycle,cosine \\
      --set epochs=3 --seeds 0,1 --out runs/sweep-opt

configs file (JSON list, or TOML [[configs]] tables): per-optimiser learning rates
  [{"optimizer": "sgd", "lr": 0.2}, {"optimizer": "adamw", "lr": 0.002, "weight_decay": 0.05}]
"""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `imgzoo sweep`."""
    p = subparsers.add_parser(
        "sweep",
        help="train a grid of recipe variants; table and plots of validation accuracy / loss",
        description=(
            "Train every combination of the --grid values (times each --configs entry, times "
            "each seed) from one base recipe, each into OUT/<config>/seed-<n>/, and write "
            "OUT/sweep.md (a table sorted by validation accuracy), OUT/sweep.json and PNG "
            "plots of validation accuracy and loss per epoch. Runs already finished are "
            "skipped and interrupted ones resume, so rerunning continues a sweep."
        ),
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_argument_group("what to sweep")
    what.add_argument("--recipe", metavar="NAME", help="base recipe (see `imgzoo recipes`)")
    what.add_argument("--dataset", metavar="NAME", help="with --model: the default recipe")
    what.add_argument("--model", metavar="NAME", help="with --dataset: the default recipe")
    what.add_argument(
        "--grid",
        dest="grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="vary a recipe field over these values (repeatable: the cartesian product); "
        "step_milestones separates values with ';'",
    )
    what.add_argument(
        "--configs",
        type=Path,
        metavar="FILE",
        help="JSON / TOML list of override dicts, each one config (times the grid)",
    )
    what.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a recipe field in every config (repeatable); a --configs entry may "
        "override it, a --grid key may not",
    )
    what.add_argument(
        "--seeds", default=None, metavar="0,1,...", help="train each config once per seed"
    )
    data = p.add_argument_group("data")
    data.add_argument("--data-root", type=Path, metavar="DIR", help="where the data set lives")
    data.add_argument(
        "--limit-per-class",
        type=int,
        metavar="N",
        help="use at most N images per class and split (a subset for quick comparisons)",
    )
    data.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="decoded-image cache (default ~/.cache/imgzoo/datasets)",
    )
    data.add_argument("--no-cache", action="store_true", help="decode images without the cache")
    run = p.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    run.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="sweep directory (default runs/sweep-<recipe>-<time>)",
    )
    run.add_argument("--threads", type=int, metavar="N", help="torch intra-op CPU threads")
    run.add_argument(
        "--dry-run", action="store_true", help="list the runs and their state; train nothing"
    )
    run.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite sweep.md / sweep.json / plots from what is on disk; train nothing",
    )
    run.add_argument("--progress", action="store_true", help="per-epoch progress bars")
    p.set_defaults(func=_sweep_command)


def _base_recipe(args: argparse.Namespace) -> Any:
    from training.recipes import RecipeError, default_recipe, get_recipe

    if args.recipe:
        recipe = get_recipe(args.recipe)
        changes = {k: v for k, v in (("dataset", args.dataset), ("model", args.model)) if v}
        return recipe.override(**changes)
    if args.dataset and args.model:
        return default_recipe(args.dataset, args.model)
    raise RecipeError("say what to sweep: --recipe NAME, or --dataset NAME and --model NAME")


def _previous_extra(out: Path) -> dict[str, Any]:
    """The run-time facts (argv, machine) of an earlier sweep.json, kept by --report-only."""
    import json

    try:
        data = json.loads((out / "sweep.json").read_text())
    except (OSError, ValueError):
        return {}
    keys = ("argv", "limit_per_class", "machine")
    return {k: data[k] for k in keys if isinstance(data, dict) and k in data}


def _sweep_command(args: argparse.Namespace) -> int:
    from training.sweep import build_plan, parse_seeds

    if args.limit_per_class is not None and args.limit_per_class < 1:
        raise UserError("--limit-per-class must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be >= 1")
    base = _base_recipe(args)
    out = args.out or Path("runs") / f"sweep-{base.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    plan = build_plan(
        base,
        out_dir=out,
        grid_options=args.grid,
        configs_file=args.configs,
        fixed=args.assignments,
        seeds=parse_seeds(args.seeds) if args.seeds is not None else None,
    )
    runs = plan.runs
    for run in runs:
        check_recipe_names(run.recipe)

    from training.sweep_report import write_report
    from training.sweep_run import run_state, run_sweep

    states = [run_state(r) for r in runs]
    print(
        f"sweep of {base.name}: {len(plan.configs)} configs x {len(plan.seeds)} seed(s) "
        f"= {len(runs)} runs ({states.count('done')} done) in {out}"
    )
    if args.dry_run:
        for run, state in zip(runs, states, strict=True):
            print(f"  {run.config.slug}/seed-{run.seed}  [{state}]  {run.config.label}")
        return 0
    if args.report_only:
        _, files = write_report(plan, extra=_previous_extra(out))
        print(f"report: {files[1]}")
        return 0
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from training.bench import machine_info

    total = len(runs)
    index = {(r.config.slug, r.seed): i for i, r in enumerate(runs, start=1)}

    def on_run(run: Any, message: str) -> None:
        i = index[run.config.slug, run.seed]
        print(f"[{i}/{total}] {run.config.slug} seed {run.seed}: {message}", flush=True)

    outcome = run_sweep(
        plan,
        data_root=args.data_root,
        device=args.device,
        cache_dir=cache_dir_from_args(args),
        limit_per_class=args.limit_per_class,
        progress=args.progress,
        report_extra={
            "argv": list(sys.argv),
            "limit_per_class": args.limit_per_class,
            "machine": machine_info(args.device),
        },
        on_run=on_run,
    )
    best = next((s for s in outcome.summaries if s.done), None)
    if best is not None and best.accuracy_mean is not None:
        print(f"best: {best.slug} ({100 * best.accuracy_mean:.2f}% mean best val accuracy)")
    print(f"table: {out / 'sweep.md'}")
    if outcome.failed:
        print(f"{outcome.failed} run(s) failed; see the table and rerun to retry them")
        return 1
    return 0
