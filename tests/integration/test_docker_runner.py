"""The Docker runner against the real Docker engine and the real step image.

The same DAG file, switched with MLCYCLE_RUNNER=docker: the full training DAG reaches the same
registry result as the local runner; a step failing inside its container fails the task with its
own error in the log and leaves no container; a missing image gives an error that says what to run.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.datasets import BIKESHARE_CSV, BIKESHARE_SPEC, LEAN_MODEL, make_bad_bikeshare, write_spec_variant
from tests.integration.airflow_env import AirflowProject

pytestmark = [pytest.mark.integration, pytest.mark.docker]

STEPS = ["ingest", "validate", "build_features", "train", "evaluate", "register"]


def _containers(image: str, project: AirflowProject) -> list[str]:
    """Containers of the step image that ran a step of ``project`` (its label names the project's home)."""
    home = project.env["MLCYCLE_HOME"]
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            f"ancestor={image}",
            "--filter",
            f"label=mlcycle.home={home}",
            "--format",
            "{{.ID}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def _tries(project: AirflowProject, task_id: str) -> int:
    """How many tries the one training run's task took (Airflow's own record)."""
    import sqlite3

    with sqlite3.connect(project.home / "airflow" / "airflow.db") as conn:
        (tries,) = conn.execute(
            "SELECT try_number FROM task_instance WHERE task_id = ?", (task_id,)
        ).fetchone()
    return tries


def _output(proc: subprocess.CompletedProcess) -> str:
    """`airflow dags test` streams every task's log to its own output."""
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def lean_spec(tmp_path_factory) -> str:
    """The bikeshare spec with a one-candidate search (the runner is under test, not the search).

    Its data is a copy in the test's folder: the step container sees the test's temporary folders,
    not the checkout's `include/data` at its host path.
    """
    folder = tmp_path_factory.mktemp("specs")
    data = shutil.copy(BIKESHARE_CSV, folder / "bikeshare.csv")
    source = {"kind": "file", "path": str(data), "format": "csv"}
    return str(write_spec_variant(BIKESHARE_SPEC, folder / "bikeshare.yaml", source=source, model=LEAN_MODEL))


@pytest.fixture(scope="module")
def docker_project(tmp_path_factory, docker_engine) -> AirflowProject:
    return AirflowProject.create(
        tmp_path_factory.mktemp("docker"), MLCYCLE_RUNNER="docker", MLCYCLE_STEP_IMAGE=docker_engine
    )


def test_docker_runner_reaches_the_same_registry_result_as_the_local_runner(
    docker_project, docker_engine, tmp_path_factory, lean_spec
):
    conf = {"pipeline": lean_spec, "window_days": 14}
    proc = docker_project.dags_test("training_bikeshare", "2011-06-30", conf)
    states = docker_project.task_states("training_bikeshare", "2011-06-30")
    assert all(states[t] == "success" for t in STEPS), states
    assert "StepDockerOperator" in _output(proc)

    local = AirflowProject.create(tmp_path_factory.mktemp("local"))
    local.dags_test("training_bikeshare", "2011-06-30", conf)
    assert all(s == "success" for s in local.task_states("training_bikeshare", "2011-06-30").values())

    in_docker, on_host = docker_project.registry("bikeshare"), local.registry("bikeshare")
    assert in_docker["aliases"] == on_host["aliases"] == {"champion": "1", "challenger": "1"}
    tags_d, tags_l = in_docker["versions"][0]["tags"], on_host["versions"][0]["tags"]
    for key in ("mlcycle.window_start", "mlcycle.window_end", "mlcycle.data_fingerprint", "gate.blessed"):
        assert tags_d[key] == tags_l[key], key
    metric_d = docker_project.run_tags(in_docker["versions"][0]["run_id"])["metrics"]["holdout_rmse"]
    metric_l = local.run_tags(on_host["versions"][0]["run_id"])["metrics"]["holdout_rmse"]
    assert metric_d == pytest.approx(metric_l, rel=1e-6), "same data, same pins, same seed: same model"
    assert _containers(docker_engine, docker_project) == [], "containers were left behind after success"


def test_a_failing_step_in_a_container_fails_the_task_with_its_error(docker_project, docker_engine, tmp_path):
    bad = make_bad_bikeshare(tmp_path, "2011-07-06", "out_of_range")
    before = docker_project.registry("bikeshare")
    proc = docker_project.dags_test(
        "training_bikeshare", "2011-07-07", {"pipeline": str(bad), "window_days": 7}
    )
    states = docker_project.task_states("training_bikeshare", "2011-07-07")
    assert states["validate"] == "failed" and states["register"] == "upstream_failed", states

    log = _output(proc)
    assert "expect_column_values_to_be_between on `windspeed`" in log
    assert "StepFailed" in log and "step `validate` failed" in log
    # The message is the step's own error, read from its result file (not whatever line came last).
    assert "step `validate` failed (exit code 1): 1 partition(s) of bikeshare failed the suite" in log
    assert _containers(docker_engine, docker_project) == [], "a failed container was left behind"
    assert docker_project.registry("bikeshare") == before


def test_a_missing_image_says_how_to_build_it(tmp_path, docker_engine):
    project = AirflowProject.create(
        tmp_path, MLCYCLE_RUNNER="docker", MLCYCLE_STEP_IMAGE="mlcycle-steps:no-such-tag"
    )
    proc = project.dags_test("training_bikeshare", "2011-06-30", {"pipeline": "bikeshare", "window_days": 7})
    states = project.task_states("training_bikeshare", "2011-06-30")
    assert states["ingest"] == "failed"
    log = _output(proc)
    assert "mlcycle-steps:no-such-tag is not on this Docker engine: build it with `make images`" in log
    assert states["validate"] == "upstream_failed", "nothing ran after the failed step"
    assert _tries(project, "ingest") == 1, "a missing image was retried"


def test_an_unreachable_docker_daemon_says_what_to_run(tmp_path):
    project = AirflowProject.create(
        tmp_path, MLCYCLE_RUNNER="docker", DOCKER_HOST=f"unix://{tmp_path / 'no-such-docker.sock'}"
    )
    proc = project.dags_test("training_bikeshare", "2011-06-30", {"pipeline": "bikeshare", "window_days": 7})
    states = project.task_states("training_bikeshare", "2011-06-30")
    assert states["ingest"] == "failed" and states["validate"] == "upstream_failed"
    log = _output(proc)
    assert "cannot reach the Docker daemon" in log and "waited 20 s" in log
    assert "scripts/docker-engine.sh" in log and "MLCYCLE_RUNNER=local" in log
    assert _tries(project, "ingest") == 1, "a silent daemon was retried after it had been waited for"
