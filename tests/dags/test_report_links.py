"""Reports a person opens from Airflow: the "Report" button, the alert's Data Docs row, and the API
server route that serves them (only a pipeline's reports, never its data, and only to Airflow users
with read access to the pipeline's DAG). tests/integration/test_ui.py checks the same route on a
real API server, logged in through the real login page."""

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
    outside = root / "reports" / "secret.json"  # a `reports/` folder beside the store's pipelines
    outside.parent.mkdir(parents=True)
    outside.write_text('{"rows": "LEAKED"}')
    return SimpleNamespace(root=root, page=page, raw=raw, outside=outside)


def airflow_tokens() -> dict[str, str]:
    """JWTs of the API server's own auth manager: an admin, a viewer (reads every DAG, changes
    nothing) and a user with no role (no DAG access)."""
    import os

    os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", "t" * 86)
    from airflow import settings
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken

    # Token checks consult the metadata database's list of revoked tokens (logouts): that one table.
    RevokedToken.__table__.create(settings.engine, checkfirst=True)
    manager = create_auth_manager()
    return {
        "admin": manager.generate_jwt(SimpleAuthManagerUser(username="admin", role="admin")),
        "viewer": manager.generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer")),
        "nobody": manager.generate_jwt(SimpleAuthManagerUser(username="nobody", role="")),
    }


@pytest.fixture(scope="module")
def tokens():
    return airflow_tokens()


@pytest.fixture
def client(tokens):
    return TestClient(mlcycle_ui.reports_app(), headers={"Authorization": f"Bearer {tokens['admin']}"})


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


def test_without_a_base_url_the_report_button_opens_on_the_api_server_that_shows_it(store, monkeypatch):
    """No fixed port: a path the browser resolves against the API server the user is on."""
    monkeypatch.delenv("MLCYCLE_REPORTS_URL")
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    url = report_url(str(store.page))
    assert url.startswith("/mlcycle/reports/bikeshare/reports/validation/") and "8080" not in url
    # A mail has no page to resolve a path against: the alert's link keeps a host.
    assert report_url(str(store.page), absolute=True) == f"http://127.0.0.1:8080{url}"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:9123/")
    assert report_url(str(store.page)) == f"http://airflow.example:9123{url}"


def test_the_reports_route_serves_reports_and_nothing_else(store, client):
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
        assert response.status_code in (400, 404) and "PAR1" not in response.text, path


def test_the_plugin_mounts_the_reports_route_where_the_links_point():
    plugin = mlcycle_ui.MlcycleUiPlugin
    assert [app["url_prefix"] for app in plugin.fastapi_apps] == [REPORTS_ROUTE, "/mlcycle/lifecycle"]


ESCAPES = (
    "/%2e%2e/reports/secret.json",
    "/../reports/secret.json",
    "/%2E%2E/reports/secret.json",
    "/%252e%252e/reports/secret.json",
    "/..%2freports/secret.json",
    "/bikeshare/reports/%2e%2e/%2e%2e/reports/secret.json",
    "/bikeshare/reports/..%2f..%2freports%2fsecret.json",
    "/bikeshare/reports/....//....//reports/secret.json",
    "/bikeshare/reports/..%5c..%5creports%5csecret.json",
    "/bikeshare/reports/..\\..\\reports\\secret.json",
    "/%5c..%5creports/secret.json",
    "/bikeshare/reports//etc/passwd",
    "/reports/reports/secret.json",  # a folder that is no pipeline
    "/nosuchpipeline/reports/secret.json",
)


@pytest.mark.parametrize("path", ESCAPES)
def test_no_escape_from_a_pipelines_reports_folder(store, client, path):
    response = client.get(path)
    assert 400 <= response.status_code < 500 and "LEAKED" not in response.text, (path, response.status_code)


def test_a_symlink_planted_in_a_reports_folder_is_not_followed(store, client):
    folder = store.root / "bikeshare" / "reports"
    (folder / "leak.parquet").symlink_to(store.raw)
    (folder / "linked").symlink_to(store.raw.parent, target_is_directory=True)
    for path in ("/bikeshare/reports/leak.parquet", "/bikeshare/reports/linked/data.parquet"):
        response = client.get(path)
        assert response.status_code in (400, 404) and "PAR1" not in response.text, path


