"""Sweep results: read each run's files, aggregate over seeds, write the table, JSON and plots.

Everything is read back from the run directories (`metrics.jsonl`, `summary.json`, and the
sweep's own `error.json` for a run that failed), so a report can be rebuilt at any time from
what is on disk, including for a sweep that is still running or was interrupted.

Outputs in the sweep directory:
    sweep.json           plan, per-run results and per-config aggregates (sorted)
    sweep.md             the table, sorted by mean best validation accuracy
    val_acc.png          validation accuracy per epoch, one line per config (mean over seeds)
    val_loss.png         validation loss per epoch, likewise
    train_loss.png       training loss per epoch (with label smoothing), likewise
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.sweep import SweepPlan, describe

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
ERROR_FILE = "error.json"
REPORT_JSON = "sweep.json"
REPORT_MD = "sweep.md"
PLOTS: dict[str, tuple[str, str, float]] = {
    # file stem -> (metrics key, y-axis label, scale)
    "val_acc": ("val_acc", "validation accuracy (%)", 100.0),
    "val_loss": ("val_loss", "validation cross-entropy", 1.0),
    "train_loss": ("train_loss", "training loss (with label smoothing)", 1.0),
}


@dataclass(frozen=True)
class RunRecord:
    """What one run (config x seed) left on disk."""

    slug: str
    seed: int
    run_dir: Path
    status: str
    """done (summary.json written), failed (error.json), or pending (not finished)."""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    train_seconds: float | None = None
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    device: str | None = None

    @property
    def final_val_loss(self) -> float | None:
        return float(self.metrics[-1]["val_loss"]) if self.metrics else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "seed": self.seed,
            "run_dir": str(self.run_dir),
            "status": self.status,
            "best_val_accuracy": self.best_val_accuracy,
            "best_epoch": self.best_epoch,
            "final_val_loss": self.final_val_loss,
            "train_seconds": self.train_seconds,
            "error": self.error,
            "metrics": self.metrics,
        }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows (a torn last line from a killed run is ignored)."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows


def run_completed(run_dir: Path) -> bool:
    """Whether the run trained all its epochs (the engine also writes summary.json for a run
    stopped early with `stop_after_epoch`, with completed = false)."""
    summary = _read_json(run_dir / SUMMARY_FILE)
    return summary is not None and bool(summary.get("completed", True))


def read_run(slug: str, seed: int, run_dir: Path) -> RunRecord:
    """The record of one run from its directory."""
    metrics = read_metrics(run_dir / METRICS_FILE)
    summary = _read_json(run_dir / SUMMARY_FILE)
    if summary is not None and summary.get("completed", True):
        # Best epoch from the per-epoch curve the plots show (summary.json's figure may be a
        # final test-time-augmented evaluation, depending on the recipe's tta / keep).
        best = max(metrics, key=lambda m: float(m["val_acc"])) if metrics else None
        return RunRecord(
            slug=slug,
            seed=seed,
            run_dir=run_dir,
            status="done",
            metrics=metrics,
            best_val_accuracy=(
                float(best["val_acc"]) if best else float(summary["best_val_accuracy"])
            ),
            best_epoch=int(best["epoch"]) if best else int(summary["best_epoch"]),
            train_seconds=float(summary["train_seconds"]),
            data=dict(summary.get("data") or {}),
            device=summary.get("device"),
        )
    error = _read_json(run_dir / ERROR_FILE)
    return RunRecord(
        slug=slug,
        seed=seed,
        run_dir=run_dir,
        status="failed" if error is not None else "pending",
        metrics=metrics,
        error=str(error.get("error")) if error is not None else None,
    )


def read_plan_runs(plan: SweepPlan) -> list[RunRecord]:
    """Records of every run the plan names, in plan order."""
    return [read_run(r.config.slug, r.seed, r.run_dir) for r in plan.runs]


@dataclass(frozen=True)
class ConfigSummary:
    """One config aggregated over its seeds (completed runs only)."""

    slug: str
    overrides: dict[str, Any]
    seeds_done: list[int]
    seeds_failed: list[int]
    seeds_pending: list[int]
    accuracies: list[float]
    val_losses: list[float]
    best_epochs: list[int]
    train_seconds: list[float]
    curves: dict[str, list[float]]
    """Per-epoch means over the completed seeds, by metrics key (val_acc, val_loss, ...)."""
    errors: list[str]

    @property
    def done(self) -> bool:
        return bool(self.accuracies)

    @property
    def accuracy_mean(self) -> float | None:
        return statistics.fmean(self.accuracies) if self.accuracies else None

    @property
    def accuracy_spread(self) -> float | None:
        """Sample standard deviation over seeds (None with fewer than two)."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else None

    @property
    def val_loss_mean(self) -> float | None:
        return statistics.fmean(self.val_losses) if self.val_losses else None

    @property
    def seconds_mean(self) -> float | None:
        return statistics.fmean(self.train_seconds) if self.train_seconds else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "overrides": self.overrides,
            "label": describe(self.overrides),
            "seeds_done": self.seeds_done,
            "seeds_failed": self.seeds_failed,
            "seeds_pending": self.seeds_pending,
            "best_val_accuracy_mean": self.accuracy_mean,
            "best_val_accuracy_std": self.accuracy_spread,
            "best_val_accuracy_min": min(self.accuracies) if self.accuracies else None,
            "best_val_accuracy_max": max(self.accuracies) if self.accuracies else None,
            "best_val_accuracies": self.accuracies,
            "final_val_loss_mean": self.val_loss_mean,
            "best_epochs": self.best_epochs,
            "train_seconds_mean": self.seconds_mean,
            "curves": self.curves,
            "errors": self.errors,
        }


