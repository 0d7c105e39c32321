"""`imgzoo sweep`: grid expansion, slugs, config files, resume, table order, a real tiny sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgzoo.cli import main
from training.recipes import RecipeError, get_recipe
from training.sweep import (
    SweepPlan,
    build_plan,
    expand,
    load_configs,
    parse_grid,
    parse_grid_option,
    parse_seeds,
    slugify,
)
from training.sweep_report import (
    ConfigSummary,
    format_table,
    read_run,
    sort_summaries,
    write_report,
)
from training.sweep_run import SweepError, run_state, run_sweep

BASE = get_recipe("demo_fastnet")

# --- plans ------------------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_in_option_order() -> None:
    grid = parse_grid(["batch_size=32,64", "optimizer=sgd,adam,adamw", "lookahead_k=0,5"])
    configs = expand(BASE, grid)
    assert len(configs) == 2 * 3 * 2
    combos = [c.changes for c in configs]
    assert combos[0] == {"batch_size": 32, "optimizer": "sgd", "lookahead_k": 0}
    assert combos[-1] == {"batch_size": 64, "optimizer": "adamw", "lookahead_k": 5}
    # Every combination exactly once, values typed by the recipe field.
    assert len({tuple(sorted(c.items())) for c in combos}) == 12
    assert all(isinstance(c["batch_size"], int) for c in combos)


def test_grid_values_are_parsed_by_field_type() -> None:
    assert parse_grid_option("lr=0.1,1e-3") == ("lr", [0.1, 0.001])
    assert parse_grid_option("flip=on,off") == ("flip", [True, False])
    assert parse_grid_option("image-size=none,16") == ("image_size", [None, 16])
    # Tuple fields separate values with ';' (their items with ',').
    assert parse_grid_option("step_milestones=1,2;3") == ("step_milestones", [(1.0, 2.0), (3.0,)])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("nonsense=1,2", "unknown recipe field 'nonsense'"),
        ("batch_size=32,big", "recipe field 'batch_size' needs int, got 'big'"),
        ("lr", "--grid needs key=value1,value2"),
        ("lr=0.1,,0.2", "empty value"),
        ("seed=0,1", "vary the seed with --seeds"),
        ("lr=0.1,0.1", "listed twice"),
    ],
)
def test_bad_grid_options_are_one_line_errors(option: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message) as info:
        parse_grid([option])
    assert "\n" not in str(info.value)


def test_a_grid_value_the_recipe_rejects_fails_before_training() -> None:
    with pytest.raises(RecipeError, match="optimizer must be one of sgd, muon, adam, adamw"):
        expand(BASE, parse_grid(["optimizer=sgd,rmsprop"]))
    with pytest.raises(RecipeError, match="lr must be > 0"):
        expand(BASE, parse_grid(["lr=0.1,-1"]))


def test_slugs_are_readable_unique_and_safe() -> None:
    assert slugify({"batch_size": 512, "optimizer": "adamw", "lookahead_k": 5}) == "bs512_adamw_la5"
    assert slugify({"lr": 0.001, "schedule": "cosine"}) == "lr0.001_cosine"
    assert slugify({"flip": False, "image_size": None}) == "flip-off_px-none"
    assert slugify({"step_milestones": (1.0, 2.5)}) == "ms1-2.5"
    assert slugify({"weights": "/tmp/my weights.pt"}) == "weights-tmp-my-weights.pt"
    assert slugify({}) == "base"
    configs = expand(BASE, parse_grid(["lr=0.1,0.01,0.001", "optimizer=sgd,adam"]))
    assert len({c.slug for c in configs}) == 6


def test_configs_file_json_and_toml(tmp_path: Path) -> None:
    js = tmp_path / "c.json"
    js.write_text(
        json.dumps([{"optimizer": "sgd", "lr": 0.2}, {"optimizer": "adamw", "lr": "2e-3"}])
    )
    toml = tmp_path / "c.toml"
    toml.write_text('[[configs]]\noptimizer = "adam"\nlr = 0.001\nlookahead-k = 5\n')
    assert load_configs(js) == [
        {"optimizer": "sgd", "lr": 0.2},
        {"optimizer": "adamw", "lr": 0.002},
    ]
    assert load_configs(toml) == [{"optimizer": "adam", "lr": 0.001, "lookahead_k": 5}]
    # A file list times a grid.
    configs = expand(BASE, parse_grid(["schedule=onecycle,cosine"]), load_configs(js))
    assert [c.slug for c in configs] == [
        "sgd_lr0.2_onecycle",
        "sgd_lr0.2_cosine",
        "adamw_lr0.002_onecycle",
        "adamw_lr0.002_cosine",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"optimizer": "sgd"}', "expected a non-empty list"),
        ("[]", "expected a non-empty list"),
        ('[{"lr": [1, 2]}]', "needs a single value"),
        ('[{"wings": 2}]', "unknown recipe field 'wings'"),
        ("[{", "not valid JSON"),
    ],
)
def test_bad_configs_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_configs(path)


def test_plan_rules(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="both set with --set and swept with --grid"):
        build_plan(BASE, out_dir=tmp_path, grid_options=["lr=0.1,0.2"], fixed=["lr=0.3"])
    with pytest.raises(RecipeError, match="two configurations are the same"):
        expand(BASE, [], [{"lr": 0.1}, {"lr": 0.1}])
    path = tmp_path / "c.json"
    path.write_text('[{"lr": 0.1}]')
    with pytest.raises(RecipeError, match="both in --configs and in --grid"):
        expand(BASE, parse_grid(["lr=0.2,0.3"]), load_configs(path))
    # --set is a default a --configs entry may override.
    path.write_text('[{"optimizer": "adam", "lr": 0.001}, {"optimizer": "sgd"}]')
    plan = build_plan(BASE, out_dir=tmp_path, configs_file=path, fixed=["lr=0.3"], seeds=[3, 4])
    assert [r.recipe.lr for r in plan.runs] == [0.001, 0.001, 0.3, 0.3]
    assert [r.recipe.seed for r in plan.runs] == [3, 4, 3, 4]
    assert plan.runs[1].run_dir == tmp_path / "adam_lr0.001" / "seed-4"
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(RecipeError, match="--seeds"):
            parse_seeds(bad)


# --- the table --------------------------------------------------------------------------------


def _summary(slug: str, accs: list[float], loss: float | None = 1.0) -> ConfigSummary:
    return ConfigSummary(
        slug=slug,
        overrides={"lr": float(len(slug))},
        seeds_done=list(range(len(accs))),
        seeds_failed=[] if accs else [0],
        seeds_pending=[],
        accuracies=accs,
        val_losses=[loss] * len(accs) if loss is not None else [],
        best_epochs=[1] * len(accs),
        train_seconds=[10.0] * len(accs),
        curves={},
        errors=[] if accs else ["loss became nan at step 3"],
    )


def test_table_sorts_by_mean_accuracy_then_loss_failures_last() -> None:
    summaries = [
        _summary("failed", []),
        _summary("mid", [0.5, 0.7]),  # mean 0.6
        _summary("top", [0.8, 0.8]),
        _summary("tie-worse-loss", [0.6], loss=2.0),
        _summary("tie-better-loss", [0.6], loss=0.5),
    ]
    ordered = [s.slug for s in sort_summaries(summaries)]
    assert ordered == ["top", "tie-better-loss", "mid", "tie-worse-loss", "failed"]
    table = format_table(sort_summaries(summaries)).splitlines()
    assert table[2].startswith("| 1 | `top` |")
    # mean ± sample std over seeds: 60.00 ± 14.14 for 0.5 and 0.7.
    assert "| 60.00 ± 14.14% |" in table[4]
    assert "1 failed: loss became nan at step 3" in table[-1]


# --- real runs (the embedded demo set, 16 px) ---------------------------------------------------


def _tiny_plan(out: Path, grid: list[str], seeds: list[int] | None = None) -> SweepPlan:
    return build_plan(
        BASE,
        out_dir=out,
        grid_options=grid,
        fixed=["image_size=16", "whiten_images=128", "batch_size=32", "eval_batch_size=256"],
        seeds=seeds,
    )


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.slow
def test_real_tiny_sweep_writes_table_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--recipe",
        "demo_fastnet",
        "--grid",
        "lr=0.1,0.0001",
        "--set",
        "image_size=16",
        "--set",
        "whiten_images=128",
        "--set",
        "batch_size=32",
        "--limit-per-class",
        "30",
        "--device",
        "cpu",
        "--no-cache",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads((out / "sweep.json").read_text())
    configs = {c["slug"]: c for c in report["configs"]}
    assert list(configs) == [c["slug"] for c in report["configs"]]
    assert set(configs) == {"lr0.1", "lr0.0001"}
    for slug, config in configs.items():
        run = out / slug / "seed-0"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert config["best_val_accuracies"] == [max(r["val_acc"] for r in rows)]
        assert config["final_val_loss_mean"] == pytest.approx(rows[-1]["val_loss"])
        assert config["curves"]["val_acc"] == pytest.approx([r["val_acc"] for r in rows])
        assert json.loads((run / "recipe.json").read_text())["lr"] == config["overrides"]["lr"]
    # Sorted by accuracy; a lr of 1e-4 barely moves in 9 steps, 0.1 learns (9 shapes: chance 11 %).
    means = [c["best_val_accuracy_mean"] for c in report["configs"]]
    assert means == sorted(means, reverse=True)
    assert report["configs"][0]["slug"] == "lr0.1"
    assert report["runs"][0]["status"] == "done"
    table = (out / "sweep.md").read_text()
    best = configs["lr0.1"]["best_val_accuracy_mean"]
    assert f"| 1 | `lr0.1` | lr=0.1 | {100 * best:.2f}% |" in table
    for name in ("val_acc", "val_loss", "train_loss"):
        assert f"![{name}]({name}.png)" in table
        assert _png_size(out / f"{name}.png") == (1100, 550)

    # A second invocation trains nothing and leaves the runs as they were.
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-0/best.pt")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed-0/best.pt")} == before


@pytest.mark.slow
def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    from training.engine import train

    plan = _tiny_plan(tmp_path / "a", ["epochs=2"])
    (run,) = plan.runs
    # Interrupt after epoch 1 of 2: last.pt stays, no summary.
    train(
        run.recipe,
        data_root=None,
        out_dir=run.run_dir,
        device="cpu",
        progress=False,
        limit_per_class=30,
        stop_after_epoch=1,
    )
    assert run_state(run) == "resume"
    events: list[str] = []
    outcome = run_sweep(
        plan,
        data_root=None,
        device="cpu",
        limit_per_class=30,
        on_run=lambda _r, message: events.append(message),
    )
    assert events[0] == "resuming from last.pt"
    assert (outcome.trained, outcome.skipped, outcome.failed) == (1, 0, 0)
    resumed = read_run(run.config.slug, 0, run.run_dir)
    assert [m["epoch"] for m in resumed.metrics] == [1, 2]

    fresh_plan = _tiny_plan(tmp_path / "b", ["epochs=2"])
    run_sweep(fresh_plan, data_root=None, device="cpu", limit_per_class=30)
    (fresh_run,) = fresh_plan.runs
    fresh = read_run(fresh_run.config.slug, 0, fresh_run.run_dir)
    # The engine re-seeds every epoch, so the resumed run is the uninterrupted one.
    assert [m["val_loss"] for m in resumed.metrics] == [m["val_loss"] for m in fresh.metrics]
    assert run_state(run) == "done"


@pytest.mark.slow
def test_failed_config_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # amp=fp16 needs CUDA: that config fails with a TrainingError, the other one trains.
    plan = _tiny_plan(tmp_path, ["amp=fp16,off"])
    outcome = run_sweep(plan, data_root=None, device="cpu", limit_per_class=20)
    assert (outcome.trained, outcome.failed) == (1, 1)
    by_slug = {s.slug: s for s in outcome.summaries}
    assert by_slug["fp16"].seeds_failed == [0]
    assert "amp=fp16 needs a CUDA device" in by_slug["fp16"].errors[0]
    assert outcome.summaries[-1].slug == "fp16"  # failures sort last
    assert by_slug["off"].done
    assert "1 failed: amp=fp16 needs a CUDA device" in (tmp_path / "sweep.md").read_text()


def test_a_directory_of_another_recipe_is_refused(tmp_path: Path) -> None:
    plan = _tiny_plan(tmp_path, ["lr=0.1,0.2"])
    run = plan.runs[0]
    run.run_dir.mkdir(parents=True)
    stored = run.recipe.override(epochs=7).to_dict()
    (run.run_dir / "recipe.json").write_text(json.dumps(stored))
    with pytest.raises(SweepError, match="other values of epochs"):
        run_state(run)
    # A matching recipe with a summary is done; without one it trains anew.
    (run.run_dir / "recipe.json").write_text(json.dumps(run.recipe.to_dict()))
    assert run_state(run) == "new"
    (run.run_dir / "summary.json").write_text('{"completed": false}')
    assert run_state(run) == "new"  # stopped early (and no last.pt to resume from)
    (run.run_dir / "summary.json").write_text('{"completed": true}')
    assert run_state(run) == "done"


def test_report_of_a_sweep_in_progress(tmp_path: Path) -> None:
    plan = _tiny_plan(tmp_path, ["lr=0.1,0.2"])
    first = plan.runs[0]
    first.run_dir.mkdir(parents=True)
    rows = [
        {"epoch": e, "val_acc": acc, "val_loss": loss, "train_loss": loss + 0.5}
        for e, acc, loss in ((1, 0.3, 2.0), (2, 0.6, 1.5), (3, 0.5, 1.4))
    ]
    (first.run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 4, "val'  # torn last line
    )
    (first.run_dir / "summary.json").write_text(
        json.dumps({"best_val_accuracy": 0.6, "best_epoch": 2, "train_seconds": 12.5})
    )
    summaries, files = write_report(plan)
    assert [s.slug for s in summaries] == ["lr0.1", "lr0.2"]
    assert summaries[0].accuracies == [0.6] and summaries[0].best_epochs == [2]
    assert summaries[0].val_loss_mean == 1.4
    assert summaries[1].seeds_pending == [0] and not summaries[1].done
    assert [f.name for f in files] == [
        "sweep.json",
        "sweep.md",
        "val_acc.png",
        "val_loss.png",
        "train_loss.png",
    ]
    # The plotted curve is the run's, scaled to percent.
    assert np.allclose(summaries[0].curves["val_acc"], [0.3, 0.6, 0.5])
    assert "| 2 | `lr0.2` | lr=0.2 | n/a |" in (tmp_path / "sweep.md").read_text()
