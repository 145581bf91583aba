"""Failure alerts for every DAG: one notifier, its channels configured by Airflow connections.

``failure_notifier()`` goes into a DAG's ``on_failure_callback`` (the run failed) and into
``default_args["on_failure_callback"]`` (a task failed for good: Airflow calls it only after the last
try; a try that will be retried calls ``on_retry_callback``, which we leave unset, so retries do not
alert). Nothing is sent on success.

Channels, each optional, looked up when a failure is reported (never when a DAG file is parsed):

``alerts_smtp`` (type ``smtp``): an e-mail through the SMTP provider's ``SmtpNotifier``.
    Extra: ``from_email`` (required), ``to`` (a list or a comma-separated string; when absent,
    ``$MLCYCLE_ALERT_EMAIL_TO``), and the provider's ``disable_ssl`` / ``disable_tls`` (both ``true``
    for a plain local server), ``timeout``, ``retry_limit``. Login and password as usual.
``alerts_webhook`` (type ``apprise``): a chat message through the Apprise provider's ``AppriseNotifier``.
    Extra: ``{"config": {"path": "<Apprise URL>"}}``, e.g. ``json://127.0.0.1:8088/alerts`` (a
    generic JSON webhook: POSTs ``{"title", "message", "type", ...}``), or
    ``https://hooks.slack.com/services/T000/B000/XXXX`` for a Slack incoming webhook.

Define them in the UI, with ``airflow connections add``, in ``airflow_settings.yaml`` (loaded by
``scripts/load_airflow_settings.py``), or as environment variables, e.g.::

    AIRFLOW_CONN_ALERTS_SMTP='{"conn_type": "smtp", "host": "127.0.0.1", "port": 8025, "extra":
        {"from_email": "airflow@localhost", "to": "mlops@localhost", "disable_ssl": true, "disable_tls": true}}'
    AIRFLOW_CONN_ALERTS_WEBHOOK='{"conn_type": "apprise", "extra": {"config": {"path": "json://127.0.0.1:8088/alerts"}}}'

Under ``airflow dags test`` the DAG-level (run) callback runs in the CLI process, which reads
connections from ``AIRFLOW_CONN_*`` variables and secrets backends but not from the metadata
database (Airflow 3.3): define the alert connections as environment variables there. Task callbacks,
and the DAG processor in a deployment, see every connection.

The optional Variable ``alerts_environment`` (e.g. ``local-dev``) names the deployment in the subject.
With neither connection defined, a failure is logged with one warning (once per process) and nothing is sent.
A channel that fails (server down, bad URL) logs an error; the notifier never raises, so alerting
can not change the outcome of a task or a run.
"""

from __future__ import annotations

import html
import logging
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook, BaseNotifier

from pipeline_support.links import report_url

log = logging.getLogger(__name__)

SMTP_CONN_ID = "alerts_smtp"
WEBHOOK_CONN_ID = "alerts_webhook"
RECIPIENTS_ENV = "MLCYCLE_ALERT_EMAIL_TO"
#: Optional Airflow Variable naming the deployment in the subject, e.g. "[Airflow local-dev] ...".
ENVIRONMENT_VARIABLE = "alerts_environment"
#: How many failing expectations an alert lists; the report has them all.
MAX_LISTED_FAILURES = 10
MAX_ERROR_CHARS = 300


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """The first non-empty line of ``text``, without a trailing colon, cut to ``limit`` characters."""
    first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    first = first.rstrip(":").rstrip()
    return first if len(first) <= limit else first[: limit - 1] + "…"


