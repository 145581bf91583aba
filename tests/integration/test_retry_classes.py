"""Retry classes in a real `airflow dags test`: with retries=2, a permanent failure takes one try, a
transient one takes all three, and each failure alert says which class it was.

Two independent real steps of the local runner: `ingest` of a spec that does not exist (a spec
error: permanent) and `register` against an MLflow server that does not answer (transient). The same
two through the Docker runner, in the step image, with a third: a step process killed by SIGKILL
(exit 137, transient).
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


DOCKER_PROBE_DAG = '''
"""Retry probe in the step image: a spec error, a silent MLflow server, a container killed by a signal."""
from datetime import timedelta

import pendulum
from airflow.sdk import dag
from pipeline_support.alerts import failure_notifier
from pipeline_support.docker_runner import docker_step


@dag(schedule=None, start_date=pendulum.datetime(2011, 1, 1, tz="UTC"), catchup=False, tags=["test"],
     default_args={"owner": "mlops", "retries": 2, "retry_delay": timedelta(0),
                   "on_failure_callback": [failure_notifier()]})
def docker_retry_probe():
    docker_step("ingest", ["ingest", "--pipeline", "__MISSING_SPEC__", "--start", "2011-06-29",
                           "--end", "2011-06-30"], env={}, task_id="spec_error")
    docker_step("register", ["register", "--pipeline", "bikeshare", "--run-id", "abc", "--model-uri", "runs:/abc/m"],
                env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:__PORT__", "MLCYCLE_MLFLOW_TIMEOUT": "3"},
                task_id="silent_mlflow")
    # The step's process killed by SIGKILL, as the OOM killer does: the container exits 137. (Not the
    # container's first process itself, which ignores a signal sent from inside its own container.)
    docker_step("train", ["-c", "sh -c 'kill -KILL $$'; exit $?"], env={}, task_id="killed", entrypoint=["sh"])


docker_retry_probe()
'''


@pytest.mark.docker
def test_in_the_step_image_a_permanent_failure_is_not_retried_and_a_transient_one_is(tmp_path, docker_engine):
    """The same classes through the Docker runner: the class travels in the result file the container
    writes to its mounted result folder, and a container killed by a signal (exit 137) is retried."""
    dags = tmp_path / "dags"
    dags.mkdir()
    # A spec path in a folder that exists: the runner mounts the spec's folder into the container.
    missing = dags / "no-such-spec.yaml"
    dag_text = DOCKER_PROBE_DAG.replace("__PORT__", str(free_port())).replace(
        "__MISSING_SPEC__", str(missing)
    )
    (dags / "docker_retry_probe.py").write_text(dag_text)
    project = AirflowProject.create(
        tmp_path / "home",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        PYTHONPATH=str(ROOT / "dags"),
        MLCYCLE_RUNNER="docker",
        MLCYCLE_STEP_IMAGE=docker_engine,
    )
    proc = project.dags_test("docker_retry_probe", RUN_DATE)
    output = proc.stdout + proc.stderr

    states = project.task_states("docker_retry_probe", RUN_DATE)
    assert states == {"spec_error": "failed", "silent_mlflow": "failed", "killed": "failed"}, states
    assert "StepDockerOperator" in output
    assert _tries(project, "spec_error") == 1, "a spec error in a container was retried"
    assert _tries(project, "silent_mlflow") == 3, (
        "a silent MLflow server was not retried twice in a container"
    )
    assert _tries(project, "killed") == 3, "a container killed by a signal was not retried twice"
    assert "StepFailedPermanently: step `ingest` failed (exit code 1): no pipeline spec" in output
    assert "step `train` failed (exit code 137): the step's process was killed by SIGKILL" in output
    # Every try ran its step: a retry starts a container of its own, with this try's result folder.
    assert "APIError" not in output, "a retry failed in the Docker engine before its step ran"
    assert output.count("contract.StepFailed: step `train` failed (exit code 137)") == 3, "not every try ran"
    # Each alert (one log line, whose error may span lines) names its task's class.
    alerts = [a.split("[pipeline_support.alerts]")[0] for a in output.split("failure alert: ")[1:]]
    for task_id, kind in (
        ("spec_error", "permanent"),
        ("silent_mlflow", "transient"),
        ("killed", "transient"),
    ):
        alert = [a for a in alerts if f"task docker_retry_probe.{task_id} failed" in a]
        assert len(alert) == 1 and f"; {kind} failure" in alert[0], (task_id, alert)
