"""The failure notifier without Airflow runs: what an alert says, and how the notifier behaves when a
channel is missing or broken. Servers are real (aiosmtpd and http.server on 127.0.0.1), in this process.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from types import SimpleNamespace

import pytest

from pipeline_support.alerts import (
    Alert,
    PipelineFailureNotifier,
    failure_notifier,
    one_line,
)
from pipeline_support.contract import StepFailed
from tests.integration import test_alerts as live
from tests.integration.airflow_env import free_port
from tests.integration.test_alerts import alert_connections

# The same real local servers (fixtures) as the integration tests.
smtp_sink = live.smtp_sink
webhook_sink = live.webhook_sink

REPORT = "/store/bikeshare/reports/validation/end=2011-06-30/report.html"
EXPECTATION = "expect_column_values_to_be_in_set on `weathersit` (value_set=['clear', 'cloudy/misty'])"


def task_context(exception: BaseException | str | None, **ti: object) -> dict:
    ti_fields = {"dag_id": "training", "task_id": "validate", "run_id": "manual__2011-06-30", "try_number": 1,
                 "max_tries": 0, "log_url": "http://localhost:8080/dags/training/runs/manual__2011-06-30/tasks/validate"}
    return {"ti": SimpleNamespace(**{**ti_fields, **ti}), "run_id": "manual__2011-06-30",
            "logical_date": dt.datetime(2011, 6, 30, tzinfo=dt.UTC), "exception": exception}


def rejected_batch(n_failures: int = 1) -> StepFailed:
    failures = [{"partition": f"2011-06-{29 - i:02d}", "expectation": EXPECTATION,
                 "observed": "1 of 24 rows unexpected (4.2%), e.g. ['tornado']"} for i in range(n_failures)]
    return StepFailed("step `validate` failed (exit code 1): 1 partition(s) of bikeshare failed the suite "
                      "`bikeshare` and were quarantined under /store/bikeshare/quarantine:\n"
                      "  2011-06-29: ...\nReport: " + REPORT,
                      {"error": "...", "report": REPORT, "failures": failures})


@pytest.fixture(autouse=True)
def no_alert_connections(monkeypatch):
    for name in ("AIRFLOW_CONN_ALERTS_SMTP", "AIRFLOW_CONN_ALERTS_WEBHOOK", "MLCYCLE_ALERT_EMAIL_TO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(PipelineFailureNotifier, "_warned_unconfigured", False)


def test_a_task_alert_says_what_failed_where_and_why():
    alert = Alert.from_context(task_context(rejected_batch()))
    assert alert.subject == "[Airflow] task training.validate failed: manual__2011-06-30"
    text = alert.text()
    for expected in ("DAG: training", "task: validate", "run: manual__2011-06-30",
                     "logical date: 2011-06-30T00:00:00+00:00", "try: 1 of 1",
                     "log: http://localhost:8080/dags/training/runs/manual__2011-06-30/tasks/validate",
                     f"report: {REPORT}", f"- 2011-06-29: {EXPECTATION}: 1 of 24 rows unexpected"):
        assert expected in text, f"{expected!r} not in\n{text}"
    error_line = next(line for line in text.splitlines() if line.startswith("error: "))
    assert error_line == ("error: StepFailed: step `validate` failed (exit code 1): 1 partition(s) of bikeshare "
                          "failed the suite `bikeshare` and were quarantined under /store/bikeshare/quarantine")


def test_a_task_alert_says_whether_the_failure_was_retried():
    from pipeline_support.contract import StepFailedPermanently

    permanent = Alert.from_context(task_context(StepFailedPermanently("step `validate` failed", {"error": "x"})))
    assert "failure class: permanent: not retried, a retry cannot fix it" in permanent.text()
    assert "failure class</th><td>permanent: not retried" in permanent.html()
    transient = Alert.from_context(task_context(StepFailed("step `train` failed (exit code -9): killed"),
                                                try_number=3, max_tries=2))
    assert "failure class: transient: retried" in transient.text() and "try: 3 of 3" in transient.text()
    assert "failure class" not in Alert.from_context(task_context(RuntimeError("not a step"))).text()


def test_a_run_alert_names_the_reason_and_the_failed_task():
    context = task_context(None)
    del context["exception"]
    context["reason"] = "task_failure"
    alert = Alert.from_context(context, environment="local-dev")
    assert alert.subject == "[Airflow local-dev] DAG run training failed: manual__2011-06-30"
    assert "error: the run failed (task_failure); last failed task: validate" in alert.text()
    assert "failed task: validate" in alert.text()


def test_long_lists_are_cut_and_html_is_escaped():
    alert = Alert.from_context(task_context(ValueError("<script>alert(1)</script>\nsecond line")))
    assert "ValueError: &lt;script&gt;alert(1)&lt;/script&gt;" in alert.html()
    assert "second line" not in alert.html()
    many = Alert.from_context(task_context(rejected_batch(12)))
    assert "failed expectations (12):" in many.text()
    assert many.text().count("expect_column_values_to_be_in_set") == 10
    assert "... and 2 more (see the report)" in many.text()


def test_one_line():
    assert one_line("\n  first: \nsecond") == "first"
    assert one_line("x" * 400, limit=10) == "x" * 9 + "…"


def test_without_connections_it_warns_once_and_never_raises(caplog):
    notifier = failure_notifier()
    with caplog.at_level(logging.INFO, logger="pipeline_support.alerts"):
        notifier(task_context(rejected_batch()))
        notifier(task_context(RuntimeError("again"), task_id="train"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no alert channel configured" in warnings[0].getMessage()
    assert "alerts_smtp" in warnings[0].getMessage() and "alerts_webhook" in warnings[0].getMessage()


def test_a_sink_that_is_not_running_costs_one_line_per_channel_and_no_traceback(monkeypatch, caplog):
    closed = free_port()  # nothing listens there: the local sinks of airflow_settings.yaml, not started
    for name, value in alert_connections(closed, closed).items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.DEBUG):
        failure_notifier()(task_context(rejected_batch()))
    unsent = [r for r in caplog.records if "NOT sent" in r.getMessage()]
    assert [r.levelno for r in unsent] == [logging.WARNING, logging.WARNING], [r.getMessage() for r in unsent]
    assert "connection `alerts_smtp`: nothing answers at 127.0.0.1:" in unsent[0].getMessage()
    assert "connection `alerts_webhook`: nothing answers at 127.0.0.1:" in unsent[1].getMessage()
    assert "make alert-sinks" in unsent[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_an_smtp_connection_without_recipients_is_an_error_that_names_the_fix(monkeypatch, caplog, smtp_sink):
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_SMTP", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_sink.port,
        "extra": {"from_email": "a@example.test", "disable_ssl": True, "disable_tls": True}}))
    with caplog.at_level(logging.INFO, logger="pipeline_support.alerts"):
        failure_notifier()(task_context(rejected_batch()))
    assert any("MLCYCLE_ALERT_EMAIL_TO" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    monkeypatch.setenv("MLCYCLE_ALERT_EMAIL_TO", "a@example.test; b@example.test")
    failure_notifier()(task_context(rejected_batch()))
    assert [m.rcpt_tos for m in smtp_sink.wait_for(1)] == [["a@example.test", "b@example.test"]]


def test_both_channels_deliver_the_text_verbatim(monkeypatch, smtp_sink, webhook_sink):
    for name, value in alert_connections(smtp_sink.port, webhook_sink.port).items():
        monkeypatch.setenv(name, value)
    # Text that looks like a template must arrive as written: the alert is never rendered by Jinja.
    failure_notifier()(task_context(RuntimeError("bad value {{ ti.task_id }} in column `x`")))
    (mail,) = smtp_sink.wait_for(1)
    (hook,) = webhook_sink.wait_for(1)
    assert mail.subject == hook.payload["title"] == "[Airflow] task training.validate failed: manual__2011-06-30"
    assert "RuntimeError: bad value {{ ti.task_id }} in column `x`" in mail.body
    assert "error: RuntimeError: bad value {{ ti.task_id }} in column `x`" in hook.payload["message"]
    assert hook.payload["type"] == "failure"
