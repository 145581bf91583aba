"""The training and monitoring DAGs with the data store and MLflow's artifacts on object storage.

A real S3-compatible server (SeaweedFS, ``scripts/seaweedfs.sh``) holds everything the steps write:
``MLCYCLE_STORE=s3://<bucket>/<run>/store`` and ``MLCYCLE_ARTIFACT_ROOT=s3://<bucket>/<run>/mlflow``.
The Airflow home and MLflow's SQLite registry are local (they are Airflow's and MLflow's own
databases, PostgreSQL in the compose stack); no step writes the local store folder.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.datasets import BIKESHARE_SPEC, LEAN_MODEL, make_bad_bikeshare, write_spec_variant
from tests.integration.airflow_env import AirflowProject

pytestmark = pytest.mark.integration

STEPS = ["ingest", "validate", "build_features", "train", "evaluate", "register"]


@pytest.fixture(scope="module")
def bucket_prefix(s3_env) -> str:
    return f"tests/{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3_env, bucket_prefix) -> AirflowProject:
    pipelines = tmp_path_factory.mktemp("pipelines")
    write_spec_variant(BIKESHARE_SPEC, pipelines / "bikeshare.yaml", model=LEAN_MODEL)
    bucket = s3_env["MLCYCLE_TEST_S3_BUCKET"]
    return AirflowProject.create(
        tmp_path_factory.mktemp("object-store"),
        MLCYCLE_PIPELINES_DIR=str(pipelines),
        MLCYCLE_STORE=f"s3://{bucket}/{bucket_prefix}/store",
        MLCYCLE_ARTIFACT_ROOT=f"s3://{bucket}/{bucket_prefix}/mlflow",
        # The keys reach the steps only through the Airflow connection (the worker has no AWS_*).
        AIRFLOW_CONN_MLCYCLE_S3=json.dumps(
            {
                "conn_type": "aws",
                "login": s3_env["AWS_ACCESS_KEY_ID"],
                "password": s3_env["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": s3_env["AWS_ENDPOINT_URL_S3"], "region_name": s3_env["AWS_REGION"]},
            }
        ),
    )


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


def test_a_training_run_keeps_data_and_models_in_the_bucket(project, s3_env, bucket_prefix):
    proc = project.dags_test("training_bikeshare", "2011-06-30", {"pipeline": "bikeshare", "window_days": 14})
    states = project.task_states("training_bikeshare", "2011-06-30")
    assert all(states[t] == "success" for t in STEPS), (states, proc.stdout[-6000:], proc.stderr[-3000:])

    store = _keys(project, s3_env, project.env["MLCYCLE_STORE"] + "/bikeshare")
    validated = [k for k in store if k.startswith("validated/") and k.endswith(".parquet")]
    assert len(validated) == 14 and sum(k.endswith("CURRENT.json") for k in store) == 15  # 14 days + features
    assert any(k.startswith("features/end=2011-06-30/") and k.endswith("train.parquet") for k in store)
    assert any(k.startswith("lineage/") for k in store)
    assert "reports/validation/end=2011-06-30/report.html" in store
    assert any(k.startswith("reports/validation/data_docs/") for k in store)  # GX pages uploaded
    assert not project.store.exists(), "a step wrote the local store folder"

    registry = project.registry("bikeshare")
    assert registry["aliases"] == {"champion": "1", "challenger": "1"}
    artifacts = _keys(project, s3_env, project.env["MLCYCLE_ARTIFACT_ROOT"])
    assert any(k.endswith("MLmodel") for k in artifacts), artifacts[:20]
    assert any(k.endswith("plots/residuals.png") for k in artifacts)


def test_a_rejected_batch_is_quarantined_in_the_bucket_and_changes_nothing(
    project, s3_env, bucket_prefix, tmp_path
):
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


def test_monitoring_records_its_decision_in_the_bucket(project, s3_env, bucket_prefix):
    proc = project.dags_test("monitoring_bikeshare", "2011-06-30")  # covers [06-29, 06-30)
    states = project.task_states("monitoring_bikeshare", "2011-06-30")
    assert states.get("monitor") == "success", (states, proc.stdout[-6000:], proc.stderr[-3000:])
    store = _keys(project, s3_env, project.env["MLCYCLE_STORE"] + "/bikeshare")
    assert "reports/drift/ledger.json" in store and "reports/drift/date=2011-06-29/report.html" in store
    ledger = _document(
        project, s3_env, project.env["MLCYCLE_STORE"] + "/bikeshare/reports/drift", "ledger.json"
    )
    assert list(ledger["days"]) == ["2011-06-29"]
    assert json.dumps(ledger)  # a whole JSON document
    assert not Path(project.env["MLCYCLE_HOME"], "store").exists()
