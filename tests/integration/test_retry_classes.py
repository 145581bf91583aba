"""Retry classes in a real `airflow dags test`: with retries=2, a permanent failure takes one try, a
transient one takes all three, and each failure alert says which class it was.

Two independent real steps of the local runner: `ingest` of a spec that does not exist (a spec
error: permanent) and `register` against an MLflow server that does not answer (transient).
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.conftest import ROOT
from tests.integration.airflow_env import AirflowProject, free_port

pytestmark = pytest.mark.integration

RUN_DATE = "2011-06-30"

PROBE_DAG = '''
"""Retry probe: two steps with retries=2, one failing for good, one failing for a silent server."""
from datetime import timedelta

import pendulum
from airflow.sdk import dag
from pipeline_support.alerts import failure_notifier
from pipeline_support.runner import LocalStepOperator


@dag(schedule=None, start_date=pendulum.datetime(2011, 1, 1, tz="UTC"), catchup=False, tags=["test"],
     default_args={"owner": "mlops", "retries": 2, "retry_delay": timedelta(0),
                   "on_failure_callback": [failure_notifier()]})
def retry_probe():
    LocalStepOperator(task_id="spec_error", step="ingest",
                      command=["ingest", "--pipeline", "/no/such/spec.yaml", "--start", "2011-06-29",
                               "--end", "2011-06-30"])
    LocalStepOperator(task_id="silent_mlflow", step="register",
                      command=["register", "--pipeline", "bikeshare", "--run-id", "abc", "--model-uri", "runs:/abc/m"],
                      env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:__PORT__", "MLCYCLE_MLFLOW_TIMEOUT": "3"})


retry_probe()
'''


def _tries(project: AirflowProject, task_id: str) -> int:
    with sqlite3.connect(project.home / "airflow" / "airflow.db") as conn:
        (tries,) = conn.execute(
            "SELECT try_number FROM task_instance WHERE task_id = ?", (task_id,)
        ).fetchone()
    return tries


def test_a_permanent_failure_is_not_retried_and_a_transient_one_is(tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "retry_probe.py").write_text(PROBE_DAG.replace("__PORT__", str(free_port())))
    project = AirflowProject.create(
        tmp_path / "home", AIRFLOW__CORE__DAGS_FOLDER=str(dags), PYTHONPATH=str(ROOT / "dags")
    )
    proc = project.dags_test("retry_probe", RUN_DATE)
    output = proc.stdout + proc.stderr

    assert project.task_states("retry_probe", RUN_DATE) == {"spec_error": "failed", "silent_mlflow": "failed"}
    assert _tries(project, "spec_error") == 1, "a spec error was retried"
    assert _tries(project, "silent_mlflow") == 3, "a silent MLflow server was not retried twice"
    assert "StepFailedPermanently: step `ingest` failed (exit code 1): no pipeline spec" in output
    assert "task retry_probe.spec_error failed" in output and "; permanent failure" in output
    assert "task retry_probe.silent_mlflow failed" in output and "; transient failure" in output
