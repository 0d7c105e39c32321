"""deploy/requirements.py: what the images install, read from pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.helpers import REPO, load_script_module

requirements_mod = load_script_module("requirements")
PYPROJECT = REPO / "pyproject.toml"


def names(lines: list[str]) -> set[str]:
    return {requirements_mod.requirement_name(line) for line in lines}


def test_serve_image_has_no_torch_and_every_serving_dependency() -> None:
    lines = requirements_mod.requirements(PYPROJECT, ["serve"], "onnxruntime")
    got = names(lines)
    assert not got & {"torch", "torchvision", "onnx", "onnxscript"}
    for needed in ("fastapi", "uvicorn", "onnxruntime", "numpy", "pillow", "prometheus-client"):
        assert needed in got, needed
    assert len(lines) == len(got), "duplicates"


def test_gpu_package_replaces_onnxruntime_and_keeps_the_bound() -> None:
    lines = requirements_mod.requirements(PYPROJECT, ["serve"], "onnxruntime-gpu[cuda,cudnn]")
    ort = [line for line in lines if "onnxruntime" in line]
    assert ort == ["onnxruntime-gpu[cuda,cudnn]>=1.18"]


def test_explicit_version_is_kept_as_given() -> None:
    assert (
        requirements_mod.swap_onnxruntime("onnxruntime>=1.18", "onnxruntime==1.20.1")
        == "onnxruntime==1.20.1"
    )


def test_train_image_has_torch() -> None:
    got = names(requirements_mod.requirements(PYPROJECT, ["train"], "onnxruntime"))
    assert {"torch", "torchvision", "onnxruntime"} <= got


def test_unknown_extra_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown extra"):
        requirements_mod.requirements(PYPROJECT, ["nope"], "onnxruntime")


def test_cli_prints_one_requirement_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert requirements_mod.main([str(PYPROJECT), "serve", "--ort", "onnxruntime-gpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("onnxruntime-gpu") for line in out)
    assert not any(requirements_mod.requirement_name(line) == "onnxruntime" for line in out)
