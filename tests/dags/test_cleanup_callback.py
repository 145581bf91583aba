"""The train task's failure callback ends the MLflow runs its killed last try left RUNNING.

Runs in the Airflow environment as the callback does: ``close_killed_runs`` calls the step
environment's real ``mlcycle close-runs`` against a real MLflow store (SQLite), seeded with the
RUNNING run a SIGKILLed try leaves (tests/unit/steps/test_train_killed.py shows a real kill does).
The task instance handed to the callback is a stand-in with the attributes Airflow's has.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from types import SimpleNamespace

import pytest

from pipeline_support.alerts import PipelineFailureNotifier
from pipeline_support.cleanup import close_killed_runs
from tests.conftest import STEPS_BIN
from tests.datasets import BIKESHARE_SPEC

pytestmark = pytest.mark.skipif(
    not (STEPS_BIN / "python").exists(), reason="the step environment is not set up"
)
AIRFLOW_RUN = "scheduled__2011-06-30T00:00:00+00:00"


def _steps(code: str, env: dict) -> dict:
    proc = subprocess.run(
        [str(STEPS_BIN / "python"), "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_last_try_s_callback_ends_the_killed_run(tmp_path, monkeypatch):
    home = tmp_path / "home"
    env = {
        **os.environ,
        "MLCYCLE_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLCYCLE_ARTIFACT_ROOT": (home / "artifacts").as_uri(),
        "MLCYCLE_WARM": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seeded = _steps(
        f"""
        import json, mlflow
        from mlcycle.settings import Settings
        from mlcycle.spec import load_spec
        from mlcycle.tracking import connect
        experiment = connect(Settings.from_env(), load_spec({str(BIKESHARE_SPEC)!r}))
        client = mlflow.MlflowClient()
        tags = {{"airflow.dag_id": "training_bikeshare", "airflow.run_id": {AIRFLOW_RUN!r}}}
        print(json.dumps({{"run": client.create_run(experiment, tags=tags).info.run_id}}))
    """,
        env,
    )
    ti = SimpleNamespace(
        dag_id="training_bikeshare",
        run_id=AIRFLOW_RUN,
        xcom_pull=lambda task_ids: {"spec": str(BIKESHARE_SPEC)} if task_ids == "interval" else None,
    )
    close_killed_runs({"ti": ti})
    after = _steps(
        f"""
        import json, mlflow
        run = mlflow.MlflowClient().get_run({seeded["run"]!r})
        print(json.dumps({{"status": run.info.status, "ended_by": run.data.tags.get("mlcycle.ended_by")}}))
    """,
        env,
    )
    assert after == {
        "status": "FAILED",
        "ended_by": "the task's failure callback: its last try was killed before it could end its run",
    }


def test_without_a_plan_or_with_a_broken_store_the_callback_never_raises(tmp_path, monkeypatch, caplog):
    ti = SimpleNamespace(dag_id="training_bikeshare", run_id=AIRFLOW_RUN, xcom_pull=lambda task_ids: None)
    close_killed_runs({"ti": ti})  # the interval task never ran: nothing to end
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLCYCLE_MLFLOW_TIMEOUT", "2")
    monkeypatch.setenv("MLCYCLE_HOME", str(tmp_path))
    ti.xcom_pull = lambda task_ids: {"spec": str(BIKESHARE_SPEC)}
    with caplog.at_level("WARNING"):
        close_killed_runs({"ti": ti})
    assert "MLflow runs of training_bikeshare" in caplog.text and "may still show RUNNING" in caplog.text


def test_the_train_task_of_every_training_dag_carries_it():
    from airflow.dag_processing.dagbag import BundleDagBag

    from tests.conftest import ROOT

    bag = BundleDagBag(dag_folder=str(ROOT / "dags"), bundle_path=ROOT / "dags")
    training = [dag for dag_id, dag in bag.dags.items() if dag_id.startswith("training_")]
    assert training
    for dag in training:
        callbacks = dag.get_task("train").on_failure_callback
        assert close_killed_runs in callbacks, dag.dag_id
        assert any(isinstance(c, PipelineFailureNotifier) for c in callbacks), dag.dag_id  # the alert stays
