"""Shared test fixtures: paths of the project and its two environments."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_BIN = ROOT / ".venv" / "bin"
STEPS_BIN = ROOT / ".venv-steps" / "bin"
BIKESHARE_CSV = ROOT / "include" / "data" / "bikeshare" / "bikeshare_hourly_2011.csv"

sys.path.insert(0, str(ROOT / "dags"))  # the DAG helper package, as Airflow puts dags/ on the path


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT
