"""The reports route and the lifecycle page on a store in object storage (a real SeaweedFS).

The API server reads ``MLCYCLE_STORE=s3://...`` with the keys of the Airflow connection ``mlcycle_s3``
(its own environment has none here): it serves a pipeline's reports and nothing else, with the same
refusals as on a disk, and the lifecycle page reads the drift ledger and the deploy state from the
bucket.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid
from types import SimpleNamespace

import mlcycle_ui
import pytest
from fastapi.testclient import TestClient

from tests.conftest import s3_client
from tests.dags.test_report_links import ESCAPES, airflow_tokens

PAGE = "validation/data_docs/validations/s/2011-06-29/p.html"
DRIFT_REPORT = "drift/date=2011-06-29/report.html"


@pytest.fixture(scope="module")
def tokens():
    return airflow_tokens()


@pytest.fixture
def bucket(s3_env, monkeypatch):
    name, prefix = s3_env["MLCYCLE_TEST_S3_BUCKET"], f"tests/{uuid.uuid4().hex}/store"
    location = f"s3://{name}/{prefix}"
    client = s3_client(s3_env)
    objects = {
        f"bikeshare/reports/{PAGE}": b"<html>GX page</html>",
        f"bikeshare/reports/{DRIFT_REPORT}": b"<html>drift report</html>",
        "bikeshare/raw/date=2011-06-29/data.parquet": b"PAR1 secret rows",
        "reports/secret.json": b'{"rows": "LEAKED"}',  # a `reports/` prefix beside the pipelines
        "bikeshare/reports/drift/ledger.json": json.dumps(
            {
                "days": {
                    "2011-06-29": {
                        "status": "drift",
                        "why": "RECORDED IN THE BUCKET",
                        "report": f"{location}/bikeshare/reports/{DRIFT_REPORT}",
                    }
                }
            }
        ).encode(),
        "bikeshare/deploy/state.json": json.dumps(
            {
                "pipeline": "bikeshare",
                "live": "green",
                "slots": {
                    "blue": None,
                    "green": {
                        "name": "green",
                        "container": "c-green",
                        "port": 8702,
                        "version": "7",
                        "image": "img:v7",
                        "image_id": "sha256:7",
                        "started_at": "2026-12-01T00:00:00+00:00",
                    },
                },
                "staging": None,
                "updated_at": "2026-12-01T00:00:00+00:00",
                "switches": [],
            }
        ).encode(),
    }
    for key, body in objects.items():
        client.put_object(Bucket=name, Key=f"{prefix}/{key}", Body=body)
    monkeypatch.setenv("MLCYCLE_STORE", location)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)  # the keys come from the connection only
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLCYCLE_S3",
        json.dumps(
            {
                "conn_type": "aws",
                "login": s3_env["AWS_ACCESS_KEY_ID"],
                "password": s3_env["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": s3_env["AWS_ENDPOINT_URL_S3"], "region_name": s3_env["AWS_REGION"]},
            }
        ),
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLCYCLE_PROMETHEUS_URL", raising=False)
    return SimpleNamespace(location=location)


def test_the_reports_route_serves_a_report_from_the_bucket_and_nothing_else(bucket, tokens):
    client = TestClient(mlcycle_ui.reports_app(), headers={"Authorization": f"Bearer {tokens['admin']}"})
    page = client.get(f"/bikeshare/reports/{PAGE}")
    assert page.status_code == 200 and "GX page" in page.text, page.text
    assert page.headers["content-length"] == str(len("<html>GX page</html>"))
    for path in (
        "/bikeshare/raw/date=2011-06-29/data.parquet",
        "/bikeshare/reports/../raw/date=2011-06-29/data.parquet",
        "/bikeshare/reports/validation/missing.html",
        *ESCAPES,
    ):
        response = client.get(path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert "PAR1" not in response.text and "LEAKED" not in response.text, path
    nobody = TestClient(mlcycle_ui.reports_app(), headers={"Authorization": f"Bearer {tokens['nobody']}"})
    assert nobody.get(f"/bikeshare/reports/{PAGE}").status_code == 403


def test_the_lifecycle_page_reads_the_ledger_and_the_deploy_state_from_the_bucket(
    bucket, tokens, monkeypatch
):
    # As in the API server: Airflow's plugin manager loads plugins/ again under the same module name,
    # so the BucketStore the page makes and the mlcycle_ui that opens it can be two copies.
    spec = importlib.util.spec_from_file_location("mlcycle_ui", mlcycle_ui.__file__)
    again = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mlcycle_ui", again)
    spec.loader.exec_module(again)
    client = TestClient(mlcycle_ui.lifecycle_app(), headers={"Authorization": f"Bearer {tokens['viewer']}"})
    page = client.get("/bikeshare")
    assert page.status_code == 200, page.text
    assert "RECORDED IN THE BUCKET" in page.text  # the ledger
    assert f"/mlcycle/reports/bikeshare/reports/{DRIFT_REPORT}".replace("=", "%3D") in page.text  # its report

    assert "http://127.0.0.1:8702/metrics" in page.text  # the deploy state's live slot, asked for its figures
