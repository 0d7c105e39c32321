"""Bad input through `imgzoo.cli.main`: exit code 2, one `error:` line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imgzoo.cli import main
from tests.training.conftest import tiny_recipe
from training.checkpoint import Checkpoint, DataInfo


def _fake_checkpoint(path: Path, *, tamper: bool) -> Path:
    from models import get_model

    recipe = tiny_recipe()
    kwargs = {"num_classes": 8, "in_channels": 3, "image_size": 16}
    state = get_model("fastnet", **kwargs).state_dict()
    if tamper:
        key = next(k for k, v in state.items() if v.dim() == 4)
        state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    Checkpoint(
        architecture="fastnet",
        model_kwargs=kwargs,
        state_dict=state,
        data=DataInfo(
            dataset="demo",
            labels=[f"c{i}" for i in range(8)],
            height=16,
            width=16,
            channels=3,
            mean=[0.5] * 3,
            std=[0.25] * 3,
        ),
        recipe=recipe.name,
        hyperparameters=recipe.to_dict(),
        seed=0,
        device="cpu",
        epoch=1,
        epochs=1,
        train_seconds=1.0,
        metrics={"val_accuracy": 0.5},
    ).save(path)
    return path


def _run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"imgzoo {argv[0]}: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (
            ["--dataset", "folder", "--model", "fastnet", "--data-root", "{missing}"],
            "does not exist",
        ),
        (["--dataset", "folder", "--model", "fastnet", "--data-root", "{empty}"], "is empty"),
        (["--dataset", "demo", "--model", "no_such_net"], "no_such_net"),
        (["--dataset", "no_such_data", "--model", "fastnet"], "no_such_data"),
        (["--recipe", "demo_fastnet", "--set", "colour=red"], "unknown recipe field 'colour'"),
        (["--recipe", "demo_fastnet", "--set", "epochs=lots"], "needs int"),
        (["--recipe", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
        (["--epochs", "3"], "say what to train"),
        (["--recipe", "demo_fastnet", "--device", "cuda:7"], "cuda"),
    ],
)
def test_train_bad_input(
    extra: list[str], expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    argv = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--no-cache"]
    argv += [a.format(missing=tmp_path / "missing", empty=tmp_path / "empty") for a in extra]
    line = _run_error(argv, capsys)
    assert expect in line
    assert not (tmp_path / "run" / "best.pt").exists()


def test_evaluate_tampered_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _fake_checkpoint(tmp_path / "bad.pt", tamper=True)
    line = _run_error(["evaluate", str(ckpt)], capsys)
    assert "do not fit architecture 'fastnet'" in line


def test_evaluate_missing_and_foreign_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "no such checkpoint" in _run_error(["evaluate", str(tmp_path / "nope.pt")], capsys)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint" in _run_error(["evaluate", str(junk)], capsys)


def test_evaluate_folder_with_unknown_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    ckpt = _fake_checkpoint(tmp_path / "ok.pt", tamper=False)
    for cls in ("c0", "zebra"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (16, 16), "red").save(tmp_path / "imgs" / cls / "a.png")
    line = _run_error(
        ["evaluate", str(ckpt), "--folder", str(tmp_path / "imgs"), "--no-progress"], capsys
    )
    assert "zebra" in line


def test_resume_from_checkpoint_without_resume_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = _fake_checkpoint(tmp_path / "best.pt", tamper=False)
    line = _run_error(
        ["train", "--resume", str(ckpt), "--no-progress", "--no-cache", "--epochs", "3"], capsys
    )
    assert "no resume state" in line
    line = _run_error(["train", "--resume", str(ckpt), "--recipe", "demo_fastnet"], capsys)
    assert "--resume continues the checkpoint's recipe" in line


def test_recipes_command_lists_every_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    from training.recipes import RECIPES

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["recipe", "dataset", "model"]
    assert sorted(line.split()[0] for line in out[1:]) == sorted(RECIPES)
    assert main(["recipes", "demo_fastnet", "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["model"] == "fastnet"
