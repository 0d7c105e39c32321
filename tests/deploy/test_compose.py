"""docker-compose.yml and its override files: schema-valid and wired together correctly."""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.deploy.helpers import DEPLOY, REPO, SCHEMAS, load_json, load_yaml, with_defaults

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the dev extra) validates")

COMPOSE = load_yaml(REPO / "docker-compose.yml")
GPU = load_yaml(DEPLOY / "compose.gpu.yml")
TEST = load_yaml(DEPLOY / "compose.test.yml")
SPEC = load_json(SCHEMAS / "compose_spec.json")
SERVICES: dict[str, Any] = COMPOSE["services"]


def spec_errors(document: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(SPEC)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("name", ["docker-compose.yml", "compose.gpu.yml", "compose.test.yml"])
def test_compose_files_match_the_compose_specification(name: str) -> None:
    document = {"docker-compose.yml": COMPOSE, "compose.gpu.yml": GPU, "compose.test.yml": TEST}
    assert spec_errors(document[name]) == []


def test_the_schema_rejects_a_broken_file() -> None:
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["api"]["restart_policy"] = "always"  # not a compose key
    broken["services"]["api"]["ports"] = "8000"  # must be a list
    assert len(spec_errors(broken)) >= 2


def test_services() -> None:
    assert set(SERVICES) == {"api", "prometheus", "grafana", "trainer"}
    assert SERVICES["trainer"]["profiles"] == ["trainer"]
    for name in ("api", "prometheus", "grafana"):
        assert "profiles" not in SERVICES[name], f"{name} starts with a plain `up`"


def volume_for(service: dict[str, Any], target: str) -> str:
    (volume,) = [v for v in service["volumes"] if with_defaults(v).split(":")[1] == target]
    return str(volume)


def test_api_serves_the_model_volume_read_only_with_health_and_restart() -> None:
    api = SERVICES["api"]
    volume = volume_for(api, "/models")
    assert volume.endswith(":/models:ro")
    assert with_defaults(volume) == "models:/models:ro"
    assert api["environment"]["IMGZOO_REPOSITORY"] == "/models"
    assert api["build"]["target"] == "serve"
    assert api["restart"] == "unless-stopped"
    test = " ".join(api["healthcheck"]["test"])
    assert test.startswith("CMD python3") and "/healthz" in test
    assert f":{api['environment']['IMGZOO_PORT']}/healthz" in test
    assert api["read_only"] is True


def test_trainer_fills_the_same_volume_writable() -> None:
    trainer = SERVICES["trainer"]
    assert trainer["build"]["target"] == "train"
    assert with_defaults(volume_for(trainer, "/models")) == "models:/models"
    assert "models" in COMPOSE["volumes"]


def test_ports_are_loopback_by_default() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert with_defaults(port).startswith("127.0.0.1:"), f"{name}: {port}"
    # deploy/test-deploy.sh asks for ephemeral loopback ports through the same variables.
    api_port = with_defaults(SERVICES["api"]["ports"][0], {"IMGZOO_API_PUBLISH": "127.0.0.1:"})
    assert api_port == "127.0.0.1::8000"


def test_bind_mounted_config_files_exist() -> None:
    # ./data (the trainer's data sets) is the user's; docker creates it when absent.
    for document in (COMPOSE, TEST):
        for name, service in document["services"].items():
            for volume in service.get("volumes", []):
                source = with_defaults(volume).split(":")[0]
                if source.startswith("./deploy/"):
                    assert (REPO / source).exists(), f"{name}: {source}"


def test_gpu_override_reserves_nvidia_gpus_for_the_api() -> None:
    api = GPU["services"]["api"]
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert api["environment"]["IMGZOO_PROVIDERS"] == "cuda"


def test_test_override_runs_on_the_cpu_without_restarts_or_extra_ports() -> None:
    services = TEST["services"]
    assert set(services) == {"api", "prometheus"}
    assert services["api"]["environment"]["IMGZOO_PROVIDERS"] == "cpu"
    for service in services.values():
        assert service["restart"] == "no"
        assert "ports" not in service  # compose would add to, not replace, the base ports
    (mount,) = services["prometheus"]["volumes"]
    config = "/etc/prometheus/prometheus.yml"
    assert mount.split(":")[1] == config
    assert volume_for(SERVICES["prometheus"], config) != mount


def scrape_jobs(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    config = load_yaml(DEPLOY / "prometheus" / name)
    return {job["job_name"]: job for job in config["scrape_configs"]}, config["global"]


def test_prometheus_scrapes_the_api_service() -> None:
    api = SERVICES["api"]
    target = f"api:{api['environment']['IMGZOO_PORT']}"
    for name, interval in (("prometheus.yml", "15s"), ("prometheus.test.yml", "2s")):
        jobs, global_ = scrape_jobs(name)
        job = jobs["imgzoo-api"]
        assert job["metrics_path"] == "/metrics"
        assert job["static_configs"][0]["targets"] == [target]
        assert global_["scrape_interval"] == interval


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus.test.yml"])
def test_promtool_accepts_the_prometheus_configs(name: str) -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / name)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
