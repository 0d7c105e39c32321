"""Settings, per-model config, the CPU budget, provider planning, and the torch-free import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgzoo.errors import UserError
from service.dataplane import softmax, top_k_predictions
from service.registry import warmup_batch_sizes
from service.runtime import (
    ProviderUnavailableError,
    cgroup_cpu_limit,
    plan_providers,
    threads_per_session,
)
from service.settings import BatchingConfig, ModelConfig, Settings, load_model_config


def test_environment_is_read_with_the_prefix_and_keywords_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMGZOO_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("IMGZOO_PROVIDERS", "cpu")
    monkeypatch.setenv("IMGZOO_IMAGE_FORMATS", '["PNG","JPEG"]')
    monkeypatch.setenv("MAX_BATCH_SIZE", "3")  # no prefix: ignored
    settings = Settings(sessions=2)
    assert settings.max_batch_size == 64
    assert settings.providers == "cpu"
    assert settings.image_formats == ("PNG", "JPEG")
    assert settings.sessions == 2
    assert Settings(max_batch_size=5).max_batch_size == 5


@pytest.mark.parametrize(
    "bad", [{"max_batch_size": 0}, {"providers": "gpu"}, {"port": 70000}, {"nonsense": 1}]
)
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Settings(**bad)  # type: ignore[arg-type]


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_model_config_overrides_only_what_it_names(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"max_batch_size": 4, "timeout_ms": 50}))
    config = load_model_config(tmp_path, "config.json")
    effective = BatchingConfig.resolve(Settings(sessions=3, request_timeout_ms=999), config)
    assert effective.max_batch_size == 4 and effective.timeout_ms == 50
    assert effective.sessions == 3
    assert load_model_config(tmp_path / "absent", "config.json") == ModelConfig()


@pytest.mark.parametrize("text", ["{not json", '{"max_batch_size": -1}', '{"workers": 2}'])
def test_invalid_model_config_is_a_user_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UserError):
        load_model_config(tmp_path, "config.json")


def test_cgroup_quota_is_read_from_the_process_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    leaf = root / "kubepods" / "pod1"
    leaf.mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "cpu.max").write_text("300000 100000\n")
    (leaf / "cpu.max").write_text("150000 100000\n")
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("0::/kubepods/pod1\n")
    assert cgroup_cpu_limit(root, self_cgroup) == 1.5
    (leaf / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, self_cgroup) == 3.0
    (root / "kubepods" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, self_cgroup) is None
    assert cgroup_cpu_limit(tmp_path / "absent", tmp_path / "absent-self") is None


def test_threads_follow_the_setting_or_share_the_cpus() -> None:
    assert threads_per_session(3, sessions=4) == 3
    assert threads_per_session(0, sessions=1) >= threads_per_session(0, sessions=2) >= 1


def test_provider_plans() -> None:
    assert plan_providers("cpu").providers == ("CPUExecutionProvider",)
    assert plan_providers("auto").providers[-1] == "CPUExecutionProvider"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
            plan_providers("cuda")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderUnavailableError):
            plan_providers("tensorrt")


def test_warmup_sizes_cover_one_powers_of_two_and_the_maximum() -> None:
    assert warmup_batch_sizes(1) == [1]
    assert warmup_batch_sizes(12) == [1, 2, 4, 8, 12]
    assert warmup_batch_sizes(16) == [1, 2, 4, 8, 16]


def test_softmax_is_stable_and_top_k_is_ordered() -> None:
    logits = np.array([1000.0, 1001.0, -1000.0, 1001.0], dtype=np.float32)
    probabilities = softmax(logits)
    assert np.isfinite(probabilities).all() and probabilities.sum() == pytest.approx(1.0)
    ranked = top_k_predictions(logits, ["a", "b", "c", "d"], 3)
    assert [p["index"] for p in ranked] == [1, 3, 0]  # a tie keeps index order
    assert ranked[0]["probability"] == pytest.approx(np.e / (1 + 2 * np.e))


def test_serving_code_never_imports_torch() -> None:
    code = (
        "import sys, service.app, service.cli\n"
        "from service.settings import Settings\n"
        "service.app.create_app(Settings(repository='.'))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'models', 'training', 'export', 'onnx'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""
