"""Sweep plans: which recipe variants to train, under which names, with which seeds.

A sweep starts from one base recipe and varies some of its fields. The variants come from a
grid (`batch_size=256,512` x `optimizer=sgd,adam` ...: the cartesian product) and / or an
explicit list of override dicts read from a JSON or TOML file (for comparisons a grid cannot
express, such as a learning rate per optimiser); a file list and a grid multiply. Each variant
is a `SweepConfig` with a stable, readable slug that names its directory, and each config runs
once per seed. Everything here is torch-free; `sweep_run` trains and `sweep_report` reports.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from training.recipes import Recipe, RecipeError, parse_value

# Fields a sweep may not vary: `seed` has --seeds, and `name` labels the whole sweep.
RESERVED_FIELDS = ("name", "seed")

# Short names for the slug (the directory name); the full key=value pairs are in sweep.json.
SLUG_ALIASES: dict[str, str] = {
    "batch_size": "bs",
    "eval_batch_size": "ebs",
    "epochs": "ep",
    "lookahead_k": "la",
    "lookahead_alpha": "laa",
    "weight_decay": "wd",
    "momentum": "mom",
    "label_smoothing": "ls",
    "warmup_epochs": "wu",
    "warmup_start_factor": "wsf",
    "final_lr_factor": "flr",
    "image_size": "px",
    "crop_padding": "crop",
    "ema_decay": "ema",
    "grad_clip": "clip",
    "step_milestones": "ms",
    "step_gamma": "gamma",
}
# Fields whose values name themselves (sgd, onecycle, fastnet ...): the slug shows only the value.
SELF_NAMED = ("optimizer", "schedule", "amp", "model", "dataset")

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def recipe_field_types() -> dict[str, Any]:
    """Recipe field name -> its annotated type."""
    hints = get_type_hints(Recipe)
    return {f.name: hints[f.name] for f in fields(Recipe)}


def _is_tuple_type(tp: Any) -> bool:
    if get_origin(tp) is tuple:
        return True
    return any(get_origin(arg) is tuple for arg in get_args(tp))


def _check_key(key: str, where: str) -> Any:
    types = recipe_field_types()
    if key not in types:
        raise RecipeError(f"{where}: unknown recipe field {key!r} (known: {', '.join(types)})")
    if key == "seed":
        raise RecipeError(f"{where}: vary the seed with --seeds, not as a recipe field")
    if key in RESERVED_FIELDS:
        raise RecipeError(f"{where}: the recipe field {key!r} cannot be swept")
    return types[key]


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """`key=v1,v2,...` -> (key, parsed values). Tuple fields separate values with `;`."""
    key, sep, values_text = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key or not values_text.strip():
        raise RecipeError(f"--grid needs key=value1,value2,..., got {text!r}")
    tp = _check_key(key, "--grid")
    separator = ";" if _is_tuple_type(tp) else ","
    raw = [v.strip() for v in values_text.split(separator)]
    if any(not v for v in raw) and not _is_tuple_type(tp):
        raise RecipeError(f"--grid {key}: empty value in {values_text!r}")
    values = [parse_value(key, v, tp) for v in raw]
    if len(set(map(repr, values))) != len(values):
        raise RecipeError(f"--grid {key}: a value is listed twice in {values_text!r}")
    return key, values


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """Every `--grid` option, parsed; a key may appear only once."""
    grid: list[tuple[str, list[Any]]] = []
    for item in items:
        key, values = parse_grid_option(item)
        if any(key == k for k, _ in grid):
            raise RecipeError(f"--grid {key} is given twice; list all its values in one option")
        grid.append((key, values))
    return grid


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` (or `0-2`) -> [0, 1, 2]; at least one, no repeats."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            first, dash, last = part.partition("-")
            if dash and first:
                seeds.extend(range(int(first), int(last) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise RecipeError(f"--seeds needs integers like 0,1,2 or 0-2, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise RecipeError(f"--seeds needs distinct non-negative integers, got {text!r}")
    return seeds


def _coerce(key: str, value: Any, tp: Any, where: str) -> Any:
    """A value from a JSON / TOML file as the field's type (strings parse like --set)."""
    if isinstance(value, str):
        return parse_value(key, value, tp)
    if isinstance(value, list) and _is_tuple_type(tp):
        return tuple(float(v) if isinstance(v, int | float) else v for v in value)
    if isinstance(value, dict | list):
        raise RecipeError(f"{where}: {key!r} needs a single value, got {value!r}")
    return value