@pytest.mark.parametrize("linked", ["reports", "pipeline"])
def test_a_reports_or_pipeline_folder_that_is_a_symlink_is_not_followed(store, client, tmp_path, linked):
    """``<store>/<pipeline>/reports`` and ``<store>/<pipeline>`` are opened without following a
    symlink too, wherever it points (here: a look-alike reports folder outside the store)."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "reports" / "drift").mkdir(parents=True)
    (elsewhere / "reports" / "drift" / "report.html").write_text("LEAKED drift report")
    pipeline = store.root / "bikeshare"
    if linked == "reports":
        (pipeline / "reports").rename(tmp_path / "moved")
        (pipeline / "reports").symlink_to(elsewhere / "reports", target_is_directory=True)
    else:
        pipeline.rename(tmp_path / "moved")
        pipeline.symlink_to(elsewhere, target_is_directory=True)
    response = client.get("/bikeshare/reports/drift/report.html")
    assert response.status_code == 404 and "LEAKED" not in response.text


def test_a_fifo_in_a_reports_folder_is_refused_without_holding_the_request(store, client):
    """Opening a FIFO for reading waits for a writer: the route opens without blocking, then
    refuses what is not a regular file."""
    import os
    import threading

    fifo = store.root / "bikeshare" / "reports" / "pipe.html"
    os.mkfifo(fifo)
    answers = []
    request = threading.Thread(target=lambda: answers.append(client.get("/bikeshare/reports/pipe.html")))
    request.start()
    request.join(timeout=5)
    waited = request.is_alive()
    if waited:  # a writer unblocks the route's open, so that the test ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        request.join(timeout=10)
    assert not waited, "the request waited on the FIFO for a writer"
    assert answers and answers[0].status_code == 404


PAGE = "validation/data_docs/validations/s/2011-06-29/p.html"


@pytest.mark.parametrize("path", [PAGE, "drift/report.json"])
def test_a_report_swapped_for_a_symlink_after_its_check_is_not_what_is_served(
    store, client, monkeypatch, path
):
    """The file is opened once, without following a symlink, and served from that descriptor: a
    report replaced by a symlink to the data between the check and the read (a race an attacker
    with write access to the reports folder can try) still serves the report, never the data."""
    import os

    target = store.root / "bikeshare" / "reports" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("<html>GX page</html>" if path.endswith(".html") else '{"drift": "report"}')
    original, inode = target.read_bytes(), target.stat().st_ino
    lstat, fstat, swapped = os.lstat, os.fstat, []

    def swap() -> None:  # the attacker's move, made right after the route has looked at the file
        if not swapped:
            swapped.append(True)
            target.rename(target.with_name("old"))
            target.symlink_to(store.raw)

    def checking_lstat(path, *args, **kwargs):  # a check by path
        result = lstat(path, *args, **kwargs)
        if result.st_ino == inode:
            swap()
        return result

    def checking_fstat(fd):  # a check of an open file
        result = fstat(fd)
        if result.st_ino == inode:
            swap()
        return result

    monkeypatch.setattr(os, "lstat", checking_lstat)
    monkeypatch.setattr(os, "fstat", checking_fstat)
    response = client.get(f"/bikeshare/reports/{path}")
    monkeypatch.undo()
    assert swapped, "the route never looked at the file"
    assert target.is_symlink()
    assert "PAR1" not in response.text, "the data behind the symlink was served"
    assert response.status_code == 200 and original.decode() in response.text


@pytest.mark.parametrize("name", ["a%00b.html", "%00", "a" * 5000, "/".join(["d"] * 40)])
def test_a_nul_byte_or_an_overlong_name_is_a_client_error(store, client, name):
    assert client.get(f"/bikeshare/reports/{name}").status_code == 400


def test_the_reports_route_needs_an_airflow_login_and_read_access_to_the_dag(store, tokens):
    app = mlcycle_ui.reports_app()
    path = "/bikeshare/reports/validation/data_docs/validations/s/2011-06-29/p.html"
    anonymous = TestClient(app).get(path)
    assert anonymous.status_code == 401 and "GX page" not in anonymous.text
    forged = TestClient(app, headers={"Authorization": "Bearer not-a-token"}).get(path)
    assert forged.status_code in (401, 403) and "GX page" not in forged.text
    roleless = TestClient(app, headers={"Authorization": f"Bearer {tokens['nobody']}"}).get(path)
    assert roleless.status_code == 403 and "GX page" not in roleless.text
    cookie = TestClient(app, cookies={"_token": tokens["admin"]}).get(path)  # the UI's session cookie
    assert cookie.status_code == 200 and "GX page" in cookie.text
