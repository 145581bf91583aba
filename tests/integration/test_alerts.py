"""Failure alerts end to end: real `airflow dags test` runs, a real SMTP server, a real HTTP webhook.

The servers run in this process on 127.0.0.1 (aiosmtpd, http.server); Airflow reaches them through the
connections `alerts_smtp` and `alerts_webhook`, given as AIRFLOW_CONN_* environment variables (JSON).
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import html
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import ROOT
from tests.datasets import EXPECTED_FAILURE, make_bad_bikeshare
from tests.integration.airflow_env import AirflowProject, free_port

RUN_DATE = "2011-06-30"   # the run's data interval is [06-29, 06-30); window_days 7 reaches back to 06-23
BAD_DAY = "2011-06-29"
RECIPIENT = "mlops@example.test"
WEBHOOK_PATH = "/hooks/alerts"
FAILED_EXPECTATION = EXPECTED_FAILURE["bikeshare"]["unknown_category"]


# --------------------------------------------------------------------------------------------
# Real local servers


@dataclass
class Mail:
    received: float  # time.time() on arrival
    rcpt_tos: list[str]
    subject: str
    body: str  # the HTML part, entities unescaped


@dataclass
class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 that keeps every message it receives."""

    port: int = 0
    mails: list[Mail] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's handler API)
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        part = msg.get_body(preferencelist=("html", "plain"))
        self.mails.append(Mail(time.time(), list(envelope.rcpt_tos), str(msg["Subject"]),
                               html.unescape(part.get_content() if part else "")))
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 20) -> list[Mail]:
        deadline = time.monotonic() + timeout
        while len(self.mails) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.mails)


@dataclass
class Hook:
    received: float
    path: str
    payload: dict


class WebhookSink:
    """A stdlib HTTP server on 127.0.0.1 that keeps every JSON document POSTed to it."""

    def __init__(self):
        self.hooks: list[Hook] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's handler API)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.hooks.append(Hook(time.time(), self.path, json.loads(body or b"{}")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 20) -> list[Hook]:
        deadline = time.monotonic() + timeout
        while len(self.hooks) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.hooks)


@pytest.fixture
def smtp_sink():
    from aiosmtpd.controller import Controller

    sink = SmtpSink(port=free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    yield sink
    controller.stop()


@pytest.fixture
def webhook_sink():
    sink = WebhookSink()
    sink.thread.start()
    yield sink
    sink.server.shutdown()
    sink.server.server_close()


def alert_connections(smtp_port: int, webhook_port: int) -> dict[str, str]:
    """The two alert connections as AIRFLOW_CONN_* variables, in Airflow's JSON form."""
    return {
        "AIRFLOW_CONN_ALERTS_SMTP": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
            "extra": {"from_email": "airflow@example.test", "to": RECIPIENT, "disable_ssl": True,
                      "disable_tls": True, "timeout": 10, "retry_limit": 0},
        }),
        "AIRFLOW_CONN_ALERTS_WEBHOOK": json.dumps({
            "conn_type": "apprise",
            "extra": {"config": {"path": f"json://127.0.0.1:{webhook_port}{WEBHOOK_PATH}"}},
        }),
    }


# --------------------------------------------------------------------------------------------
# Helpers over a finished run


def run_id_of(project: AirflowProject, dag_id: str, date: str) -> str:
    runs = project.runs(dag_id)
    matching = [r["run_id"] for r in runs if str(r.get("logical_date", "")).startswith(date)]
    assert matching, f"no run of {dag_id} at {date}: {runs}"
    return matching[0]


def failure_time(output: str) -> float:
    """When the task failed, from the `Task failed with exception` line of the `dags test` output (UTC)."""
    found = re.findall(r"^(\d{4}-\d\d-\d\dT[\d:.]+)Z \[error\s*\] Task failed with exception", output, re.M)
    assert len(found) == 1, f"expected one task failure in the output, found {found}"
    return dt.datetime.fromisoformat(found[0]).replace(tzinfo=dt.UTC).timestamp()


