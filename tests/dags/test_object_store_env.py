"""What a step gets to reach a store in object storage (pipeline_support.object_store)."""

from __future__ import annotations

import json

import pytest

from pipeline_support.object_store import object_store_env


@pytest.fixture
def clean(monkeypatch):
    for name in (
        "MLCYCLE_STORE",
        "MLCYCLE_ARTIFACT_ROOT",
        "MLCYCLE_S3_CONN_ID",
        "AIRFLOW_CONN_MLCYCLE_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_local_store_gets_nothing(clean):
    clean.setenv("MLCYCLE_STORE", "/data/store")
    clean.setenv("AWS_ACCESS_KEY_ID", "kept-out")
    assert object_store_env() == {}


def test_the_connection_gives_the_keys_and_the_endpoint(clean):
    clean.setenv("MLCYCLE_STORE", "s3://bucket/store")
    clean.setenv("AWS_REGION", "eu-west-1")  # the worker's own, overridden by the connection's
    clean.setenv(
        "AIRFLOW_CONN_MLCYCLE_S3",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "key",
                "password": "secret",
                "extra": {"endpoint_url": "http://127.0.0.1:8333", "region_name": "us-east-1"},
            }
        ),
    )
    assert object_store_env() == {
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8333",
        "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:8333",
    }


def test_another_connection_by_name_and_an_endpoint_from_host_and_port(clean):
    clean.setenv("MLCYCLE_ARTIFACT_ROOT", "s3://bucket/mlflow")
    clean.setenv("MLCYCLE_S3_CONN_ID", "minio")
    clean.setenv(
        "AIRFLOW_CONN_MINIO",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "k",
                "password": "s",
                "host": "minio.internal",
                "port": 9000,
                "schema": "https",
            }
        ),
    )
    env = object_store_env()
    assert env["AWS_ENDPOINT_URL_S3"] == "https://minio.internal:9000" and env["AWS_ACCESS_KEY_ID"] == "k"


def test_without_a_connection_the_workers_environment_is_passed(clean):
    clean.setenv("MLCYCLE_STORE", "s3://bucket/store")
    clean.setenv("AWS_ACCESS_KEY_ID", "from-role")
    clean.setenv("AWS_REGION", "eu-west-1")
    assert object_store_env() == {"AWS_ACCESS_KEY_ID": "from-role", "AWS_REGION": "eu-west-1"}


def test_the_docker_runner_passes_the_keys_privately(clean, tmp_path):
    """The step container gets the keys through ``private_environment``: never a rendered field."""
    from pipeline_support.docker_runner import docker_step

    clean.setenv("MLCYCLE_HOME", str(tmp_path))
    clean.setenv("MLCYCLE_STORE", "s3://bucket/store")
    clean.setenv("AWS_ACCESS_KEY_ID", "key-id")
    hidden = "not-to-be-rendered"
    clean.setenv("AWS_SECRET_ACCESS_KEY", hidden)
    op = docker_step("ingest", ["ingest", "--pipeline", "bikeshare"], env={}, task_id="ingest")
    op._prepare("k")
    assert op._private_environment["AWS_SECRET_ACCESS_KEY"] == hidden
    assert hidden not in json.dumps(op.environment) and "AWS_ACCESS_KEY_ID" not in op.environment
    assert op.environment["MLCYCLE_STORE"] == "s3://bucket/store"