@dataclass(frozen=True)
class Alert:
    """What one failure alert says, taken from an Airflow callback context."""

    scope: str  # "task": a task failed for good; "run": the DAG run failed
    dag_id: str
    run_id: str
    logical_date: str
    task_id: str | None = None
    try_number: int | None = None
    max_tries: int | None = None
    error: str = ""
    log_url: str | None = None
    report: str | None = None
    data_docs: str | None = None
    failures: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    environment: str | None = None
    failure_class: str | None = None  # a step's "permanent" (not retried) or "transient" (retried)

    @classmethod
    def from_context(cls, context: dict[str, Any], environment: str | None = None) -> Alert:
        """Task callbacks carry ``exception``; DAG callbacks carry ``reason`` and the last failed ``ti``."""
        ti = context.get("ti") or context.get("task_instance")
        dag = context.get("dag")
        dag_run = context.get("dag_run")
        dag_id = getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None) or "?"
        run_id = context.get("run_id") or getattr(ti, "run_id", None) or getattr(dag_run, "run_id", None) or "?"
        logical = context.get("logical_date") or getattr(dag_run, "logical_date", None)
        task_id = getattr(ti, "task_id", None)
        scope = "run" if "reason" in context else "task"
        exc = context.get("exception")
        payload = getattr(exc, "payload", None)
        payload = payload if isinstance(payload, dict) else {}  # StepFailed.payload: error, report, failures
        if scope == "run":
            error = f"the run failed ({context.get('reason') or 'unknown reason'})"
            if task_id:
                error += f"; last failed task: {task_id}"
        elif exc is None:
            error = "the task failed (no exception in the context: see the log)"
        elif isinstance(exc, BaseException):
            error = one_line(f"{type(exc).__name__}: {exc}")
        else:
            error = one_line(str(exc))
        failures = payload.get("failures") if isinstance(payload.get("failures"), list) else []
        kind = payload.get("failure_class") or getattr(exc, "failure_class", None)
        return cls(
            scope=scope, dag_id=str(dag_id), run_id=str(run_id),
            logical_date=logical.isoformat() if hasattr(logical, "isoformat") else str(logical or "none"),
            task_id=task_id, try_number=getattr(ti, "try_number", None),
            max_tries=getattr(ti, "max_tries", None), error=error, log_url=_log_url(ti),
            report=payload.get("report"), data_docs=report_url(payload.get("data_docs"), absolute=True) or None, failures=tuple(f for f in failures if isinstance(f, dict)),
            environment=environment, failure_class=kind if isinstance(kind, str) else None,
        )

    @property
    def what(self) -> str:
        if self.scope == "run":
            return f"DAG run {self.dag_id} failed"
        return f"task {self.dag_id}.{self.task_id} failed"

    @property
    def subject(self) -> str:
        where = f"Airflow {self.environment}" if self.environment else "Airflow"
        return f"[{where}] {self.what}: {self.run_id}"

    def facts(self) -> list[tuple[str, str]]:
        """The alert as (label, value) rows, the same for every channel."""
        rows = [("DAG", self.dag_id), ("run", self.run_id), ("logical date", self.logical_date)]
        if self.task_id:
            rows.append(("task" if self.scope == "task" else "failed task", self.task_id))
        if self.try_number is not None:
            total = f" of {self.max_tries + 1}" if isinstance(self.max_tries, int) and self.max_tries >= 0 else ""
            rows.append(("try", f"{self.try_number}{total}"))
        rows.append(("error", self.error))
        if self.failure_class:
            rows.append(("failure class", FAILURE_CLASS_TEXT.get(self.failure_class, self.failure_class)))
        if self.log_url:
            rows.append(("log", self.log_url))
        if self.report:
            rows.append(("report", self.report))
        if self.data_docs:
            rows.append(("Data Docs", self.data_docs))
        return rows

    def failure_lines(self) -> list[str]:
        lines = [f"{f.get('partition', '?')}: {f.get('expectation', '?')}: {f.get('observed', '')}".rstrip(": ")
                 for f in self.failures[:MAX_LISTED_FAILURES]]
        if len(self.failures) > MAX_LISTED_FAILURES:
            lines.append(f"... and {len(self.failures) - MAX_LISTED_FAILURES} more (see the report)")
        return lines

    def text(self) -> str:
        """Plain text, for chat."""
        lines = [f"{label}: {value}" for label, value in self.facts()]
        if self.failures:
            lines += ["", f"failed expectations ({len(self.failures)}):", *(f"- {x}" for x in self.failure_lines())]
        return "\n".join(lines)

    def html(self) -> str:
        """HTML, for e-mail; every value is escaped."""
        def cell(label: str, value: str) -> str:
            shown = html.escape(value)
            if label in ("log", "Data Docs"):
                shown = f'<a href="{html.escape(value, quote=True)}">{shown}</a>'
            return f"<tr><th align='left'>{html.escape(label)}</th><td>{shown}</td></tr>"

        parts = [f"<h3>{html.escape(self.what)}</h3>",
                 "<table>" + "".join(cell(label, value) for label, value in self.facts()) + "</table>"]
        if self.failures:
            parts.append(f"<p>Failed expectations ({len(self.failures)}):</p><ul>"
                         + "".join(f"<li>{html.escape(x)}</li>" for x in self.failure_lines()) + "</ul>")
        return "\n".join(parts)


