"""Reports a person opens from Airflow: the "Report" button, the alert's Data Docs row, and the API
server route that serves them (only a pipeline's reports, never its data)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import mlcycle_ui
import pytest
from fastapi.testclient import TestClient

from pipeline_support.alerts import Alert
from pipeline_support.contract import StepFailed
from pipeline_support.links import REPORTS_ROUTE, ReportLink, report_url, result_report_url


@pytest.fixture
def store(tmp_path, monkeypatch):
    root = tmp_path / "store"
    page = (
        root
        / "bikeshare"
        / "reports"
        / "validation"
        / "data_docs"
        / "validations"
        / "s"
        / "2011-06-29"
        / "p.html"
    )
    page.parent.mkdir(parents=True)
    page.write_text("<html>GX page</html>")
    raw = root / "bikeshare" / "raw" / "date=2011-06-29" / "data.parquet"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"PAR1 secret rows")
    monkeypatch.setenv("MLCYCLE_STORE", str(root))
    monkeypatch.setenv("MLCYCLE_REPORTS_URL", "http://airflow.example:8080/mlcycle/reports")
    return SimpleNamespace(root=root, page=page, raw=raw)


def test_a_report_in_the_store_is_linked_through_the_api_server(store):
    url = report_url(str(store.page))
    assert url == (
        "http://airflow.example:8080/mlcycle/reports/bikeshare/reports/validation/data_docs/"
        "validations/s/2011-06-29/p.html"
    )
    # Data, or a file outside the store, is never turned into a served address.
    assert report_url(str(store.raw)) == store.raw.as_uri()
    assert report_url("/elsewhere/report.html") == "file:///elsewhere/report.html"
    assert report_url(None) == "" and result_report_url(None) == ""
    # The Data Docs page wins over the run's summary when a result has both.
    assert result_report_url({"report": "/elsewhere/report.html", "data_docs": str(store.page)}) == url
    assert ReportLink().get_link(SimpleNamespace(report_url=url), ti_key=None) == url
    assert ReportLink().get_link(SimpleNamespace(), ti_key=None) == ""


def test_the_alert_of_a_rejected_batch_links_its_data_docs_page(store):
    exc = StepFailed(
        "step `validate` failed", {"error": "...", "report": "/r.html", "data_docs": str(store.page)}
    )
    ti = SimpleNamespace(dag_id="training", task_id="validate", run_id="r1", try_number=1, max_tries=0)
    alert = Alert.from_context(
        {"ti": ti, "run_id": "r1", "logical_date": dt.datetime(2011, 6, 30), "exception": exc}
    )
    assert ("Data Docs", report_url(str(store.page))) in alert.facts()
    assert f'href="{report_url(str(store.page))}"' in alert.html()


def test_the_reports_route_serves_reports_and_nothing_else(store):
    client = TestClient(mlcycle_ui.reports_app())
    page = client.get("/bikeshare/reports/validation/data_docs/validations/s/2011-06-29/p.html")
    assert page.status_code == 200 and "GX page" in page.text
    for path in (
        "/bikeshare/reports/../raw/date=2011-06-29/data.parquet",
        "/bikeshare/reports/%2E%2E/raw/date=2011-06-29/data.parquet",
        "/bikeshare/raw/date=2011-06-29/data.parquet",
        "/bikeshare/reports/validation/missing.html",
        "/..%2F/bikeshare/raw/date=2011-06-29/data.parquet",
    ):
        response = client.get(path)
        assert response.status_code == 404 and "secret" not in response.text, path


def test_the_plugin_mounts_the_reports_route_where_the_links_point():
    plugin = mlcycle_ui.MlcycleUiPlugin
    assert [app["url_prefix"] for app in plugin.fastapi_apps] == [REPORTS_ROUTE]
