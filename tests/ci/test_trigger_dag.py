"""scripts/trigger_dag.py against a real Airflow: api-server, scheduler and dag-processor on a free port.

The DAGs are the test's own (a temp dags folder): a deploy-shaped DAG that records its conf and fails
on request, and one whose only task waits in a pool with no slots, so its run never moves.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROOT
from tests.integration.airflow_env import AirflowProject, free_port

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "scripts" / "trigger_dag.py"
USER, PASSWORD = "deployer", "s3cret-for-tests"

DAGS = """
import json
import pendulum
from airflow.sdk import dag, task

ARGS = {"owner": "tests", "retries": 0}


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False, default_args=ARGS)
def deploy_probe():
    @task
    def deploy(dag_run=None):
        conf = dict(dag_run.conf)
        if conf.get("target") == "broken":
            raise RuntimeError("deploy refused: target broken")
        return json.dumps(conf, sort_keys=True)

    deploy()


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False, default_args=ARGS)
def deploy_stuck():
    @task(pool="closed")
    def wait():
        return "never"

    wait()


deploy_probe()
deploy_stuck()
"""


def _token(base: str) -> str:
    req = urllib.request.Request(
        f"{base}/auth/token",
        method="POST",
        data=json.dumps({"username": USER, "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["access_token"]


def _get(base: str, path: str, token: str) -> dict:
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Base URL of a running Airflow whose dag-processor has parsed both test DAGs."""
    home = tmp_path_factory.mktemp("trigger")
    dags = home / "dags"
    dags.mkdir()
    (dags / "deploy_probe.py").write_text(textwrap.dedent(DAGS))
    (home / "passwords.json").write_text(json.dumps({USER: PASSWORD}))
    port = free_port()
    project = AirflowProject.create(
        home,
        # logins checked here: the wrong password must be refused (not every user an admin)
        **{**AirflowProject.server_settings(port), "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False"},
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "passwords.json"),
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
    )
    project.airflow("pools", "set", "closed", "0", "no slots: runs of deploy_stuck never start")
    base = f"http://127.0.0.1:{port}"
    with project.serve():
        token = _token(base)
        deadline = time.monotonic() + 120
        while True:
            dag_ids = {d["dag_id"] for d in _get(base, "/api/v2/dags", token)["dags"]}
            if {"deploy_probe", "deploy_stuck"} <= dag_ids:
                break
            assert time.monotonic() < deadline, (
                f"DAGs not parsed after 120s: {dag_ids}\n{project.service_logs()}"
            )
            time.sleep(2)
        yield base


def trigger(base: str, *args: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "AIRFLOW_API_URL": base,
        "AIRFLOW_API_USERNAME": USER,
        "AIRFLOW_API_PASSWORD": password,
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--poll-interval", "1", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _pause(base: str, dag_id: str) -> None:
    """Pause ``dag_id`` through the API: what is under test is the script facing a paused DAG, not
    whether the dag-processor applied dags_are_paused_at_creation (it did not, now and then)."""
    req = urllib.request.Request(
        f"{base}/api/v2/dags/{dag_id}",
        method="PATCH",
        data=json.dumps({"is_paused": True}).encode(),
        headers={"Authorization": f"Bearer {_token(base)}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["is_paused"] is True


def test_refuses_a_paused_dag_then_unpauses_it_and_follows_the_run_to_success(airflow):
    conf = {"version": "", "target": "staging", "auto_approve": True}
    _pause(airflow, "deploy_probe")
    paused = trigger(airflow, "--dag-id", "deploy_probe", "--conf", json.dumps(conf))
    assert paused.returncode == 1
    assert "is paused" in paused.stderr

    done = trigger(
        airflow,
        "--dag-id",
        "deploy_probe",
        "--conf",
        json.dumps(conf),
        "--unpause",
        "--note",
        "commit abc123",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["state"] == "success" and result["dag_id"] == "deploy_probe"
    token = _token(airflow)
    run = _get(airflow, f"/api/v2/dags/deploy_probe/dagRuns/{result['run_id']}", token)
    assert run["conf"] == conf  # the conf reached the run
    xcom = _get(
        airflow,
        f"/api/v2/dags/deploy_probe/dagRuns/{result['run_id']}/taskInstances/deploy/xcomEntries/return_value",
        token,
    )
    assert json.loads(xcom["value"]) == conf  # and the task saw it


def test_a_failed_run_fails_the_job(airflow):
    failed = trigger(
        airflow,
        "--dag-id",
        "deploy_probe",
        "--unpause",
        "--conf",
        json.dumps({"version": "", "target": "broken", "auto_approve": True}),
    )
    assert failed.returncode == 1
    assert json.loads(failed.stdout.strip().splitlines()[-1])["state"] == "failed"
    assert "ended failed" in failed.stderr


def test_a_run_that_stops_moving_fails_without_a_fixed_deadline(airflow):
    started = time.monotonic()
    stuck = trigger(airflow, "--dag-id", "deploy_stuck", "--unpause", "--stall-timeout", "8")
    assert stuck.returncode == 1
    assert "made no progress for 8s" in stuck.stderr, stuck.stderr
    assert time.monotonic() - started < 120


def test_wrong_credentials_and_unknown_dags_say_what_to_check(airflow):
    denied = trigger(airflow, "--dag-id", "deploy_probe", password="wrong")
    assert denied.returncode == 1
    assert "401" in denied.stderr and "AIRFLOW_API_PASSWORD" in denied.stderr
    missing = trigger(airflow, "--dag-id", "deploy_nothing")
    assert missing.returncode == 1
    assert "404" in missing.stderr and "is the DAG deployed" in missing.stderr
    unreachable = trigger(f"http://127.0.0.1:{free_port()}", "--dag-id", "deploy_probe")
    assert unreachable.returncode == 1 and "cannot reach Airflow" in unreachable.stderr
