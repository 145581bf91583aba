"""Pieces of the lifecycle page and the offline Data Docs that need no server, and who may see
which lifecycle page (the page itself is checked in a real browser by tests/integration/test_ui.py)."""

from __future__ import annotations

import json

import data_docs_offline
import mlcycle_lifecycle
import mlcycle_ui
import pytest
from fastapi.testclient import TestClient

from tests.dags.test_report_links import airflow_tokens

GX_HEAD = """<link href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css" rel="stylesheet">
<script src="https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js"></script>
<link href="https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css">
<script src="https://cdn.jsdelivr.net/npm/vega-embed@6"></script>
<link rel="stylesheet" href="https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css">
<a href="../../index.html">Home</a>
<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=20261202T1">
<a href="https://greatexpectations.io/newsletter">newsletter</a>
<style>@media (prefers-color-scheme: dark) { .navbar-brand a {
  background: url('https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png') 0 0 no-repeat;
} }</style>"""


def test_every_cdn_asset_of_data_docs_has_a_local_copy_and_the_page_points_at_it():
    page = data_docs_offline.rewrite(GX_HEAD, "/mlcycle/reports/_assets")
    assert "cdn" not in page and "unpkg" not in page and "amazonaws" not in page
    assert 'src="../../static/images/logo-long.png"' in page  # Data Docs' own copy of the logo
    # the dark-mode logo, which Data Docs do not keep: the copy shipped with the assets
    assert "url('/mlcycle/reports/_assets/great_expectations/full_logo_dark.png')" in page
    assert 'href="https://greatexpectations.io/newsletter"' in page  # a link, not an asset: left as is
    for target in page.split("/mlcycle/reports/_assets/")[1:]:
        path = target.split('"')[0].split("'")[0]
        assert (mlcycle_ui.ASSETS_DIR / path).is_file(), path


def test_serving_figures_count_prediction_requests_only():
    exposition = "\n".join(
        [
            "# HELP mlcycle_requests_total x",
            'mlcycle_requests_total{endpoint="/predict",status="200"} 97.0',
            'mlcycle_requests_total{endpoint="/predict",status="422"} 2.0',
            'mlcycle_requests_total{endpoint="/invocations",status="500"} 1.0',
            'mlcycle_requests_total{endpoint="/metrics",status="200"} 50.0',
            'mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="0.005"} 90.0',
            'mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="0.01"} 99.0',
            'mlcycle_request_latency_seconds_bucket{endpoint="/predict",le="+Inf"} 100.0',
            'mlcycle_request_latency_seconds_bucket{endpoint="/metrics",le="+Inf"} 50.0',
        ]
    )
    figures = mlcycle_lifecycle.figures_from_exposition(exposition)
    assert figures == {"requests": 100.0, "p99_seconds": 0.01, "share_4xx": 0.02, "share_5xx": 0.01}


def test_a_pipeline_dag_leads_to_its_pipelines_page():
    assert [
        mlcycle_ui.pipeline_of_dag(d) for d in ("training_bikeshare", "deploy_a_b", "other_x", "training_")
    ] == [
        "bikeshare",
        "a_b",
        None,
        None,
    ]


@pytest.fixture(scope="module")
def tokens():
    return airflow_tokens()


@pytest.fixture
def lifecycle(tmp_path, monkeypatch, tokens):
    """The lifecycle app on a store whose drift ledger records one drifted day, no registry, no
    serving: a client per kind of caller."""
    ledger = tmp_path / "store" / "bikeshare" / "reports" / "drift" / "ledger.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text(json.dumps({"days": {"2011-06-29": {"status": "drift", "why": "RECORDED"}}}))
    monkeypatch.setenv("MLCYCLE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLCYCLE_PROMETHEUS_URL", raising=False)
    app = mlcycle_ui.lifecycle_app()

    def client(who: str | None) -> TestClient:
        headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
        return TestClient(app, headers=headers, follow_redirects=False)

    return client


def test_the_index_lists_only_the_pipelines_whose_dag_the_user_may_read(lifecycle):
    anonymous = lifecycle(None).get("/")
    assert anonymous.status_code == 307 and "/login" in anonymous.headers["location"]
    assert "bikeshare" not in anonymous.text
    nobody = lifecycle("nobody").get("/")
    assert nobody.status_code == 200 and "bikeshare" not in nobody.text
    assert "no pipeline whose DAG you may read" in nobody.text
    viewer = lifecycle("viewer").get("/")
    assert viewer.status_code == 200
    assert (
        "/mlcycle/lifecycle/bikeshare" in viewer.text
        and "/mlcycle/lifecycle/bikeshare_postgres" in viewer.text
    )


@pytest.mark.parametrize("path", ["/dag/training_{}", "/dag/monitoring_{}", "/{}"])
def test_whether_a_pipeline_exists_is_told_only_to_a_user_who_may_read_it(lifecycle, path):
    """A user without access gets the same answer for a pipeline that exists and for one that
    does not; so does a caller without a login (Airflow's login page)."""
    real, unknown = path.format("bikeshare"), path.format("nosuchpipeline")
    for who, expected in ((None, 307), ("nobody", 403)):
        answers = [lifecycle(who).get(p) for p in (real, unknown)]
        assert [a.status_code for a in answers] == [expected, expected], (who, path)
        assert answers[0].text.replace("bikeshare", "nosuchpipeline") == answers[1].text, (who, path)
        assert "/mlcycle/lifecycle/bikeshare" not in answers[0].headers.get("location", ""), (who, path)
    viewer = lifecycle("viewer")
    found, missing = viewer.get(real), viewer.get(unknown)
    assert missing.status_code == 404
    if path.startswith("/dag/"):
        assert found.status_code == 307 and found.headers["location"] == "/mlcycle/lifecycle/bikeshare"
    else:
        assert found.status_code == 200 and "Model lifecycle: bikeshare" in found.text
        assert "RECORDED" in found.text  # the drift ledger is read


def test_the_lifecycle_page_does_not_read_a_ledger_through_a_symlinked_reports_folder(lifecycle, tmp_path):
    store = tmp_path / "store"
    (store / "bikeshare" / "reports").rename(tmp_path / "elsewhere")
    (store / "bikeshare" / "reports").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    page = lifecycle("viewer").get("/bikeshare")
    assert page.status_code == 200 and "RECORDED" not in page.text
    assert "No monitoring day recorded yet" in page.text
