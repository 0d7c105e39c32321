"""Run a `SweepPlan`: train each (config, seed) through `training.engine.train`, resumably.

A run whose `summary.json` exists is done and skipped; one killed mid-way continues from its
`last.pt` (the engine resumes bit-exactly on the CPU); one whose training failed (diverged,
out of memory ...) is recorded in `error.json` and the sweep goes on, retrying it next time.
The report (`sweep_report`) is rewritten after every run, so it is current while running.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgzoo.errors import UserError
from training.recipes import Recipe
from training.sweep import SweepPlan, SweepRun
from training.sweep_report import ERROR_FILE, ConfigSummary, run_completed, write_report

log = logging.getLogger(__name__)


class SweepError(UserError):
    """A sweep directory that does not fit the plan."""


@dataclass(frozen=True)
class SweepOutcome:
    """What `run_sweep` did and where the report is."""

    summaries: list[ConfigSummary]
    files: list[Path]
    trained: int
    skipped: int
    failed: int


def _stored_recipe(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "recipe.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _differences(stored: dict[str, Any], recipe: Recipe) -> list[str]:
    wanted = recipe.to_dict()
    return sorted(k for k in wanted if stored.get(k) != wanted[k])


def run_state(run: SweepRun) -> str:
    """done | resume | new, for a run's directory; a SweepError when it holds another recipe."""
    stored = _stored_recipe(run.run_dir)
    if stored is None:
        return "new"
    diff = _differences(stored, run.recipe)
    if diff:
        raise SweepError(
            f"{run.run_dir} was trained with other values of {', '.join(diff)}; "
            "use another --out for a changed sweep, or delete that directory"
        )
    if run_completed(run.run_dir):
        return "done"
    last = run.run_dir / "last.pt"
    return "resume" if last.is_file() else "new"


def _resumable(last: Path, recipe: Recipe) -> bool:
    """Whether last.pt has resume state for fewer epochs than the recipe's."""
    from training.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(last)
    except UserError:
        return False
    return ckpt.resume is not None and ckpt.epoch < recipe.epochs


def run_sweep(
    plan: SweepPlan,
    *,
    data_root: Path | None,
    device: str = "auto",
    cache_dir: Path | None = None,
    limit_per_class: int | None = None,
    progress: bool = False,
    report_extra: dict[str, Any] | None = None,
    on_run: Callable[[SweepRun, str], None] | None = None,
) -> SweepOutcome:
    """Train every run of `plan` not yet done, then write the report.

    `on_run(run, message)` is told about each run as it is skipped, starts, finishes or fails.
    A `TrainingError` (a diverged loss, amp=fp16 on a CPU ...) belongs to its config: it is
    recorded as a failed run and the sweep goes on. Anything else (a data set that does not
    load, a bug, an interruption) propagates and stops the sweep, leaving last.pt behind.
    """
    from training.distributed import resolve_device
    from training.engine import train
    from training.errors import TrainingError

    resolve_device(device)  # a device that does not exist fails once, not once per run
    states = [(run, run_state(run)) for run in plan.runs]  # fail early on a mismatched dir
    trained = skipped = failed = 0
    notify = on_run or (lambda _run, _message: None)
    for run, state in states:
        if state == "done":
            skipped += 1
            notify(run, "done already, skipped")
            continue
        resume = run.run_dir / "last.pt"
        resume_from = resume if state == "resume" and _resumable(resume, run.recipe) else None
        notify(run, "resuming from last.pt" if resume_from else "training")
        (run.run_dir / ERROR_FILE).unlink(missing_ok=True)
        started = time.perf_counter()
        try:
            result = train(
                run.recipe,
                data_root=data_root,
                out_dir=run.run_dir,
                device=device,
                resume=resume_from,
                cache_dir=cache_dir,
                progress=progress,
                limit_per_class=limit_per_class,
            )
        except TrainingError as exc:
            failed += 1
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / ERROR_FILE).write_text(
                json.dumps({"error": message, "type": type(exc).__name__}) + "\n"
            )
            notify(run, f"failed: {message}")
        else:
            trained += 1
            notify(
                run,
                f"best val accuracy {100 * result.best_val_accuracy:.2f}% "
                f"(epoch {result.best_epoch}), {result.seconds:.0f}s training, "
                f"{time.perf_counter() - started:.0f}s wall",
            )
        write_report(plan, extra=report_extra)
    summaries, files = write_report(plan, extra=report_extra)
    return SweepOutcome(summaries, files, trained=trained, skipped=skipped, failed=failed)
