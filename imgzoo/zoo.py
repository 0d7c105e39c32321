"""`imgzoo zoo`: train and export the best recipe of each data set into one model repository.

The zoo is data (`ZOO`): for each data set, the recipe whose figures `docs/results.md` records
as its best, the seeds of the networks that make the served graph, and the test-time
augmentation inside it. Building an entry trains every seed that has no finished run yet
(`<runs>/<recipe>-s<seed>/`, resumed from `last.pt` when a run was cut short), then exports
the networks as one graph whose validation accuracy is measured on the exported file, so
`GET /models` and the web page show the zoo with real numbers and `make run` serves it.

A run directory that already holds a finished run of exactly this recipe (every field, the
seed included) is reused, one holding anything else is refused, and a repository version
built from the same checkpoints (by sha256) is not exported twice: an interrupted build picks
up where it stopped.

Nothing heavy at import time: torch and the export code load inside the command.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgzoo.errors import UserError
from imgzoo.names import default_model_name

if TYPE_CHECKING:
    from imgzoo.manifest import Manifest
    from training.recipes import Recipe

DEFAULT_REPOSITORY = Path("model_repository")
DEFAULT_RUNS = Path("runs/zoo")
SUMMARY_FILE = "summary.json"
BEST_FILE = "best.pt"
LAST_FILE = "last.pt"


@dataclass(frozen=True)
class ZooEntry:
    """One data set's model in the zoo."""

    dataset: str
    recipe: str
    seeds: tuple[int, ...]
    """One network per seed; several are exported as one ensemble graph."""
    tta: int
    """Test-time augmentation level inside the exported graph (the recipe's own)."""
    recorded: str
    """The figure `docs/results.md` records for this recipe and graph (validation split)."""

    @property
    def model(self) -> str:
        """The model's name in the repository: the architecture, `_x<k>` for k networks."""
        return default_model_name([self.architecture] * len(self.seeds))

    @property
    def architecture(self) -> str:
        from training.recipes import get_recipe

        return get_recipe(self.recipe).model


ZOO: tuple[ZooEntry, ...] = (
    ZooEntry(
        "cifar10",
        "cifar10_fastnet_94",
        (0,),
        tta=2,
        recorded="94.15 ± 0.13% (3 seeds, TTA); seed 0 94.30% on an AMX host",
    ),
    ZooEntry(
        "fer2013",
        "fer2013_fastnet",
        (3, 4),
        tta=2,
        recorded="71.30 ± 0.31% (3 pairs, TTA); seeds 3 + 4 71.66%",
    ),
    ZooEntry(
        "butterfly",
        "butterfly_fastnet",
        (1,),  # seed 0 of the recorded pair predates the recipe's `interpolation` field
        tta=2,
        recorded="95.10 ± 0.14% (2 seeds, TTA, official val split); seed 1 95.00%",
    ),
)


def zoo_entry(dataset: str) -> ZooEntry:
    for entry in ZOO:
        if entry.dataset == dataset:
            return entry
    known = ", ".join(e.dataset for e in ZOO)
    raise UserError(f"the zoo has no data set {dataset!r} (known: {known})")


# --------------------------------------------------------------------------- runs


def run_dir(runs: Path, recipe: str, seed: int) -> Path:
    return runs / f"{recipe}-s{seed}"