def _mean_curves(records: Sequence[RunRecord]) -> dict[str, list[float]]:
    """Per-epoch means over runs, up to the shortest run (all completed: equal lengths)."""
    if not records:
        return {}
    length = min(len(r.metrics) for r in records)
    curves: dict[str, list[float]] = {}
    for key in ("val_acc", "val_loss", "train_loss", "train_acc", "lr"):
        if all(key in r.metrics[i] for r in records for i in range(length)):
            curves[key] = [
                statistics.fmean(float(r.metrics[i][key]) for r in records) for i in range(length)
            ]
    return curves


def summarize(plan: SweepPlan, records: Sequence[RunRecord]) -> list[ConfigSummary]:
    """Aggregate records per config, sorted: best mean accuracy first (then lower val loss);
    configs without a completed run last, in plan order."""
    summaries: list[ConfigSummary] = []
    for config in plan.configs:
        mine = [r for r in records if r.slug == config.slug]
        done = [r for r in mine if r.status == "done"]
        summaries.append(
            ConfigSummary(
                slug=config.slug,
                overrides=config.changes,
                seeds_done=[r.seed for r in done],
                seeds_failed=[r.seed for r in mine if r.status == "failed"],
                seeds_pending=[r.seed for r in mine if r.status == "pending"],
                accuracies=[r.best_val_accuracy for r in done if r.best_val_accuracy is not None],
                val_losses=[r.final_val_loss for r in done if r.final_val_loss is not None],
                best_epochs=[r.best_epoch for r in done if r.best_epoch is not None],
                train_seconds=[r.train_seconds for r in done if r.train_seconds is not None],
                curves=_mean_curves(done),
                errors=[r.error for r in mine if r.error],
            )
        )
    return sort_summaries(summaries)


def sort_summaries(summaries: Sequence[ConfigSummary]) -> list[ConfigSummary]:
    """Completed configs by mean accuracy (descending), ties by mean final val loss; the rest
    keep their order at the end."""
    order = {s.slug: i for i, s in enumerate(summaries)}

    def key(s: ConfigSummary) -> tuple[int, float, float, int]:
        if s.accuracy_mean is None:
            return (1, 0.0, 0.0, order[s.slug])
        loss = s.val_loss_mean if s.val_loss_mean is not None else math.inf
        return (0, -s.accuracy_mean, loss, order[s.slug])

    return sorted(summaries, key=key)


def _pct(value: float | None) -> str:
    return f"{100 * value:.2f}" if value is not None else "n/a"


def _accuracy_cell(s: ConfigSummary) -> str:
    if s.accuracy_mean is None:
        return "n/a"
    if s.accuracy_spread is None:
        return f"{_pct(s.accuracy_mean)}%"
    return f"{_pct(s.accuracy_mean)} ± {_pct(s.accuracy_spread)}%"


def _status_cell(s: ConfigSummary) -> str:
    parts = [f"{len(s.seeds_done)} done"]
    if s.seeds_failed:
        first = s.errors[0] if s.errors else "failed"
        parts.append(f"{len(s.seeds_failed)} failed: {first}")
    if s.seeds_pending:
        parts.append(f"{len(s.seeds_pending)} pending")
    return ", ".join(parts)


