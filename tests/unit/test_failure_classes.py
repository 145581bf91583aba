"""Failure classes (mlcycle.errors.failure_class): what a retry cannot fix fails at once, the rest is retried.

The classes on real exceptions, and the class the CLI writes into a failure's result for a real spec
error, a real unanswered MLflow server and a real full disk (the last in test_integrity.py).
"""

from __future__ import annotations

import errno
import socket
import urllib.error
import urllib.request

import pytest

from mlcycle.errors import (
    PERMANENT,
    TRANSIENT,
    DataQualityError,
    NotEnoughData,
    SourceError,
    SpecError,
    ValidationFailed,
    failure_class,
)
from tests.integration.airflow_env import free_port
from tests.unit.test_cli import last_json, run_cli


def _raised(make) -> BaseException:
    try:
        make()
    except BaseException as exc:  # noqa: BLE001 - the exception itself is under test
        return exc
    raise AssertionError("nothing was raised")


def _refused_download() -> None:
    url = f"http://127.0.0.1:{free_port()}/data.csv"
    try:
        urllib.request.urlopen(url, timeout=5)
    except OSError as exc:
        raise SourceError(f"cannot download {url}: {exc}") from exc


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: (_ for _ in ()).throw(ValidationFailed("1 partition(s) failed the suite")), PERMANENT),
        (lambda: (_ for _ in ()).throw(SpecError("model.family 'xgb' is not known")), PERMANENT),
        (lambda: (_ for _ in ()).throw(DataQualityError("`temp` is constant")), PERMANENT),
        (lambda: (_ for _ in ()).throw(NotEnoughData("3 rows")), PERMANENT),
        (lambda: {}["a column the code expected"], PERMANENT),  # a bug in the step's own code
        (lambda: int("x"), PERMANENT),
        (lambda: socket.create_connection(("127.0.0.1", free_port()), timeout=5), TRANSIENT),  # refused
        (_refused_download, TRANSIENT),  # a typed source error whose cause is a lost connection
        (
            lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device", "/store/x")),
            TRANSIENT,
        ),
        (lambda: (_ for _ in ()).throw(OSError(errno.EACCES, "Permission denied", "/store/x")), PERMANENT),
    ],
    ids=[
        "rejected-batch",
        "spec-error",
        "constant-feature",
        "not-enough-data",
        "key-error",
        "value-error",
        "connection-refused",
        "download-refused",
        "disk-full",
        "permission-denied",
    ],
)
def test_the_class_of_each_kind_of_failure(make, kind):
    assert failure_class(_raised(make)) == kind


def test_an_object_store_that_does_not_answer_is_transient(monkeypatch):
    """Both S3 clients of the store (pyarrow's for data, boto3's for pointers) against a closed port."""
    from mlcycle.objects import objects_for
    from mlcycle.storepath import store_root

    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    data = _raised(lambda: (store_root("s3://bucket/store") / "x.json").read_text())
    assert "NETWORK_CONNECTION" in str(data) and failure_class(data) == TRANSIENT
    pointer = _raised(lambda: objects_for("s3://bucket/store", env=env).get("CURRENT.json"))
    assert failure_class(pointer) == TRANSIENT


def test_a_wrapped_connection_error_is_transient():
    from mlflow.exceptions import MlflowException

    wrapped = MlflowException(
        "API request to http://mlflow:5000/api/2.0/mlflow/runs/get failed with exception "
        "HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded with url"
    )
    assert failure_class(wrapped) == TRANSIENT
    assert failure_class(MlflowException("Run 'abc' not found")) == PERMANENT


def test_a_spec_error_is_permanent_in_the_result(tmp_path):
    proc = run_cli(
        tmp_path,
        "ingest",
        "--pipeline",
        str(tmp_path / "missing.yaml"),
        "--start",
        "2011-03-05",
        "--end",
        "2011-03-06",
    )
    assert proc.returncode == 1
    result = last_json(proc.stdout)
    assert result["failure_class"] == PERMANENT and "missing.yaml" in result["error"]


def test_an_unanswered_mlflow_server_is_transient_in_the_result(tmp_path, monkeypatch):
    from tests.unit import conftest

    port = free_port()
    real_env = conftest.step_env
    monkeypatch.setattr(
        "tests.unit.test_cli.step_env",
        lambda tmp: {
            **real_env(tmp),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
            "MLCYCLE_MLFLOW_TIMEOUT": "5",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        },
    )
    proc = run_cli(
        tmp_path, "register", "--pipeline", "bikeshare", "--run-id", "abc", "--model-uri", "runs:/abc/m"
    )
    assert proc.returncode == 1, proc.stderr
    result = last_json(proc.stdout)
    assert result["failure_class"] == TRANSIENT, result
    assert f"127.0.0.1:{port} did not answer" in result["error"]