#: What the alert says for each failure class (``pipeline_support.contract``).
FAILURE_CLASS_TEXT = {
    "permanent": "permanent: not retried, a retry cannot fix it (fix the cause, then clear the task)",
    "transient": "transient: retried (a lost connection, a silent server, a full disk or a killed process); "
                 "it failed on its last try",
}


def _log_url(ti: Any) -> str | None:
    try:
        return getattr(ti, "log_url", None)
    except Exception:  # a property that needs configuration; the link is a convenience
        return None


def _recipients(extra: dict[str, Any]) -> list[str]:
    raw = extra.get("to") or os.environ.get(RECIPIENTS_ENV, "")
    items = raw if isinstance(raw, list) else str(raw).replace(";", ",").split(",")
    return [str(x).strip() for x in items if str(x).strip()]


@contextmanager
def _apprise_problems() -> Iterator[list[str]]:
    """Collect what Apprise logs at WARNING or above: it reports a failed delivery only that way."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            problems.append(record.getMessage())

    problems: list[str] = []
    handler = Collect(logging.WARNING)
    logger = logging.getLogger("apprise")
    logger.addHandler(handler)
    try:
        yield problems
    finally:
        logger.removeHandler(handler)


class PipelineFailureNotifier(BaseNotifier):
    """Sends one alert per final task failure or run failure to every configured channel."""

    #: One "no channel configured" warning per process, not one per failure.
    _warned_unconfigured = False

    def __init__(self, *, smtp_conn_id: str = SMTP_CONN_ID, webhook_conn_id: str = WEBHOOK_CONN_ID,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.smtp_conn_id = smtp_conn_id
        self.webhook_conn_id = webhook_conn_id

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Nothing to render (the alert text is built, not templated). Skipping it also matters: under
        ``airflow dags test`` the DAG-level context holds a SerializedDAG without ``get_template_env``,
        and BaseNotifier's rendering would fail before ``notify`` runs (Airflow 3.3.2)."""

    def notify(self, context: dict[str, Any]) -> None:
        channels = self._channels()
        alert = Alert.from_context(context, environment=self._environment() if channels else None)
        log.info("failure alert: %s (%s)%s", alert.subject, alert.error,
                 f"; {alert.failure_class} failure" if alert.failure_class else "")
        if not channels:
            self._warn_unconfigured(alert)
            return
        for name, send in channels:
            unreachable = self._unreachable(name)
            if unreachable:
                log.warning("failure alert NOT sent by %s: %s. Nothing else to do here; for local sinks run "
                            "`make alert-sinks`, or remove the connection.", name, unreachable)
                continue
            try:
                send(alert, context)
                log.info("failure alert sent by %s: %s", name, alert.subject)
            except Exception as exc:  # a broken channel must not fail the task, the run, or the other channel
                log.error("failure alert NOT sent by %s (%s): %s", name, type(exc).__name__, exc)

    def _channels(self) -> list[tuple[str, Callable[[Alert, dict[str, Any]], None]]]:
        """The channels whose connection exists, decided now, at notification time."""
        found = []
        for conn_id, send in ((self.smtp_conn_id, self._send_email), (self.webhook_conn_id, self._send_webhook)):
            if self._connection_exists(conn_id):
                found.append((f"connection `{conn_id}`", send))
        return found

    def _unreachable(self, channel: str) -> str | None:
        """Why a channel's server cannot be reached now (one TCP connect, 2 s), or None when it can.

        A local sink that is not running is the common case on a laptop: say so in one line instead of
        the provider's retries and tracebacks. Only host and port are probed; delivery errors are the
        provider's to report.
        """
        conn_id = self.smtp_conn_id if self.smtp_conn_id in channel else self.webhook_conn_id
        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception:  # noqa: BLE001 - it existed a moment ago; let the send report what is wrong
            return None
        if conn_id == self.smtp_conn_id:
            host, port = conn.host or "localhost", int(conn.port or 25)
        else:
            url = str(((conn.extra_dejson or {}).get("config") or {}).get("path") or "")
            parts = urlsplit(url if "://" in url else "")
            if not parts.hostname:
                return None
            default = {"http": 80, "json": 80, "form": 80, "xml": 80}.get(parts.scheme, 443)
            host, port = parts.hostname, parts.port or default
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            return f"nothing answers at {host}:{port} ({exc.strerror or exc})"
        return None

    @staticmethod
    def _environment() -> str | None:
        from airflow.sdk import Variable

        try:
            return Variable.get(ENVIRONMENT_VARIABLE, default=None)
        except Exception as exc:  # only a label: never worth losing the alert over
            log.warning("cannot read Variable `%s`: %s", ENVIRONMENT_VARIABLE, exc)
            return None

    @staticmethod
    def _connection_exists(conn_id: str) -> bool:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            return False
        except Exception as exc:  # the secrets backend or API is unreachable: say so, send what we can
            log.error("cannot look up alert connection `%s` (%s): %s", conn_id, type(exc).__name__, exc)
            return False
        return True

    def _warn_unconfigured(self, alert: Alert) -> None:
        cls = type(self)
        if cls._warned_unconfigured:
            log.info("no alert channel configured: %s not sent", alert.subject)
            return
        cls._warned_unconfigured = True
        log.warning("no alert channel configured: neither connection `%s` (e-mail) nor `%s` (chat webhook) "
                    "is visible here, so this failure is only logged: %s. See dags/pipeline_support/alerts.py. "
                    "(Under `airflow dags test`, a DAG-level callback sees connections from AIRFLOW_CONN_* "
                    "variables and secrets backends only, not those stored in the metadata database.) "
                    "This warning is logged once per process.",
                    self.smtp_conn_id, self.webhook_conn_id, alert.subject)

    def _send_email(self, alert: Alert, context: dict[str, Any]) -> None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        extra = BaseHook.get_connection(self.smtp_conn_id).extra_dejson
        to = _recipients(extra)
        if not to:
            raise ValueError(f"no recipients: set `to` in the extra of connection `{self.smtp_conn_id}` "
                             f"or the environment variable {RECIPIENTS_ENV}")
        # notify(), not __call__: the subject and body are finished text, not Jinja templates to render
        SmtpNotifier(smtp_conn_id=self.smtp_conn_id, to=to, from_email=extra.get("from_email"),
                     subject=alert.subject, html_content=alert.html()).notify(context)

    def _send_webhook(self, alert: Alert, context: dict[str, Any]) -> None:
        from airflow.providers.apprise.notifications.apprise import AppriseNotifier
        from apprise import NotifyFormat, NotifyType

        notifier = AppriseNotifier(apprise_conn_id=self.webhook_conn_id, title=alert.subject, body=alert.text(),
                                   notify_type=NotifyType.FAILURE, body_format=NotifyFormat.TEXT)
        with _apprise_problems() as problems:
            notifier.notify(context)
        if problems:  # the provider's hook drops Apprise's result, so a failed POST would pass silently
            raise RuntimeError("; ".join(problems))


def failure_notifier() -> PipelineFailureNotifier:
    """The notifier every DAG puts in ``on_failure_callback``, at DAG level and in ``default_args``."""
    return PipelineFailureNotifier()
