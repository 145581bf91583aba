"""docker/compose.yaml as a file: it parses, and keeps the rules the README states for the stack."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = ROOT / "docker" / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_with_example_settings(tmp_path) -> str:
    """docker-compose (skips without it), with the example settings and their secrets filled in as
    ``tmp_path/.env``."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    env = (ROOT / "docker" / ".env.example").read_text()
    env = re.sub(
        r"^(POSTGRES_PASSWORD|AIRFLOW_\w*(PASSWORD|KEY|SECRET)|DOCKER_GID|S3_\w*_KEY)=$",
        r"\1=x",
        env,
        flags=re.M,
    )
    (tmp_path / ".env").write_text(env)
    return binary


def test_docker_compose_accepts_the_file_with_the_example_settings(tmp_path):
    binary = _compose_with_example_settings(tmp_path)
    done = subprocess.run(
        [binary, "--env-file", str(tmp_path / ".env"), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _config(tmp_path, **variables: str) -> dict:
    """The stack's configuration as docker-compose resolves it with the example settings and ``variables``."""
    binary = _compose_with_example_settings(tmp_path)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLCYCLE_")}
    done = subprocess.run(
        [binary, "--env-file", str(tmp_path / ".env"), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**environ, **variables},
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


#: The services that read specs: the DAG processor parses them, the workers run their steps, the API
#: server's pages name the pipelines (the scheduler and the triggerer share the same block).
SPEC_READERS = ("airflow-dag-processor", "airflow-scheduler", "airflow-apiserver", "worker")


def test_specs_outside_the_repository_are_mounted_at_their_own_path(tmp_path):
    default = _config(tmp_path)
    for name in SPEC_READERS:
        service = default["services"][name]
        assert service["environment"]["MLCYCLE_PIPELINES_DIR"] == "/opt/mlcycle/include/pipelines", name
        assert "specs:/opt/mlcycle/specs:ro" in service["volumes"], name

    own = _config(
        tmp_path,
        MLCYCLE_SPECS_HOST_DIR="/srv/specs",
        MLCYCLE_PIPELINES_DIR="/opt/mlcycle/include/pipelines:/srv/specs",
    )
    for name in SPEC_READERS:
        service = own["services"][name]
        # The same path on the host and in the worker: the worker names it to the Docker daemon,
        # which bind-mounts the spec's folder into the step container.
        assert "/srv/specs:/srv/specs:ro" in service["volumes"], name
        assert service["environment"]["MLCYCLE_PIPELINES_DIR"] == "/opt/mlcycle/include/pipelines:/srv/specs"


def test_data_models_and_logs_live_in_the_bucket_and_only_workers_keep_a_volume(tmp_path):
    config = _config(tmp_path, S3_ENDPOINT_URL="http://127.0.0.1:18333")
    services = config["services"]
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "worker"):
        env = services[name]["environment"]
        assert env["MLCYCLE_STORE"] == "s3://mlcycle/store", name
        assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True", name
        assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"] == "s3://mlcycle/logs", name
        connection = json.loads(env["AIRFLOW_CONN_MLCYCLE_S3"])
        assert connection["conn_type"] == "aws" and connection["login"] == "x", name
        assert connection["extra"]["endpoint_url"] == "http://127.0.0.1:18333", name
        # history features: the online store is the stack's Redis (database 1; Celery's broker is 0)
        assert env["MLCYCLE_ONLINE_STORE"] == "redis://127.0.0.1:16379/1", name
    command = services["mlflow"]["command"]
    assert command[command.index("--artifacts-destination") + 1] == "s3://mlcycle/mlflow"
    # No data volume but the workers' own (the deploy's proxy files and lock), the store's server and
    # Redis's (the online store appended to a file, so a restart keeps the features servers read).
    holders = {
        name
        for name, service in services.items()
        for volume in service.get("volumes", [])
        if str(volume).split(":")[1:2] == ["/data"]
    }
    assert holders == {"worker", "airflow-init", "seaweedfs", "redis"}, holders
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes", redis
    assert services["seaweedfs"]["healthcheck"]["test"][-1] == "http://127.0.0.1:18333/healthz"


def test_without_secrets_the_stack_refuses_to_start_and_says_how(tmp_path):
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (.ci/run installs it)")
    (tmp_path / ".env").write_text((ROOT / "docker" / ".env.example").read_text())
    done = subprocess.run(
        [binary, "--env-file", str(tmp_path / ".env"), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "run make stack" in done.stderr, done.stderr


def test_every_service_is_on_the_host_network_with_a_health_check_and_a_restart_policy(compose):
    for name, service in compose["services"].items():
        assert service.get("network_mode") == "host", name
        assert "restart" in service, name
        if name != "airflow-init":
            assert "healthcheck" in service, name


def test_only_the_workers_mount_the_docker_socket(compose):
    holders = [
        n
        for n, s in compose["services"].items()
        if any("docker.sock" in str(v) for v in s.get("volumes", []))
    ]
    assert holders == ["worker"]


def test_dependencies_wait_for_health_not_for_start(compose):
    for name, service in compose["services"].items():
        for dep, rule in (service.get("depends_on") or {}).items():
            expected = "service_completed_successfully" if dep == "airflow-init" else "service_healthy"
            assert rule == {"condition": expected}, (name, dep)


def test_images_are_pinned_and_no_secret_is_in_the_file(compose):
    text = COMPOSE.read_text()
    for name, service in compose["services"].items():
        image = service["image"].split(":-", 1)[-1].rstrip("}")
        assert ":" in image and not image.endswith(":latest"), (name, image)
    # Secrets are required variables of docker/.env, never values in the file.
    for key in (
        "POSTGRES_PASSWORD",
        "AIRFLOW_ADMIN_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "S3_ACCESS_KEY",
        "S3_SECRET_KEY",
    ):
        assert re.search(rf"\${{{key}(:\?[^}}]*)?}}", text), key
    assert not re.search(r"(?i)password:\s*['\"]?\w{6,}", text)
    example = (ROOT / "docker" / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=$", example, flags=re.M)
    assert "docker/.env" in (ROOT / ".gitignore").read_text().splitlines()