def bad_batch_conf(tmp_path: Path) -> dict:
    spec = make_bad_bikeshare(tmp_path / "data", BAD_DAY, "unknown_category")
    return {"pipeline": str(spec), "window_days": 7}


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.integration
def test_a_rejected_batch_alerts_by_email_and_webhook(tmp_path, smtp_sink, webhook_sink, capsys):
    project = AirflowProject.create(tmp_path / "home", **alert_connections(smtp_sink.port, webhook_sink.port))

    proc = project.dags_test("training_bikeshare", RUN_DATE, conf=bad_batch_conf(tmp_path))
    output = proc.stdout + proc.stderr

    states = project.task_states("training_bikeshare", RUN_DATE)
    assert (states["ingest"], states["validate"], states["build_features"]) == \
        ("success", "failed", "upstream_failed"), states
    run_id = run_id_of(project, "training_bikeshare", RUN_DATE)

    # One e-mail for the failed task, one for the failed run, none for the tasks that succeeded.
    mails = smtp_sink.wait_for(2)
    assert len(mails) == 2, [m.subject for m in mails]
    task_mail = next(m for m in mails if "task training_bikeshare.validate failed" in m.subject)
    run_mail = next(m for m in mails if "DAG run training_bikeshare failed" in m.subject)
    assert task_mail.rcpt_tos == [RECIPIENT]
    # The Variable alerts_environment comes from airflow_settings.yaml, loaded by AirflowProject.create.
    assert task_mail.subject == f"[Airflow local-dev] task training_bikeshare.validate failed: {run_id}"
    reports = sorted(project.store.glob("*/reports/validation/*/report.html"))
    assert len(reports) == 1, reports
    report = str(reports[0])
    log_url = f"http://localhost:8080/dags/training_bikeshare/runs/{quote(run_id)}/tasks/validate?try_number=1"
    for expected in ("training_bikeshare", "validate", run_id, "2011-06-30T00:00:00+00:00", "1 of 1", log_url,
                     "StepFailedPermanently: step `validate` failed (exit code 1)", f"{BAD_DAY}: {FAILED_EXPECTATION}",
                     "'hurricane'", report):
        assert expected in task_mail.body, f"{expected!r} not in the e-mail:\n{task_mail.body}"
    assert "last failed task: validate" in run_mail.body and run_id in run_mail.body

    # The same alerts on the webhook, as Apprise's JSON document.
    hooks = webhook_sink.wait_for(2)
    assert len(hooks) == 2, hooks
    assert {h.path for h in hooks} == {WEBHOOK_PATH}
    task_hook = next(h for h in hooks if h.payload["title"] == task_mail.subject)
    assert task_hook.payload["type"] == "failure"
    for expected in ("DAG: training_bikeshare", "task: validate", f"run: {run_id}", "try: 1 of 1", log_url,
                     f"report: {report}", f"{BAD_DAY}: {FAILED_EXPECTATION}"):
        assert expected in task_hook.payload["message"], f"{expected!r} not in:\n{task_hook.payload['message']}"
    assert any("DAG run training_bikeshare failed" in h.payload["title"] for h in hooks)

    latency = task_mail.received - failure_time(output)
    with capsys.disabled():
        print(f"\n[alerts] task failure -> e-mail received: {latency:.2f} s; "
              f"-> webhook received: {task_hook.received - failure_time(output):.2f} s")
    assert 0 <= latency < 10, latency


@pytest.mark.integration
def test_without_alert_connections_the_run_fails_only_on_validation(tmp_path):
    project = AirflowProject.create(tmp_path / "home")
    for conn_id in ("alerts_smtp", "alerts_webhook"):  # loaded from airflow_settings.yaml: take them away
        project.airflow("connections", "delete", conn_id)

    proc = project.dags_test("training_bikeshare", RUN_DATE, conf=bad_batch_conf(tmp_path))
    output = proc.stdout + proc.stderr

    states = project.task_states("training_bikeshare", RUN_DATE)
    assert [t for t, s in states.items() if s == "failed"] == ["validate"], states
    assert states["ingest"] == "success"
    assert "StepFailedPermanently: step `validate` failed" in output
    warnings = re.findall(r"\[warning\s*\] no alert channel configured", output)
    assert len(warnings) == 1, f"expected one warning for two failure callbacks, got {len(warnings)}"
    assert output.count("failure alert: ") == 2  # the task's and the run's callback both ran
    for trouble in ("Failed to run task callback", "Callback failed", "NOT sent"):
        assert trouble not in output


PROBE_DAG = '''
"""Alert probe: one task that succeeds, then one that fails on both of its tries."""
from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from pipeline_support.alerts import failure_notifier


@dag(schedule=None, start_date=pendulum.datetime(2011, 1, 1, tz="UTC"), catchup=False, tags=["test"],
     default_args={"owner": "mlops", "retries": 1, "retry_delay": timedelta(0),
                   "on_failure_callback": [failure_notifier()]},
     on_failure_callback=[failure_notifier()])
def alert_probe():
    @task
    def fine():
        return 1

    @task
    def flaky(ti=None):
        raise RuntimeError(f"boom on try {ti.try_number}")

    fine() >> flaky()


alert_probe()
'''


@pytest.mark.integration
def test_retries_and_successes_send_no_alert(tmp_path, smtp_sink, webhook_sink):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "alert_probe.py").write_text(PROBE_DAG)
    project = AirflowProject.create(tmp_path / "home", AIRFLOW__CORE__DAGS_FOLDER=str(dags),
                                    PYTHONPATH=str(ROOT / "dags"),
                                    **alert_connections(smtp_sink.port, webhook_sink.port))

    proc = project.dags_test("alert_probe", RUN_DATE)
    output = proc.stdout + proc.stderr

    assert project.task_states("alert_probe", RUN_DATE) == {"fine": "success", "flaky": "failed"}
    assert "boom on try 1" in output, "the first try did not run: nothing proves retries stay quiet"
    mails = smtp_sink.wait_for(2)
    time.sleep(1)  # anything more would be a spurious alert
    mails = smtp_sink.mails
    kinds = sorted(re.sub(r"^\[[^]]*\] ", "", m.subject).split(":")[0] for m in mails)
    assert kinds == ["DAG run alert_probe failed", "task alert_probe.flaky failed"], [m.subject for m in mails]
    task_mail = next(m for m in mails if "task alert_probe.flaky" in m.subject)
    assert "2 of 2" in task_mail.body and "RuntimeError: boom on try 2" in task_mail.body
    assert not any("boom on try 1" in m.body or "alert_probe.fine" in m.subject for m in mails)
    assert len(webhook_sink.wait_for(2)) == 2
