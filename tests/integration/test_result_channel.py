"""The Docker runner's result channel against a real container whose log lines come after the result.

Docker does not keep the order between a container's stdout and stderr, so a step's log line can
reach the runner after its JSON result. To make that happen every time, the image under test is
derived from the step image with an entrypoint that runs ``mlcycle "$@"`` and then writes log lines
to stderr. A runner that took the last output line for the result would fail both tests below; the
result file the step writes (``MLCYCLE_RESULT_FILE``) is not affected.

The operator runs in-process (``execute``), with the real Docker engine and the real step package
inside the container; a full ``airflow dags test`` over the same operator is in test_docker_runner.py.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pipeline_support.contract import StepFailed
from tests.datasets import SYNTHCLASS_INGEST_RESULT, make_classification_dataset

pytestmark = [pytest.mark.integration, pytest.mark.docker]

TRAILING_LOG = "log line written after the result"
#: The derived image's entrypoint: the step, then log lines on stderr, then the step's exit code.
ENTRYPOINT = (
    f'mlcycle "$@"; code=$?; sleep 0.2; for i in 1 2 3; do echo "{TRAILING_LOG} $i" >&2; done; exit $code'
)


@pytest.fixture(scope="module")
def logs_after_result_image(docker_engine) -> str:
    """The step image, with log lines on stderr after the step has printed its result."""
    tag = f"{docker_engine.split(':')[0]}-logs-after-result:test"
    dockerfile = f"FROM {docker_engine}\nENTRYPOINT {json.dumps(['/bin/sh', '-c', ENTRYPOINT, 'mlcycle'])}\n"
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    subprocess.run(
        ["docker", "build", "--network", "host", "-q", "-t", tag, "-"],
        input=dockerfile,
        text=True,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    yield tag
    subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, check=False, timeout=60)


@pytest.fixture
def runner_env(tmp_path, monkeypatch, logs_after_result_image):
    """The worker's environment as the Docker runner reads it at run time; everything under tmp_path."""
    for name in (
        "MLCYCLE_STORE",
        "MLCYCLE_PIPELINES_DIR",
        "MLCYCLE_ARTIFACT_ROOT",
        "MLCYCLE_RESULT_FILE",
        "MLCYCLE_DOCKER_USER",
        "MLCYCLE_LOG_LEVEL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLCYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}")
    monkeypatch.setenv("MLCYCLE_STEP_IMAGE", logs_after_result_image)
    return tmp_path


def _containers_of(step: str) -> list[str]:
    """Containers of this test's step still on the engine (every try's container is removed)."""
    found = subprocess.run(
        [
            "docker",
            "ps",
            "-aq",
            "--filter",
            f"label=mlcycle.step={step}",
            "--filter",
            f"label=mlcycle.home={os.environ['MLCYCLE_HOME']}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return found.stdout.split()


def run_step(step: str, *args: str):
    from pipeline_support.docker_runner import docker_step

    op = docker_step(step, [step, *args], env={}, task_id=step)
    return op.execute({})


def window(spec, start: str, end: str, days: int) -> list[str]:
    return ["--pipeline", str(spec), "--start", start, "--end", end, "--window-days", str(days)]


def test_a_success_keeps_its_result_when_logs_follow_it(runner_env, capfd):
    spec = make_classification_dataset(runner_env / "data", days=10)
    result = run_step("ingest", *window(spec, "2011-03-05", "2011-03-06", 2))
    assert result == SYNTHCLASS_INGEST_RESULT
    captured = capfd.readouterr()
    assert f"{TRAILING_LOG} 3" in captured.out + captured.err, "the image did not log after the result"
    assert not _containers_of("ingest"), "the step's container was left behind"


def test_a_rejected_batch_keeps_its_payload_when_logs_follow_it(runner_env):
    spec = make_classification_dataset(
        runner_env / "data", days=10, bad={"day": "2011-03-05", "kind": "nulls"}
    )
    args = window(spec, "2011-03-05", "2011-03-06", 1)
    assert run_step("ingest", *args)["partitions"] == 1
    with pytest.raises(StepFailed) as info:
        run_step("validate", *args)
    payload = info.value.payload
    assert payload["status"] == "failed" and payload["step"] == "validate", payload
    assert payload["failures"], "the failing expectations were lost"
    assert payload["report"].endswith(".html") and os.path.isfile(payload["report"])
    assert str(info.value) == f"step `validate` failed (exit code 1): {payload['error']}"
    assert TRAILING_LOG not in str(info.value)
    assert isinstance(info.value, AirflowFailException) and info.value.failure_class == "permanent"
    assert not _containers_of("validate")


def test_nothing_to_do_skips_the_task_in_a_container(runner_env):
    spec = make_classification_dataset(runner_env / "data", days=10)
    with pytest.raises(AirflowSkipException) as info:
        run_step("ingest", *window(spec, "2011-03-20", "2011-03-21", 2))
    assert not isinstance(info.value, StepFailed)
    assert str(info.value).startswith("ingest: nothing to do: ") and "window.data_end" in str(info.value)


def test_bad_arguments_in_a_container_are_a_usage_error(runner_env):
    with pytest.raises(StepFailed) as info:
        run_step("ingest", "--pipeline", "bikeshare", "--start", "March", "--end", "2011-03-06")
    assert "was called with bad arguments (exit code 2)" in str(info.value)


def test_a_step_killed_in_its_container_is_retried(runner_env, docker_engine, monkeypatch):
    """The real step in a container, SIGKILLed while it runs: exit 137, a transient failure."""
    tag = f"{docker_engine.split(':')[0]}-killed-step:test"
    # Stopped at once, then killed: the step is still running when SIGKILL comes, however fast it
    # would otherwise fail (a train without features ends in well under two seconds on a quiet machine).
    entrypoint = 'mlcycle "$@" & pid=$!; kill -STOP $pid; sleep 1; kill -KILL $pid; wait $pid'
    dockerfile = f"FROM {docker_engine}\nENTRYPOINT {json.dumps(['/bin/sh', '-c', entrypoint, 'mlcycle'])}\n"
    subprocess.run(
        ["docker", "build", "--network", "host", "-q", "-t", tag, "-"],
        input=dockerfile,
        text=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        check=True,
        capture_output=True,
        timeout=300,
    )
    try:
        monkeypatch.setenv("MLCYCLE_STEP_IMAGE", tag)
        spec = make_classification_dataset(runner_env / "data", days=10)
        with pytest.raises(StepFailed) as info:
            run_step("train", *window(spec, "2011-03-05", "2011-03-06", 2))
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, check=False, timeout=60)
    assert (
        str(info.value) == "step `train` failed (exit code 137): the step's process was killed by SIGKILL "
        "(a retry may succeed)"
    )
    assert info.value.failure_class == "transient" and not isinstance(info.value, AirflowFailException)


def test_an_unanswered_mlflow_server_is_retried_from_a_container(runner_env, monkeypatch):
    from tests.integration.airflow_env import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLCYCLE_MLFLOW_TIMEOUT", "5")
    with pytest.raises(StepFailed) as info:
        from pipeline_support.docker_runner import docker_step

        command = ["register", "--pipeline", "bikeshare", "--run-id", "abc", "--model-uri", "runs:/abc/m"]
        docker_step("register", command, env={"MLCYCLE_MLFLOW_TIMEOUT": "5"}, task_id="register").execute({})
    assert "did not answer" in str(info.value), str(info.value)
    assert info.value.failure_class == "transient" and not isinstance(info.value, AirflowFailException)
