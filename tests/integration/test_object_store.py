"""Workers that share no disk: the lifecycle with only object storage, PostgreSQL and MLflow between them.

A real S3-compatible server (SeaweedFS, ``scripts/seaweedfs.sh``) holds the data store
(``MLCYCLE_STORE=s3://<bucket>/<run>/store``); a real MLflow tracking server on PostgreSQL keeps its
artifacts in the same bucket (``--artifacts-destination s3://...``). The steps run in containers
(``MLCYCLE_RUNNER=docker``) that mount nothing but the test's spec folder, read-only: no store, no
result folder, no MLflow folder. The serving slots mount nothing either: they log their predictions to
the bucket, where the monitoring run reads them. The S3 keys reach the steps only through the Airflow
connection ``mlcycle_s3`` (the worker has no ``AWS_*``).

In order, like an operator's first week on a cluster:

1. a training run keeps its data, reports and model in the bucket, and writes no local folder; the
   lifecycle page reads the same registry over the server's REST API and from its SQL store;
2. a rejected batch is quarantined in the bucket and changes nothing;
3. a deploy puts the model behind the proxy, its state in the bucket, slots without a mount;
4. a day replayed through the proxy is logged to the bucket, and a monitoring run judges those
   logged predictions and records its decision there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.datasets import BIKESHARE_CSV, BIKESHARE_SPEC, LEAN_MODEL, make_bad_bikeshare, write_spec_variant
from tests.integration.airflow_env import AirflowProject, mlflow_server
from tests.integration.test_deploy import _ports, _served, docker_ready, stop_deployment  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.postgres]

STEPS = ["ingest", "validate", "build_features", "train", "evaluate", "register"]
REPLAYED = "2011-06-29"  # the last day of the training window: validated in the bucket


@pytest.fixture(scope="module")
def bucket_prefix(s3_env) -> str:
    return f"tests/{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def tracking(tmp_path_factory, s3_env, bucket_prefix, postgres_dsn):
    """MLflow's tracking server, artifacts in the bucket (it holds the keys; the steps do not need them)."""
    bucket = s3_env["MLCYCLE_TEST_S3_BUCKET"]
    env = {**s3_env, "MLFLOW_S3_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL_S3"]}
    artifacts = f"s3://{bucket}/{bucket_prefix}/mlflow"
    with mlflow_server(postgres_dsn, artifacts, tmp_path_factory.mktemp("mlflow"), env) as (url, backend):
        yield url, artifacts, backend


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3_env, bucket_prefix, tracking, docker_engine, docker_ready):  # noqa: F811
    production, blue, green, staging = _ports(4)
    pipelines = tmp_path_factory.mktemp("pipelines")
    # The source file beside the spec: the step containers see the spec's folder (read-only) only.
    data = shutil.copy(BIKESHARE_CSV, pipelines / "bikeshare.csv")
    spec = write_spec_variant(
        BIKESHARE_SPEC,
        pipelines / "bikeshare.yaml",
        source={"kind": "file", "path": str(data), "format": "csv"},
        model=LEAN_MODEL,
        deploy={
            "production_port": production,
            "slot_ports": [blue, green],
            "staging_port": staging,
            "watch_seconds": 2,
            "ready_timeout_seconds": 60,
            "smoke_rows": 50,
            "smoke_requests": 10,
            "latency_budget_ms": 5000,
        },
    )
    bucket, namespace = s3_env["MLCYCLE_TEST_S3_BUCKET"], f"t{uuid.uuid4().hex[:8]}"
    project = AirflowProject.create(
        tmp_path_factory.mktemp("no-shared-disk"),
        MLCYCLE_PIPELINES_DIR=str(pipelines),
        MLCYCLE_RUNNER="docker",
        MLCYCLE_STEP_IMAGE=docker_engine,
        MLCYCLE_STORE=f"s3://{bucket}/{bucket_prefix}/store",
        MLFLOW_TRACKING_URI=tracking[0],
        MLCYCLE_ARTIFACT_ROOT="",  # the server's own artifact store
        MLCYCLE_DEPLOY_NAMESPACE=namespace,
        AIRFLOW_CONN_MLCYCLE_S3=json.dumps(
            {
                "conn_type": "aws",
                "login": s3_env["AWS_ACCESS_KEY_ID"],
                "password": s3_env["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": s3_env["AWS_ENDPOINT_URL_S3"], "region_name": s3_env["AWS_REGION"]},
            }
        ),
    )
    project.spec, project.namespace, project.production = spec, namespace, production
    yield project
    stop_deployment(project, spec, namespace)


