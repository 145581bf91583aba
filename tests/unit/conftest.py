"""Fixtures of the step-package unit tests: an isolated MLCYCLE_HOME and small generated data sets."""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path

import pytest

from tests.datasets import make_classification_dataset

if importlib.util.find_spec("mlcycle") is None:
    # Collected from the Airflow environment, which has no step package: these tests belong to
    # the step environment (.venv-steps), so skip the folder instead of failing on imports.
    collect_ignore_glob = ["*"]

#: First day of the generated classification data set used by most tests.
START = dt.date(2011, 3, 1)


def step_env(tmp: Path) -> dict[str, str]:
    """Environment of a step run whose whole state (store, MLflow) lives under ``tmp``."""
    return {
        "MLCYCLE_HOME": str(tmp / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'home' / 'mlflow' / 'mlflow.db'}",
        "MLCYCLE_ARTIFACT_ROOT": (tmp / "home" / "mlflow" / "artifacts").as_uri(),
        "MLCYCLE_DAG_ID": "unit_dag",
        "MLCYCLE_RUN_ID": "unit__run_1",
        "MLCYCLE_CODE_VERSION": "0.0.0+gtest",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",
    }


def apply_env(mp: pytest.MonkeyPatch, tmp: Path):
    """Point every location at ``tmp`` and return the step Settings read from that environment."""
    from mlcycle.settings import Settings

    for name in ("MLCYCLE_STORE", "MLCYCLE_PIPELINES_DIR", "AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID"):
        mp.delenv(name, raising=False)
    for name, value in step_env(tmp).items():
        mp.setenv(name, value)
    return Settings.from_env()


def day_interval(day: dt.date):
    """The one-day data interval of a daily run for ``day``."""
    from mlcycle.steps._common import Interval

    return Interval(day, day + dt.timedelta(days=1))


@pytest.fixture(params=["file", "s3"])
def place(request, tmp_path) -> tuple[str, dict[str, str]]:
    """A fresh store location (a folder, then a prefix of the SeaweedFS test bucket) and the
    environment a process needs to reach it; the s3 case needs the ``s3_env`` server."""
    import uuid

    if request.param == "file":
        return str(tmp_path / "store"), {}
    env = request.getfixturevalue("s3_env")
    return f"s3://{env['MLCYCLE_TEST_S3_BUCKET']}/tests/{uuid.uuid4().hex}", env


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    return apply_env(monkeypatch, tmp_path)


@pytest.fixture
def clf_spec(tmp_path: Path):
    """The generated classification data set: 30 days from 2011-03-01, 24 rows a day."""
    from mlcycle.spec import load_spec

    return load_spec(make_classification_dataset(tmp_path / "data", days=30, start=START.isoformat()))
