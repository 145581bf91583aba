"""The Airflow image's entry point writes the admin's password file with a JSON encoder."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import AIRFLOW_BIN, ROOT

ENTRYPOINT = ROOT / "docker" / "airflow" / "entrypoint.sh"


@pytest.mark.parametrize(
    "password",
    ['quo"te', "back\\slash", 'x", "intruder": "y', "line\nbreak\ttab", "ünïcødé €"],
)
def test_password_round_trips_through_the_password_file(tmp_path, password):
    pwfile = tmp_path / "passwords.json"
    env = {
        "PATH": f"{AIRFLOW_BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT / "dags"),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW_ADMIN_USER": 'ad"min',
        "AIRFLOW_ADMIN_PASSWORD": password,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(pwfile),
        "MLCYCLE_HOSTNAME": "test-host",
    }
    proc = subprocess.run(
        ["sh", str(ENTRYPOINT), "version"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(pwfile.read_text()) == {'ad"min': password}
    assert pwfile.stat().st_mode & 0o077 == 0  # the file is the Airflow user's alone
