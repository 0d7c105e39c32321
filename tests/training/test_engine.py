"""The training loop end to end on the embedded demo set (small and fast)."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.training.conftest import tiny_recipe
from training.augment import downscale
from training.checkpoint import DataInfo, load_checkpoint
from training.datasets import load_data
from training.demo_data import DEMO_IMAGE_SIZE
from training.engine import (
    METRIC_KEYS,
    TrainResult,
    _with_input_preparation,
    evaluate,
    train,
)
from training.errors import TrainingError
from training.host import cpu_flags, cpu_model, loaded_malloc
from training.recipes import Recipe


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("demo-run")
    recipe = tiny_recipe(epochs=3, ema_decay=0.9)
    return train(
        recipe, data_root=None, out_dir=out, device="cpu", progress=False, limit_per_class=40
    )


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_trains_clearly_above_chance(demo_run: TrainResult) -> None:
    # 8 classes: chance is 12.5 %.
    assert demo_run.best_val_accuracy >= 0.35
    assert demo_run.completed and demo_run.epochs_run == 3
    assert demo_run.test_accuracy is not None and demo_run.test_accuracy >= 0.3
    assert 1 <= demo_run.best_epoch <= 3


def test_checkpoint_round_trip_gives_the_same_val_accuracy(demo_run: TrainResult) -> None:
    ckpt = load_checkpoint(demo_run.best_checkpoint)
    assert ckpt.architecture == "fastnet"
    assert ckpt.epoch == demo_run.best_epoch
    assert ckpt.metrics["val_accuracy"] == pytest.approx(demo_run.best_val_accuracy)
    assert ckpt.metrics["test_accuracy"] == pytest.approx(demo_run.test_accuracy)
    assert ckpt.resume is None  # best.pt is for export; last.pt carries resume state
    assert load_checkpoint(demo_run.last_checkpoint).resume is not None
    model = ckpt.build_model()
    bundle = load_data(
        "demo",
        None,
        image_size=ckpt.data.height,
        channels=ckpt.data.channels,
        val_fraction=ckpt.data.val_fraction,
        split_seed=ckpt.data.split_seed,
        limit_per_class=40,
        progress=False,
    )
    assert bundle.info.labels == ckpt.data.labels
    stats = evaluate(
        model,
        bundle.val.images,
        bundle.val.labels,
        preprocess=ckpt.data.input_preprocess(),
    )
    assert stats.accuracy == pytest.approx(demo_run.best_val_accuracy, abs=1e-9)


def test_final_float32_evaluation_is_what_the_checkpoint_reports(demo_run: TrainResult) -> None:
    summary = json.loads((demo_run.run_dir / "summary.json").read_text())
    ckpt = load_checkpoint(demo_run.best_checkpoint)
    assert demo_run.val_accuracy is not None
    assert summary["val_accuracy"] == pytest.approx(summary["val_report"]["accuracy"], abs=1e-9)
    assert ckpt.metrics["val_accuracy"] == pytest.approx(summary["val_accuracy"], abs=1e-9)
    assert demo_run.val_accuracy == pytest.approx(summary["val_accuracy"], abs=1e-9)
    assert demo_run.final_val_accuracy == demo_run.val_accuracy
    # Trained in float32: the epoch's own evaluation and the final one agree.
    assert demo_run.val_accuracy == pytest.approx(demo_run.best_val_accuracy, abs=1e-9)


def test_epoch_figures_that_disagree_with_float32_do_not_reach_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under autocast the epoch's evaluation runs in bf16 and can differ from the float32
    graph that is exported by a few images. Simulated here by shifting every epoch figure:
    best.pt (hence the manifest), summary.json and the result carry the final float32 one."""
    import training.engine as engine

    real_evaluate = engine.evaluate

    def shifted(*args: object, **kwargs: object) -> engine.EpochStats:
        stats = real_evaluate(*args, **kwargs)  # type: ignore[arg-type]
        return replace(stats, accuracy=stats.accuracy / 2)

    monkeypatch.setattr(engine, "evaluate", shifted)
    result = train(
        tiny_recipe(epochs=1, tta=0),
        data_root=None,
        out_dir=tmp_path / "run",
        device="cpu",
        progress=False,
        limit_per_class=12,
    )
    summary = json.loads((result.run_dir / "summary.json").read_text())
    final = summary["val_report"]["accuracy"]
    assert final > 0
    assert result.best_val_accuracy == pytest.approx(final / 2, abs=1e-9)
    assert result.val_accuracy == pytest.approx(final, abs=1e-9)
    assert result.final_val_accuracy == pytest.approx(final, abs=1e-9)
    assert summary["val_accuracy"] == pytest.approx(final, abs=1e-9)
    assert summary["best_val_accuracy"] == pytest.approx(final / 2, abs=1e-9)
    assert load_checkpoint(result.best_checkpoint).metrics["val_accuracy"] == pytest.approx(final)
    # last.pt is the resume state of the epoch: it keeps the epoch's own figure.
    last = load_checkpoint(result.last_checkpoint)
    assert last.metrics["val_accuracy"] == pytest.approx(final / 2, abs=1e-9)


