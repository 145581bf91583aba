"""scripts/ensure_bucket.py, the compose stack's bucket creation, against a real SeaweedFS.

It reads the keys from the Airflow connection (as the init job does, from an ``AIRFLOW_CONN_*``
variable), creates a missing bucket, leaves an existing one as it is, and fails with a message that
names the connection when the endpoint does not answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import s3_client

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ensure_bucket.py"


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW_CONN_", "MLCYCLE_STORE"))
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _connection(endpoint: str, s3_env: dict[str, str]) -> str:
    return json.dumps(
        {
            "conn_type": "aws",
            "login": s3_env["AWS_ACCESS_KEY_ID"],
            "password": s3_env["AWS_SECRET_ACCESS_KEY"],
            "extra": {"endpoint_url": endpoint, "region_name": s3_env["AWS_REGION"]},
        }
    )


def test_the_buckets_the_settings_name():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from ensure_bucket import buckets
    finally:
        sys.path.remove(str(SCRIPT.parent))
    env = {"MLCYCLE_STORE": "s3://data/store", "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": "s3://data/logs"}
    assert buckets(env) == ["data"]
    assert buckets({**env, "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": "s3://logs"}) == ["data", "logs"]
    assert buckets({"MLCYCLE_STORE": "/srv/store"}) == []


def test_creates_a_missing_bucket_through_the_connection_and_keeps_an_existing_one(s3_env):
    bucket = f"ensure-{uuid.uuid4().hex[:12]}"
    env = {
        "MLCYCLE_STORE": f"s3://{bucket}/store",
        "AIRFLOW_CONN_MLCYCLE_S3": _connection(s3_env["AWS_ENDPOINT_URL_S3"], s3_env),
    }
    client = s3_client(s3_env)
    try:
        first = _run(env, "--timeout", "20")
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"created s3://{bucket}" in first.stdout and f"s3://{bucket} is ready" in first.stdout
        client.put_object(Bucket=bucket, Key="store/kept", Body=b"kept")
        again = _run(env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "created" not in again.stdout
        assert client.get_object(Bucket=bucket, Key="store/kept")["Body"].read() == b"kept"
    finally:
        for key in ("store/kept", "_health/ready"):
            client.delete_object(Bucket=bucket, Key=key)
        client.delete_bucket(Bucket=bucket)


def test_an_endpoint_that_does_not_answer_fails_naming_the_connection(s3_env):
    from tests.integration.airflow_env import free_port

    env = {
        "MLCYCLE_STORE": "s3://nowhere/store",
        "AIRFLOW_CONN_MLCYCLE_S3": _connection(f"http://127.0.0.1:{free_port()}", s3_env),
        "AWS_MAX_ATTEMPTS": "1",
    }
    failed = _run(env, "--timeout", "3")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "s3://nowhere is not usable after 3 s (connection 'mlcycle_s3')" in failed.stderr, failed.stderr
    assert "waiting for s3://nowhere" in failed.stdout


def test_nothing_to_do_without_an_s3_location():
    done = _run({"MLCYCLE_STORE": "/srv/store"})
    assert done.returncode == 0 and "nothing to do" in done.stdout, done.stdout + done.stderr


@pytest.fixture(autouse=True)
def _airflow_home(tmp_path, monkeypatch):
    """The script starts Airflow's configuration: keep it out of the developer's own AIRFLOW_HOME."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
