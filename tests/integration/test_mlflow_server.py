"""MLflow's tracking server on PostgreSQL, the option after the embedded SQLite store.

A real `mlflow server` (from the step environment) on a fresh PostgreSQL database, with its own
artifact store; the training DAG talks to it over HTTP only, and registers and promotes there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from tests.conftest import STEPS_BIN
from tests.datasets import BIKESHARE_SPEC, LEAN_MODEL, write_spec_variant
from tests.integration.airflow_env import AirflowProject, free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

STEPS = ["ingest", "validate", "build_features", "train", "evaluate", "register"]


@pytest.fixture
def tracking_server(postgres_dsn, tmp_path):
    name = f"mlflow_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(postgres_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(postgres_dsn)
    backend = urlunsplit(("postgresql+psycopg2", parts.netloc, f"/{name}", "", ""))
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [
            str(STEPS_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"mlflow server did not come up:\n{(tmp_path / 'mlflow-server.log').read_text()[-3000:]}"
                )
            time.sleep(2)
        yield url, artifacts, backend
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_the_training_dag_registers_and_promotes_on_a_tracking_server(tracking_server, tmp_path, monkeypatch):
    url, artifacts, backend = tracking_server
    spec = write_spec_variant(BIKESHARE_SPEC, tmp_path / "specs" / "bikeshare.yaml", model=LEAN_MODEL)
    project = AirflowProject.create(tmp_path / "home", MLFLOW_TRACKING_URI=url, MLCYCLE_ARTIFACT_ROOT="")
    project.dags_test("training_bikeshare", "2011-06-30", {"pipeline": str(spec), "window_days": 14})
    states = project.task_states("training_bikeshare", "2011-06-30")
    assert all(states[t] == "success" for t in STEPS), states

    registry = project.registry("bikeshare")  # read through the server, over HTTP
    assert registry["aliases"] == {"champion": "1", "challenger": "1"}
    assert registry["versions"][0]["tags"]["gate.first_run"] == "true"
    saved = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert "MLmodel" in saved and "residuals.png" in saved, "artifacts did not go to the server's store"
    assert not (tmp_path / "home" / "local" / "mlflow").exists(), "something was tracked locally"

    # The lifecycle page reads a server over its REST API and a SQL store with queries: the same
    # registry must read the same either way (the version, its gate decision and score, aliases).
    import mlcycle_lifecycle

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    over_rest, problem = mlcycle_lifecycle.model_versions("bikeshare")
    assert problem == "" and [v.version for v in over_rest] == [1]
    assert over_rest == mlcycle_lifecycle.versions_from_sql(backend, "bikeshare")
    champion = over_rest[0]
    assert "champion" in champion.aliases and champion.blessed is True and champion.score is not None
    assert champion.metric == "rmse" and champion.experiment_id and champion.run_id