def test_metrics_jsonl_has_documented_keys(demo_run: TrainResult) -> None:
    lines = (demo_run.run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert set(METRIC_KEYS) <= set(row)
        assert 0.0 <= row["train_acc"] <= 1.0 and 0.0 <= row["val_acc"] <= 1.0
        assert row["train_loss"] > 0 and row["val_loss"] > 0
        assert row["seconds"] > 0 and row["images_per_s"] > 0
    # onecycle: the lr of each epoch's last step falls linearly to final_lr_factor (0).
    assert rows[0]["lr"] > rows[1]["lr"] > rows[2]["lr"] == pytest.approx(0.0)
    assert max(r["val_acc"] for r in rows) == pytest.approx(demo_run.best_val_accuracy)
    assert sum(r["best"] for r in rows) >= 1


def test_plots_and_summary_written(demo_run: TrainResult) -> None:
    for name in ("curves.png", "confusion_val.png", "confusion_test.png"):
        width, height = _png_size(demo_run.run_dir / name)
        assert 300 <= width <= 4000 and 300 <= height <= 4000, name
    summary = json.loads((demo_run.run_dir / "summary.json").read_text())
    assert summary["best_val_accuracy"] == pytest.approx(demo_run.best_val_accuracy)
    assert summary["test_accuracy"] == pytest.approx(demo_run.test_accuracy)
    assert summary["recipe"]["name"] == "demo_fastnet"
    confusion = summary["val_report"]["confusion"]
    assert len(confusion) == 8 and sum(map(sum, confusion)) == summary["data"]["val_images"]
    assert json.loads((demo_run.run_dir / "recipe.json").read_text())["ema_decay"] == 0.9
    # What the pytest process runs on, as training/host.py sees it.
    assert summary["malloc"] == loaded_malloc() and summary["cpu_flags"] == cpu_flags()
    assert summary["cpu_model"] == cpu_model()


def test_ema_weights_are_the_ones_checkpointed(demo_run: TrainResult) -> None:
    last = load_checkpoint(demo_run.last_checkpoint)
    assert last.resume is not None
    raw = last.resume["model"]
    ema = last.state_dict
    differing = [k for k in ema if ema[k].is_floating_point() and not torch.equal(ema[k], raw[k])]
    assert differing, "with EMA on, the exported weights must be the averaged ones"
    assert torch.equal(ema[differing[0]], last.resume["ema"]["module"][differing[0]])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    assert ckpt.resume is not None
    return dict(ckpt.resume["model"])


def test_resume_continues_exactly(tmp_path: Path) -> None:
    recipe = tiny_recipe(epochs=3, lookahead_k=2)
    common = {"data_root": None, "device": "cpu", "progress": False, "limit_per_class": 8}
    whole = train(recipe, out_dir=tmp_path / "whole", **common)  # type: ignore[arg-type]
    part = train(recipe, out_dir=tmp_path / "part", stop_after_epoch=2, **common)  # type: ignore[arg-type]
    assert not part.completed and part.test_accuracy is None
    assert load_checkpoint(part.last_checkpoint).epoch == 2
    resumed = train(recipe, out_dir=tmp_path / "part", resume=part.last_checkpoint, **common)  # type: ignore[arg-type]
    assert resumed.completed and resumed.epochs_run == 3
    rows = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    a, b = _weights(whole.last_checkpoint), _weights(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    whole_rows = [
        json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["val_acc"] for r in rows] == [r["val_acc"] for r in whole_rows]


def test_resume_refuses_a_finished_run(tmp_path: Path, demo_run: TrainResult) -> None:
    from training.errors import TrainingError

    recipe = tiny_recipe(epochs=3, ema_decay=0.9)
    with pytest.raises(TrainingError, match="already trained 3 of 3 epochs"):
        train(
            recipe,
            data_root=None,
            out_dir=tmp_path,
            resume=demo_run.last_checkpoint,
            device="cpu",
            progress=False,
            limit_per_class=50,
        )
    with pytest.raises(TrainingError, match="no resume state"):
        train(
            recipe.override(epochs=5),
            data_root=None,
            out_dir=tmp_path,
            resume=demo_run.best_checkpoint,
            device="cpu",
            progress=False,
        )


def test_evaluate_command_reproduces_val_accuracy(
    demo_run: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imgzoo.cli import main

    argv = [
        "evaluate",
        str(demo_run.best_checkpoint),
        "--split",
        "val",
        "--out",
        str(tmp_path),
        "--no-cache",
        "--no-progress",
        "--json",
    ]
    # The checkpoint's split was made with limit_per_class=40; the full demo val split is
    # evaluated here, so compare against a fresh report, not the training figure.
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] >= 0.35
    assert sum(map(sum, report["confusion"])) == 800
    _png_size(tmp_path / "confusion_val.png")
    assert (
        json.loads((tmp_path / "evaluation_val.json").read_text())["accuracy"] == report["accuracy"]
    )


def test_evaluate_command_on_a_folder(
    demo_run: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imgzoo.cli import main
    from training.demo_data import write_demo_images

    paths = write_demo_images(tmp_path / "flat", 40, seed=99)
    for path in paths:  # <label>_<i>.png -> <label>/<i>.png
        label = path.stem.rsplit("_", 1)[0]
        (tmp_path / "imgs" / label).mkdir(parents=True, exist_ok=True)
        path.rename(tmp_path / "imgs" / label / path.name)
    assert (
        main(
            [
                "evaluate",
                str(demo_run.best_checkpoint),
                "--folder",
                str(tmp_path / "imgs"),
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "(40 images)" in out
    assert "accuracy" in out and "macro f1" in out
    _png_size(tmp_path / "confusion_folder.png")


def test_chroma_subsampling_is_trained_with_and_recorded(tmp_path: Path) -> None:
    """The recipe's chroma low-pass is in the checkpoint, and evaluation through it (what the
    exported graph does) reproduces the training run's validation figures; without it, not.
    The recipe's resize policy is recorded beside it (the manifest's serving policy)."""
    result = train(
        tiny_recipe(epochs=1, chroma_subsampling=2, resize="letterbox", interpolation="lanczos"),
        data_root=None,
        out_dir=tmp_path,
        device="cpu",
        progress=False,
        limit_per_class=40,
    )
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt.data.chroma_subsampling == 2
    assert (ckpt.data.resize, ckpt.data.interpolation) == ("letterbox", "lanczos")
    assert ckpt.hyperparameters["chroma_subsampling"] == 2
    bundle = load_data("demo", None, limit_per_class=40, progress=False)
    model = ckpt.build_model()
    recorded = evaluate(
        model, bundle.val.images, bundle.val.labels, preprocess=ckpt.data.input_preprocess()
    )
    plain = replace(ckpt.data, chroma_subsampling=1).input_preprocess()
    without = evaluate(model, bundle.val.images, bundle.val.labels, preprocess=plain)
    assert recorded.accuracy == pytest.approx(result.best_val_accuracy, abs=1e-9)
    assert abs(recorded.loss - without.loss) > 1e-4


def test_chroma_subsampling_needs_rgb_and_a_divisible_size() -> None:
    info = load_data("demo", None, limit_per_class=2, progress=False).info
    recipe = tiny_recipe(chroma_subsampling=2)
    assert _with_input_preparation(info, recipe).chroma_subsampling == 2
    with pytest.raises(TrainingError, match="needs RGB input; demo is loaded with 1 channel"):
        _with_input_preparation(replace(info, channels=1), recipe)
    with pytest.raises(TrainingError, match="the 30x30 input is not divisible by chroma"):
        odd = replace(info, height=30, width=30)
        _with_input_preparation(odd, tiny_recipe(chroma_subsampling=4))


def test_checkpoints_from_before_chroma_subsampling_load_without_it() -> None:
    info = load_data("demo", None, limit_per_class=2, progress=False).info
    old = {k: v for k, v in info.to_dict().items() if k != "chroma_subsampling"}
    assert DataInfo.from_dict(old).chroma_subsampling == 1


def _train_demo(recipe: Recipe, out_dir: Path, limit_per_class: int = 8) -> TrainResult:
    """A run on the embedded demo set, on the CPU, without progress bars."""
    return train(
        recipe,
        data_root=None,
        out_dir=out_dir,
        device="cpu",
        progress=False,
        limit_per_class=limit_per_class,
    )


def test_rotation_and_zoom_reach_the_training_batches(tmp_path: Path) -> None:
    plain = tiny_recipe(epochs=1)
    turned = tiny_recipe(epochs=1, rotate=15.0, zoom=0.1)
    runs = [
        _train_demo(recipe, tmp_path / name)
        for name, recipe in (("plain", plain), ("again", plain), ("turned", turned))
    ]
    a, b, c = (_weights(run.last_checkpoint) for run in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same batches
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the affine step changed them


def test_epoch_sizes_shrink_exactly_the_listed_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progressive resizing: epoch 1 trains on 16 px batches, epoch 2 at the input size, and
    validation (what the checkpoint reports) always at the input size."""
    import training.engine as engine

    seen: list[tuple[int, int]] = []

    def recording(images: torch.Tensor, size: int) -> torch.Tensor:
        seen.append((images.shape[-1], size))
        return downscale(images, size)

    monkeypatch.setattr(engine, "downscale", recording)
    small = _train_demo(tiny_recipe(epochs=2, epoch_sizes=(16,)), tmp_path / "small")
    batches_per_epoch = len(seen)
    assert batches_per_epoch > 0
    assert set(seen) == {(DEMO_IMAGE_SIZE, 16)}
    full = _train_demo(tiny_recipe(epochs=2), tmp_path / "full")
    assert len(seen) == batches_per_epoch  # no epoch of the plain recipe was shrunk
    a, b = _weights(small.last_checkpoint), _weights(full.last_checkpoint)
    assert not all(torch.equal(a[k], b[k]) for k in a)
    rows = [
        json.loads(line) for line in (tmp_path / "small" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["epoch"] for row in rows] == [1, 2]
    ckpt = load_checkpoint(small.last_checkpoint)
    assert (ckpt.data.height, ckpt.data.width) == (DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE)


def test_epoch_sizes_larger_than_the_input_are_refused() -> None:
    info = load_data("demo", None, limit_per_class=2, progress=False).info
    with pytest.raises(TrainingError, match=r"epoch_sizes \[48\] exceed the 32x32 input"):
        _with_input_preparation(info, tiny_recipe(epoch_sizes=(16, 48)))


def test_an_epoch_size_the_network_cannot_take_is_refused_before_training(
    tmp_path: Path,
) -> None:
    recipe = tiny_recipe(model="vgg19", whiten=False, whiten_bias_epochs=None, epoch_sizes=(16,))
    with pytest.raises(TrainingError, match="vgg19 cannot train at 16 px"):
        _train_demo(recipe, tmp_path, limit_per_class=2)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cpu_training_logs_the_malloc_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import training.engine as engine

    asked: list[int] = []

    def hint(batch_pixels: int) -> str:
        asked.append(batch_pixels)
        return "malloc: LD_PRELOAD=/x/libtcmalloc.so.4"

    monkeypatch.setattr(engine, "malloc_hint", hint)
    recipe = tiny_recipe(epochs=1)
    with caplog.at_level("INFO", logger="training.engine"):
        train(
            recipe,
            data_root=None,
            out_dir=tmp_path,
            device="cpu",
            progress=False,
            limit_per_class=8,
        )
    assert [r.message for r in caplog.records].count("malloc: LD_PRELOAD=/x/libtcmalloc.so.4") == 1
    assert asked == [recipe.batch_size * DEMO_IMAGE_SIZE**2]  # one channel's pixels per batch
    # Nothing to suggest (tcmalloc already loaded, or not Linux): nothing logged.
    monkeypatch.setattr(engine, "malloc_hint", lambda batch_pixels: None)
    caplog.clear()
    with caplog.at_level("INFO", logger="training.engine"):
        train(
            recipe,
            data_root=None,
            out_dir=tmp_path / "b",
            device="cpu",
            progress=False,
            limit_per_class=8,
        )
    assert not [r for r in caplog.records if r.message.startswith("malloc:")]
    assert any(r.message.startswith("training demo_fastnet") for r in caplog.records)