def _probe(project: AirflowProject, s3_env: dict[str, str], code: str) -> object:
    """Run ``code`` (which prints JSON) in the step environment with the S3 client settings."""
    return project.steps_python(f"import json, os; os.environ.update({dict(s3_env)!r}); {code}")


def _keys(project: AirflowProject, s3_env: dict[str, str], uri: str) -> list[str]:
    """The keys under ``uri`` (s3://...), listed from the step environment (boto3 lives there)."""
    return _probe(
        project,
        s3_env,
        f"from mlcycle.objects import objects_for; print(json.dumps(objects_for({uri!r}).keys('')))",
    )


def _document(project: AirflowProject, s3_env: dict[str, str], uri: str, key: str) -> dict:
    return _probe(
        project,
        s3_env,
        "from mlcycle.objects import objects_for, read_document; "
        f"print(json.dumps(read_document(objects_for({uri!r}), {key!r})[0]))",
    )


def _local_files(project: AirflowProject) -> list[str]:
    """What the steps left in the worker's MLCYCLE_HOME (the warm-step server's socket aside)."""
    home = Path(project.env["MLCYCLE_HOME"])
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()) if home.exists() else []


def _mounts_lines(output: str) -> list[str]:
    """What each step container mounted, from the Docker runner's log line (logger name cut off)."""
    found = (
        re.search(r"the step container mounts (.+?)(?: \[airflow|$)", line) for line in output.splitlines()
    )
    return [m.group(1) for m in found if m]


def test_a_training_run_keeps_data_and_models_in_the_bucket(project, s3_env, tracking, monkeypatch):
    proc = project.dags_test("training_bikeshare", "2011-06-30", {"window_days": 14})
    states = project.task_states("training_bikeshare", "2011-06-30")
    output = proc.stdout + proc.stderr
    assert all(states[t] == "success" for t in STEPS), (states, proc.stdout[-6000:], proc.stderr[-3000:])

    spec_dir = str(project.spec.parent)
    mounts = _mounts_lines(output)
    assert len(mounts) >= len(STEPS), output[-3000:]
    assert set(mounts) == {f"{spec_dir} at {spec_dir} (read-only)"}, set(mounts)  # the spec only

    store = _keys(project, s3_env, project.env["MLCYCLE_STORE"] + "/bikeshare")
    validated = [k for k in store if k.startswith("validated/") and k.endswith(".parquet")]
    assert len(validated) == 14 and sum(k.endswith("CURRENT.json") for k in store) == 15  # 14 days + features
    assert any(k.startswith("features/end=2011-06-30/") and k.endswith("train.parquet") for k in store)
    assert any(k.startswith("lineage/") for k in store)
    assert "reports/validation/end=2011-06-30/report.html" in store
    assert any(k.startswith("reports/validation/data_docs/") for k in store)  # GX pages uploaded
    assert _local_files(project) == [], "a step wrote the worker's local folder"

    registry = project.registry("bikeshare")  # read through the server, over HTTP
    assert registry["aliases"] == {"champion": "1", "challenger": "1"}
    assert registry["versions"][0]["tags"]["gate.first_run"] == "true"
    artifacts = _keys(project, s3_env, tracking[1])
    assert any(k.endswith("MLmodel") for k in artifacts), artifacts[:20]
    assert any(k.endswith("plots/residuals.png") for k in artifacts)

    # The lifecycle page reads a server over its REST API and a SQL store with queries: the same
    # registry must read the same either way (the version, its gate decision and score, aliases).
    import mlcycle_lifecycle

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking[0])
    over_rest, problem = mlcycle_lifecycle.model_versions("bikeshare")
    assert problem == "" and [v.version for v in over_rest] == [1]
    assert over_rest == mlcycle_lifecycle.versions_from_sql(tracking[2], "bikeshare")
    champion = over_rest[0]
    assert "champion" in champion.aliases and champion.blessed is True and champion.score is not None
    assert champion.metric == "rmse" and champion.experiment_id and champion.run_id


