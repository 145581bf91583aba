"""No stuck state: a `train` try killed with SIGKILL leaves its MLflow run RUNNING; the next try of the
same Airflow task marks it FAILED before it starts its own. On a real MLflow store (SQLite and files),
with a real `mlcycle train` process killed while it trains.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest

from mlcycle.spec import load_spec
from mlcycle.steps.features import build_features
from mlcycle.steps.ingest import ingest
from mlcycle.steps.train import train
from mlcycle.steps.validate import validate
from mlcycle.tracking import connect, fail_stale_runs
from tests.datasets import make_classification_dataset
from tests.unit.conftest import apply_env, day_interval, step_env

WINDOW = 9


def _running(client, experiment_id: str, airflow_run_id: str) -> list:
    return client.search_runs(
        [experiment_id], f"tags.`airflow.run_id` = '{airflow_run_id}' and attributes.status = 'RUNNING'"
    )


def test_the_next_try_marks_a_killed_train_run_failed(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    settings = apply_env(monkeypatch, tmp_path)
    spec = load_spec(make_classification_dataset(tmp_path / "data", days=10))
    interval = day_interval(spec.data_end)
    for step in (ingest, validate, build_features):
        step(spec, settings, interval, WINDOW)
    airflow_run = "scheduled__2011-03-10T00:00:00+00:00"
    env = {**os.environ, **step_env(tmp_path), "MLCYCLE_RUN_ID": airflow_run, "MLCYCLE_WARM": "0"}
    command = [
        sys.executable,
        "-m",
        "mlcycle",
        "train",
        "--pipeline",
        str(spec.path),
        "--start",
        interval.start.isoformat(),
        "--end",
        interval.end.isoformat(),
        "--window-days",
        str(WINDOW),
    ]
    connect(settings, spec)  # the store exists before the step and this test both poll it
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = MlflowClient()
    try:
        killed = None
        while (
            proc.poll() is None and killed is None
        ):  # kill it once its run exists, in the middle of training
            experiment = client.get_experiment_by_name(spec.experiment)
            found = _running(client, experiment.experiment_id, airflow_run) if experiment else []
            killed = found[0].info.run_id if found else None
            time.sleep(0.2)
        assert killed is not None, (
            f"train ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        )
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    experiment_id = client.get_experiment_by_name(spec.experiment).experiment_id
    assert client.get_run(killed).info.status == "RUNNING", (
        "the killed try's run is not the stuck state under test"
    )

    # A step started by hand never touches it (two manual runs may go on at once) ...
    assert fail_stale_runs(client, experiment_id, "unit_dag", "manual") == []
    # ... the next try of the same Airflow task does, then trains as usual.
    retry = dataclasses.replace(settings, run_id=airflow_run)
    result = train(spec, retry, interval, WINDOW)
    stale = client.get_run(killed)
    assert stale.info.status == "FAILED" and stale.info.end_time is not None
    assert stale.data.tags["mlcycle.ended_by"].startswith("a later try of the same Airflow task")
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert _running(client, experiment_id, airflow_run) == []


@pytest.mark.parametrize("other", [("unit_dag", "scheduled__2011-03-09T00:00:00+00:00"), ("other_dag", "x")])
def test_runs_of_other_airflow_runs_are_left_alone(tmp_path, monkeypatch, other):
    import mlflow
    from mlflow import MlflowClient

    settings = apply_env(monkeypatch, tmp_path)
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    experiment_id = client.create_experiment("stale")
    run = client.create_run(experiment_id, tags={"airflow.dag_id": other[0], "airflow.run_id": other[1]})
    assert fail_stale_runs(client, experiment_id, "unit_dag", "scheduled__2011-03-10T00:00:00+00:00") == []
    assert client.get_run(run.info.run_id).info.status == "RUNNING"


def test_after_the_last_try_close_runs_marks_the_killed_run_failed(tmp_path, monkeypatch):
    """No next try to clean up: the task's failure callback runs ``mlcycle close-runs`` (a real process)."""
    import json

    from mlflow import MlflowClient

    from mlcycle.tracking import ENDED_BY_CALLBACK

    settings = apply_env(monkeypatch, tmp_path)
    spec = load_spec(make_classification_dataset(tmp_path / "data", days=10))
    airflow_run = "scheduled__2011-03-10T00:00:00+00:00"
    experiment_id = connect(settings, spec)
    client = MlflowClient()
    tags = {"airflow.dag_id": "training_x", "airflow.run_id": airflow_run}
    killed = client.create_run(experiment_id, tags=tags).info.run_id  # what a SIGKILLed try leaves
    other = client.create_run(experiment_id, tags={**tags, "airflow.run_id": "scheduled__other"}).info.run_id
    env = {**os.environ, **step_env(tmp_path), "MLCYCLE_WARM": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcycle",
            "close-runs",
            "--pipeline",
            str(spec.path),
            "--dag-id",
            "training_x",
            "--run-id",
            airflow_run,
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["closed"] == [killed]
    run = client.get_run(killed)
    assert run.info.status == "FAILED" and run.data.tags["mlcycle.ended_by"] == ENDED_BY_CALLBACK
    assert client.get_run(other).info.status == "RUNNING"  # another Airflow run's is not this task's
