"""deploy/k8s: schema-valid manifests (offline) that fit together and fit the image."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.helpers import DEPLOY, REPO, SCHEMAS, load_json, load_yaml_documents

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the dev extra) validates")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (the dev extra) bundles the schemas"
)

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"
CRD_SCHEMAS = {
    "ServiceMonitor": SCHEMAS / "servicemonitor.json",
    "InferenceService": SCHEMAS / "inferenceservice.json",
}
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
RESOURCES: dict[str, dict[str, Any]] = {
    doc["kind"]: doc for path in MANIFESTS for doc in load_yaml_documents(path)
}


def validate(resource: dict[str, Any]) -> None:
    kind = resource["kind"]
    if kind in CRD_SCHEMAS:
        jsonschema.Draft7Validator(load_json(CRD_SCHEMAS[kind])).validate(resource)
    else:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_is_schema_valid(path: Path) -> None:
    documents = load_yaml_documents(path)
    assert documents
    for document in documents:
        validate(document)


@pytest.mark.parametrize("kind", ["Deployment", "ServiceMonitor", "InferenceService"])
def test_validation_rejects_an_unknown_field(kind: str) -> None:
    broken = copy.deepcopy(RESOURCES[kind])
    broken["spec"]["replicaz"] = 3
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(broken)


def test_every_kind_is_there() -> None:
    assert set(RESOURCES) >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor",
        "InferenceService", "PersistentVolumeClaim",
    }  # fmt: skip


def test_kustomization_lists_existing_files() -> None:
    (kustomization,) = load_yaml_documents(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    # InferenceService needs KServe's CRDs: applied on its own (docs/deploy.md).
    assert "inferenceservice.yaml" not in kustomization["resources"]


def api_container() -> dict[str, Any]:
    (container,) = RESOURCES["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_probes_hit_healthz_and_readyz_on_the_served_port() -> None:
    container = api_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert ports["http"] == int(env["IMGZOO_PORT"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_model_volume_is_read_only_and_resources_are_set() -> None:
    pod = RESOURCES["Deployment"]["spec"]["template"]["spec"]
    container = api_container()
    env = {e["name"]: e["value"] for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["IMGZOO_REPOSITORY"]]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["readOnly"] is True
    claim = RESOURCES["PersistentVolumeClaim"]["metadata"]["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


def test_pod_user_is_the_image_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    pod = RESOURCES["Deployment"]["spec"]["template"]["spec"]
    uid = pod["securityContext"]["runAsUser"]
    assert f"USER {uid}:" in dockerfile
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert api_container()["securityContext"]["readOnlyRootFilesystem"] is True


def test_service_hpa_and_servicemonitor_point_at_the_deployment() -> None:
    deployment = RESOURCES["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = RESOURCES["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in api_container()["ports"]}
    target = RESOURCES["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    monitor = RESOURCES["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] == port["name"]
    assert monitor["endpoints"][0]["path"] == "/metrics"


def test_inferenceservice_runs_the_same_image_on_its_port() -> None:
    (container,) = RESOURCES["InferenceService"]["spec"]["predictor"]["containers"]
    assert container["image"] == api_container()["image"]
    args = container["args"]
    assert args[0] == "serve"
    port = int(args[args.index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    assert args[args.index("--repository") + 1] == "/mnt/models"  # KServe's storage mount
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