def load_configs(path: Path) -> list[dict[str, Any]]:
    """Override dicts from a JSON list (or {"configs": [...]}) or TOML `[[configs]]` tables."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"--configs {path}: {exc.strerror or exc}") from None
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise RecipeError(f"--configs {path}: not valid {kind}: {exc}") from None
    if isinstance(data, dict):
        data = data.get("configs")
    if not isinstance(data, list) or not data or not all(isinstance(d, dict) for d in data):
        raise RecipeError(
            f"--configs {path}: expected a non-empty list of objects "
            '(JSON: [{"optimizer": "adam", "lr": 0.001}, ...]; TOML: [[configs]] tables)'
        )
    where = f"--configs {path.name}"
    configs: list[dict[str, Any]] = []
    for entry in data:
        config: dict[str, Any] = {}
        for raw_key, value in entry.items():
            key = str(raw_key).replace("-", "_")
            config[key] = _coerce(key, value, _check_key(key, where), where)
        configs.append(config)
    return configs


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "-".join(_format_value(v) for v in value) or "none"
    return str(value)


def slugify(overrides: Mapping[str, Any]) -> str:
    """A readable directory name for a set of overrides: `bs512_adamw_la5_lr0.001`."""
    parts: list[str] = []
    for key, value in overrides.items():
        text = _format_value(value)
        if key in SELF_NAMED:
            parts.append(text)
            continue
        alias = SLUG_ALIASES.get(key, key)
        # `flip-off`, `bs256`: a separator only where the value would run into the name.
        joiner = "-" if text[:1].isalpha() or text[:1] == "-" else ""
        parts.append(f"{alias}{joiner}{text}")
    slug = _SLUG_UNSAFE.sub("-", "_".join(parts)).strip("-_")
    return slug or "base"


def describe(overrides: Mapping[str, Any]) -> str:
    """`batch_size=512 optimizer=adamw`: the overrides as a reader would type them."""
    if not overrides:
        return "(base recipe)"
    return " ".join(f"{k}={_format_value(v)}" for k, v in overrides.items())


@dataclass(frozen=True)
class SweepConfig:
    """One variant of the base recipe: its slug and the fields it changes, in order."""

    slug: str
    overrides: tuple[tuple[str, Any], ...]

    @property
    def changes(self) -> dict[str, Any]:
        return dict(self.overrides)

    @property
    def label(self) -> str:
        return describe(self.changes)


@dataclass(frozen=True)
class SweepRun:
    """One training run of a sweep: a config with one seed, in its own directory."""

    config: SweepConfig
    seed: int
    recipe: Recipe
    run_dir: Path


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep will train, and what it holds fixed."""

    base: Recipe
    """The base recipe with the fixed (--set) overrides applied."""
    fixed: tuple[tuple[str, Any], ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    configs: tuple[SweepConfig, ...]
    seeds: tuple[int, ...]
    out_dir: Path

    @property
    def runs(self) -> list[SweepRun]:
        """Config-major order, so the first configs finish all their seeds first."""
        return [
            SweepRun(
                config=config,
                seed=seed,
                recipe=self.base.override(**config.changes, seed=seed),
                run_dir=run_dir(self.out_dir, config.slug, seed),
            )
            for config in self.configs
            for seed in self.seeds
        ]


def run_dir(out_dir: Path, slug: str, seed: int) -> Path:
    """`OUT/<slug>/seed-<n>`: where one run of a config trains."""
    return out_dir / slug / f"seed-{seed}"


def expand(
    base: Recipe,
    grid: Sequence[tuple[str, Sequence[Any]]] = (),
    configs: Sequence[Mapping[str, Any]] | None = None,
) -> list[SweepConfig]:
    """The configs of a sweep: each listed config times the grid's cartesian product.

    Every resulting recipe is validated (`Recipe.override`), so a bad value fails here with
    its `RecipeError`, before anything trains. Two configs with identical overrides are an
    error, since they would train into the same directory.
    """
    listed: list[Mapping[str, Any]] = list(configs) if configs else [{}]
    keys = [k for k, _ in grid]
    out: list[SweepConfig] = []
    seen: dict[str, str] = {}
    for listed_config in listed:
        clash = sorted(set(listed_config) & set(keys))
        if clash:
            raise RecipeError(f"{', '.join(clash)} is both in --configs and in --grid")
        for combo in itertools.product(*(values for _, values in grid)):
            changes = {**listed_config, **dict(zip(keys, combo, strict=True))}
            recipe = base.override(**changes)
            # Values as the recipe holds them, so `0.10` and `0.1` are the same config.
            normalised = {k: getattr(recipe, k) for k in changes}
            slug = slugify(normalised)
            if slug in seen:
                raise RecipeError(
                    f"two configurations are the same ({describe(normalised)}); "
                    "remove the duplicate"
                )
            seen[slug] = describe(normalised)
            out.append(SweepConfig(slug=slug, overrides=tuple(normalised.items())))
    return out


def build_plan(
    base: Recipe,
    *,
    out_dir: Path,
    grid_options: Sequence[str] = (),
    configs_file: Path | None = None,
    fixed: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
) -> SweepPlan:
    """Parse the command line's pieces into a validated `SweepPlan`."""
    fixed_recipe = base.override_from_strings(list(fixed))
    fixed_keys = [item.partition("=")[0].strip().replace("-", "_") for item in fixed]
    grid = parse_grid(grid_options)
    listed = load_configs(configs_file) if configs_file is not None else None
    # A --configs entry may override a --set value (a default); a grid key may not.
    both = sorted({k for k, _ in grid} & set(fixed_keys))
    if both:
        raise RecipeError(f"{', '.join(both)} is both set with --set and swept with --grid")
    if "seed" in fixed_keys:
        raise RecipeError("set the seeds with --seeds, not --set seed=")
    configs = expand(fixed_recipe, grid, listed)
    return SweepPlan(
        base=fixed_recipe,
        fixed=tuple((k, getattr(fixed_recipe, k)) for k in dict.fromkeys(fixed_keys)),
        grid=tuple((k, tuple(v)) for k, v in grid),
        configs=tuple(configs),
        seeds=tuple(seeds) if seeds else (base.seed,),
        out_dir=out_dir,
    )