def test_a_rejected_batch_is_quarantined_in_the_bucket_and_changes_nothing(project, s3_env, tmp_path):
    bad = make_bad_bikeshare(tmp_path, "2011-07-03", "unknown_category")
    project.dags_test("training_bikeshare", "2011-07-04", {"pipeline": str(bad), "window_days": 14})
    states = project.task_states("training_bikeshare", "2011-07-04")
    assert states["validate"] == "failed" and states["train"] == "upstream_failed", states
    store = _keys(project, s3_env, project.env["MLCYCLE_STORE"] + "/bikeshare")
    quarantined = [k for k in store if k.startswith("quarantine/date=2011-07-03/")]
    assert any(k.endswith("/data.parquet") for k in quarantined), quarantined
    assert any(k.endswith("/failures.json") for k in quarantined), quarantined
    assert not any(k.startswith("validated/date=2011-07-03/") for k in store)
    assert project.registry("bikeshare")["aliases"] == {"champion": "1", "challenger": "1"}


def _inspect(namespace: str) -> dict[str, dict]:
    """The deploy's containers of this test ({name: docker inspect})."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=io.mlcycle.namespace={namespace}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    found = (
        json.loads(
            subprocess.run(
                ["docker", "inspect", *ids], capture_output=True, text=True, check=True, timeout=60
            ).stdout
        )
        if ids
        else []
    )
    return {c["Name"].lstrip("/"): c for c in found}


def test_a_deploy_keeps_its_state_in_the_bucket_and_its_slots_mount_nothing(project, s3_env):
    date = "2012-01-01"
    proc = project.dags_test("deploy_bikeshare", date, {"version": "", "auto_approve": True})
    states = project.task_states("deploy_bikeshare", date)
    assert states["record"] == "success", (states, proc.stdout[-6000:], proc.stderr[-3000:])
    assert _served(project.production) == "1"

    containers = _inspect(project.namespace)
    slots = {n: c for n, c in containers.items() if not n.endswith("-proxy")}
    assert slots and all(c["Mounts"] == [] for c in slots.values()), {
        n: c["Mounts"] for n, c in slots.items()
    }
    live = [c for n, c in slots.items() if n.endswith(("-blue", "-green"))]  # staging logs nothing
    assert live and all(f"MLCYCLE_STORE={project.env['MLCYCLE_STORE']}" in c["Config"]["Env"] for c in live)
    proxy = containers[f"{project.namespace}-bikeshare-proxy"]
    home = project.env["MLCYCLE_HOME"]
    assert [m["Source"] for m in proxy["Mounts"]] == [f"{home}/deploy/bikeshare/proxy"]  # the host's own

    state = _document(project, s3_env, project.env["MLCYCLE_STORE"] + "/bikeshare/deploy", "state.json")
    assert state["live"] and state["slots"][state["live"]]["version"] == "1", state


def test_monitoring_judges_the_predictions_the_slots_logged_in_the_bucket(project, s3_env):
    replayed = project.steps_cli(
        "replay",
        "--pipeline",
        str(project.spec),
        "--date",
        REPLAYED,
        "--rate",
        "200",
        "--batch",
        "4",
        "--url",
        f"http://127.0.0.1:{project.production}",
        env=s3_env,  # the operator's own keys: the replay reads the day's rows from the bucket
    )
    assert replayed["rejected"] == 0 and replayed["rows"] == 24, replayed
    store = project.env["MLCYCLE_STORE"] + "/bikeshare"

    def logged() -> list[str]:
        return [k for k in _keys(project, s3_env, store) if k.startswith(f"predictions/date={REPLAYED}/")]

    from tests.integration.compose_stack import wait

    wait(logged, "the slot's prediction log to reach the bucket", stall=60)

    proc = project.dags_test("monitoring_bikeshare", "2011-06-30")  # covers [06-29, 06-30)
    states = project.task_states("monitoring_bikeshare", "2011-06-30")
    assert states.get("monitor") == "success", (states, proc.stdout[-6000:], proc.stderr[-3000:])
    keys = _keys(project, s3_env, store)
    assert "reports/drift/ledger.json" in keys and f"reports/drift/date={REPLAYED}/report.html" in keys
    ledger = _document(project, s3_env, store + "/reports/drift", "ledger.json")
    assert list(ledger["days"]) == [REPLAYED]
    metrics = _document(project, s3_env, f"{store}/reports/drift/date={REPLAYED}", "metrics.json")
    assert metrics["source"] == "predictions" and metrics["rows"] == replayed["rows"], metrics
    assert not Path(project.env["MLCYCLE_HOME"], "store").exists()