def format_table(summaries: Sequence[ConfigSummary]) -> str:
    """The Markdown table of a sweep, in the order given (use `sort_summaries` first)."""
    header = (
        "| # | config | params | best val acc (mean ± std) | final val loss | best epoch "
        "| train time (s) | seeds |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for rank, s in enumerate(summaries, start=1):
        epochs = ", ".join(str(e) for e in s.best_epochs) or "n/a"
        loss = f"{s.val_loss_mean:.4f}" if s.val_loss_mean is not None else "n/a"
        seconds = f"{s.seconds_mean:.0f}" if s.seconds_mean is not None else "n/a"
        label = describe(s.overrides).replace("|", "\\|")
        lines.append(
            f"| {rank} | `{s.slug}` | {label} | {_accuracy_cell(s)} | {loss} | {epochs} "
            f"| {seconds} | {_status_cell(s).replace('|', '/')} |"
        )
    return "\n".join(lines)


def _pyplot() -> Any:
    # Agg: no display needed, and never a GUI window from a training job.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_metric(
    summaries: Sequence[ConfigSummary],
    key: str,
    path: Path,
    *,
    ylabel: str,
    scale: float,
    title: str,
) -> Path | None:
    """One line per config of the per-epoch mean of `key`; None when no config has it."""
    lines = [(s.slug, s.curves[key]) for s in summaries if s.curves.get(key)]
    if not lines:
        return None
    plt = _pyplot()
    colors = plt.get_cmap("tab20").colors if len(lines) > 10 else plt.get_cmap("tab10").colors
    styles = ("-", "--", ":", "-.")
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=100)
    try:
        for i, (slug, values) in enumerate(lines):
            ax.plot(
                range(1, len(values) + 1),
                [scale * v for v in values],
                marker="o",
                markersize=3,
                color=colors[i % len(colors)],
                linestyle=styles[(i // len(colors)) % len(styles)],
                label=slug,
            )
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        # Legend beside the axes, in table order (best first), so many lines stay readable.
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def _data_line(records: Sequence[RunRecord]) -> str:
    done = [r for r in records if r.status == "done" and r.data]
    if not done:
        return ""
    data, device = done[0].data, done[0].device
    return (
        f"Data: {data.get('dataset')}, {data.get('train_images')} training / "
        f"{data.get('val_images')} validation images; device {device}."
    )


def format_markdown(
    plan: SweepPlan,
    summaries: Sequence[ConfigSummary],
    records: Sequence[RunRecord],
    plots: Sequence[Path],
) -> str:
    """sweep.md: what was swept, the table, the plots."""
    base = plan.base
    fixed = describe(dict(plan.fixed)) if plan.fixed else "none"
    grid = (
        "; ".join(f"{k} in {{{', '.join(str(v) for v in vals)}}}" for k, vals in plan.grid)
        or "none"
    )
    lines = [
        f"# Sweep of `{base.name}` ({base.model} on {base.dataset})",
        "",
        f"- {len(plan.configs)} configurations x {len(plan.seeds)} seed(s) "
        f"({', '.join(str(s) for s in plan.seeds)}); grid: {grid}",
        f"- set for every config (--set; a --configs entry may override): {fixed}",
        f"- base: {base.epochs} epochs, batch {base.batch_size}, {base.optimizer} lr {base.lr:g}, "
        f"{base.schedule} schedule, weight decay {base.weight_decay:g}",
    ]
    data = _data_line(records)
    if data:
        lines.append(f"- {data}")
    lines += [
        "",
        "Sorted by best validation accuracy (mean over seeds ± sample standard deviation); "
        "final val loss is the last epoch's plain cross-entropy on validation; best epoch per "
        "seed; train time is the mean training time per run, without evaluation.",
        "",
        format_table(summaries),
        "",
    ]
    for path in plots:
        lines.append(f"![{path.stem}]({path.name})")
    return "\n".join(lines) + "\n"


def write_report(
    plan: SweepPlan, *, extra: dict[str, Any] | None = None
) -> tuple[list[ConfigSummary], list[Path]]:
    """Read every run of `plan` and write sweep.json, sweep.md and the PNGs; returns the sorted
    summaries and the files written."""
    records = read_plan_runs(plan)
    summaries = summarize(plan, records)
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    for stem, (key, ylabel, scale) in PLOTS.items():
        written = plot_metric(
            summaries,
            key,
            out / f"{stem}.png",
            ylabel=ylabel,
            scale=scale,
            title=f"{plan.base.name}: {ylabel} per epoch (mean over seeds)",
        )
        if written is not None:
            plots.append(written)
    report = {
        "recipe": plan.base.name,
        "base": plan.base.to_dict(),
        "fixed": dict(plan.fixed),
        "grid": {k: list(v) for k, v in plan.grid},
        "seeds": list(plan.seeds),
        "configs": [s.to_dict() for s in summaries],
        "runs": [r.to_dict() for r in records],
        **(extra or {}),
    }
    json_path, md_path = out / REPORT_JSON, out / REPORT_MD
    _atomic_write(json_path, json.dumps(report, indent=2, default=_jsonable) + "\n")
    _atomic_write(md_path, format_markdown(plan, summaries, records, plots))
    return summaries, [json_path, md_path, *plots]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