def finished_run(directory: Path, recipe: Recipe) -> bool:
    """Whether `directory` holds a finished run of exactly `recipe` (False: none yet).

    A directory holding some other run, or this recipe with other settings, is refused rather
    than overwritten or reused: its networks would not be the ones the zoo records.
    """
    from training.recipes import Recipe, RecipeError

    summary_path = directory / SUMMARY_FILE
    if not summary_path.is_file():
        return False
    try:
        summary = json.loads(summary_path.read_text())
        found = Recipe.from_dict(summary["recipe"]).to_dict()
        completed = bool(summary["completed"])
    except (OSError, ValueError, KeyError, TypeError, RecipeError) as exc:
        raise UserError(f"{summary_path}: not a readable training summary ({exc})") from None
    wanted = recipe.to_dict()
    if found != wanted:
        changed = [k for k in wanted if found.get(k) != wanted[k]]
        shown = ", ".join(f"{k}={found.get(k)!r} (zoo: {wanted[k]!r})" for k in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise UserError(
            f"{directory} holds another run: {shown}{more}; move it away or pass another "
            "--runs directory"
        )
    return completed and (directory / BEST_FILE).is_file()


def train_member(
    recipe: Recipe,
    directory: Path,
    *,
    data_root: Path,
    device: str,
    progress: bool,
    say: Callable[[str], None],
    download: bool = False,
) -> Path:
    """best.pt of `recipe` trained into `directory`: reused, resumed or trained from scratch."""
    from training.engine import train

    if finished_run(directory, recipe):
        say(f"      reusing {directory} (finished)")
        return directory / BEST_FILE
    last = directory / LAST_FILE
    resume = last if last.is_file() else None
    verb = f"resuming from {last}" if resume is not None else f"training into {directory}"
    say(f"      {verb}")
    result = train(
        recipe, data_root=data_root, out_dir=directory, device=device, progress=progress,
        resume=resume, download=download,
    )  # fmt: skip
    if not result.completed:
        raise UserError(f"{directory}: the run stopped before its last epoch")
    tta = "" if result.val_accuracy_tta is None else f", {result.val_accuracy_tta:.2%} with TTA"
    say(
        f"      validation accuracy {result.final_val_accuracy:.2%}{tta} "
        f"(epoch {result.best_epoch}), {result.seconds:.0f} s"
    )
    return result.best_checkpoint


# --------------------------------------------------------------------------- export


def exported_version(
    repository: Path, entry: ZooEntry, checkpoints: Sequence[Path]
) -> Manifest | None:
    """The repository version already built from exactly these checkpoints and TTA, if any."""
    from imgzoo.manifest import ManifestError, load_manifest, sha256_file

    model_dir = repository / entry.dataset / entry.model
    if not model_dir.is_dir():
        return None
    wanted = sorted(sha256_file(p) for p in checkpoints)
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    for version_dir in sorted(versions, key=lambda p: int(p.name)):
        try:
            manifest = load_manifest(version_dir)
        except ManifestError:
            continue  # a broken version is the repository's problem, not a match
        composition = manifest.composition
        if composition is None or composition.tta != entry.tta:
            continue
        if sorted(m.checkpoint_sha256 for m in composition.members) == wanted:
            return manifest
    return None


@dataclass(frozen=True)
class Built:
    """One zoo entry in the repository."""

    entry: ZooEntry
    manifest: Manifest
    exported: bool
    """False when an existing version already held these checkpoints."""


@dataclass(frozen=True)
class BuildOptions:
    """How zoo entries are built (the command line's options)."""

    repository: Path = DEFAULT_REPOSITORY
    runs: Path = DEFAULT_RUNS
    """Training runs go to `<runs>/<recipe>-s<seed>/` and are reused from there."""
    device: str = "auto"
    progress: bool = True
    download: bool = False
    """Fetch a data set into its root when that holds no images (where its library can)."""
    adjust: Callable[[Recipe], Recipe] | None = None
    """Changes each recipe before training (the tests shrink it); seeds stay the entry's."""
    say: Callable[[str], None] = print


def build_entry(entry: ZooEntry, data_root: Path, options: BuildOptions) -> Built:
    """Train what is missing of `entry`, then export it unless the repository has it already."""
    from export.api import export_checkpoint
    from training.recipes import get_recipe

    say, repository = options.say, options.repository
    base = get_recipe(entry.recipe)
    recipe = options.adjust(base) if options.adjust is not None else base
    # The loader itself uses images already there rather than downloading over them.
    fetch = options.download and downloadable(entry.dataset)
    checkpoints = []
    for seed in entry.seeds:
        say(f"  {entry.dataset}: {entry.recipe}, seed {seed}")
        checkpoints.append(
            train_member(
                recipe.override(seed=seed),
                run_dir(options.runs, entry.recipe, seed),
                data_root=data_root,
                device=options.device,
                progress=options.progress,
                say=say,
                download=fetch,
            )
        )
    found = exported_version(repository, entry, checkpoints)
    if found is not None:
        say(f"      {repository}/{entry.dataset}/{entry.model}/{found.version} has these networks")
        return Built(entry, found, exported=False)
    say(f"      exporting {len(checkpoints)} network(s) with TTA {entry.tta} into {repository}")
    result = export_checkpoint(
        checkpoints,
        repository,
        dataset=entry.dataset,
        model=entry.model,
        data_root=data_root,
        progress=options.progress,
        tta=entry.tta,
    )
    return Built(entry, result.manifest, exported=True)


# --------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "zoo",
        help="train and export the best recipe of each data set (the model zoo)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="DATASET=DIR",
        help="where a data set lives (repeat); only data sets given here are built",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="download a data set whose library can (CIFAR-10) into its --data directory "
        "when that holds none",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the zoo's entries and their recorded figures"
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help="model repository to export into (default: %(default)s)",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        default=DEFAULT_RUNS,
        help="where the training runs go and are reused from (default: %(default)s)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _download_hint(dataset: str) -> str | None:
    """Where to get `dataset` by hand; None when `--download` can fetch it (CIFAR-10)."""
    from training.datasets import dataset_spec

    return dataset_spec(dataset).download_hint


def downloadable(dataset: str) -> bool:
    """Whether `imgzoo train --download` can fetch `dataset` (torchvision's CIFAR-10 can)."""
    return _download_hint(dataset) is None


def parse_data(values: Iterable[str], *, download: bool = False) -> dict[str, Path]:
    """`DATASET=DIR` arguments as a mapping; each data set in the zoo, each directory real
    (or, with `download`, about to be filled by the download)."""
    roots: dict[str, Path] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise UserError(f"--data takes DATASET=DIR, got {value!r}")
        zoo_entry(name)  # an unknown data set fails here, before any work
        if name in roots:
            raise UserError(f"--data names {name} twice")
        path = Path(directory).expanduser()
        if path.exists() and not path.is_dir():
            raise UserError(f"--data {name}: {path} is not a directory")
        if not path.exists():
            hint = _download_hint(name)
            if hint is not None or not download:
                how = f"; {hint}" if hint else " (--download fetches it)"
                raise UserError(f"--data {name}: {path} is not a directory{how}")
        roots[name] = path
    return roots


def describe_zoo() -> str:
    lines = ["data set   recipe                 seeds  TTA  repository name      recorded"]
    for e in ZOO:
        seeds = ",".join(str(s) for s in e.seeds)
        name = f"{e.dataset}/{e.model}"
        lines.append(
            f"{e.dataset:<10} {e.recipe:<22} {seeds:<6} {e.tta:<4} {name:<20} {e.recorded}"
        )
    lines.append("")
    lines.append("build: imgzoo zoo --data cifar10=DIR --data fer2013=DIR --data butterfly=DIR")
    return "\n".join(lines)


def build_zoo(
    roots: Mapping[str, Path], options: BuildOptions, *, entries: Sequence[ZooEntry] = ZOO
) -> list[Built]:
    """Build the `entries` whose data set is in `roots`, in their order."""
    built = []
    wanted = [e for e in entries if e.dataset in roots]
    for i, entry in enumerate(wanted, 1):
        options.say(f"[{i}/{len(wanted)}] {entry.dataset}/{entry.model} from {entry.recipe}")
        built.append(build_entry(entry, roots[entry.dataset], options))
    return built


def describe_built(built: Sequence[Built]) -> str:
    lines = ["data set/model          version  val accuracy  measured on"]
    for b in built:
        m = b.manifest
        accuracy = "n/a" if m.metrics.val_accuracy is None else f"{m.metrics.val_accuracy:.2%}"
        composition = m.composition
        source = "training"
        if composition is not None and composition.val_images is not None:
            source = f"the graph, {composition.val_images:,} images"
        note = "" if b.exported else " (already there)"
        lines.append(
            f"{m.dataset + '/' + m.model:<23} {m.version:<8} {accuracy:<13} {source}{note}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(describe_zoo())
        return 0
    roots = parse_data(args.data, download=args.download)
    if not roots:
        raise UserError(
            "no data set given: pass --data DATASET=DIR for each one to build "
            "(`imgzoo zoo --list` shows the zoo)"
        )
    missing = [e.dataset for e in ZOO if e.dataset not in roots]
    if missing:
        print(f"not building {', '.join(missing)} (no --data for it)")
    options = BuildOptions(
        repository=args.repository,
        runs=args.runs,
        device=args.device,
        progress=not args.no_progress,
        download=args.download,
    )
    built = build_zoo(roots, options)
    print(describe_built(built))
    return 0
