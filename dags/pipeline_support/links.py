"""Operator extra links: an "MLflow" button on a step task that produced a run or a model version,
and a "Report" button on a step that wrote a report a person reads (validation's Data Docs).

Airflow 3 computes extra links in the worker when a task ends (success or failure) and keeps them
as XCom, so a link is built from the step's own JSON result: a training run for train and evaluate,
a model version for register, the Data Docs page of a validation (the failing one when it fails).
The MLflow UI address comes from MLCYCLE_MLFLOW_UI_URL; reports are served by the Airflow API
server itself (plugins/mlcycle_ui.py), at MLCYCLE_REPORTS_URL (default: ``/mlcycle/reports`` under
the API server's ``[api] base_url``, ``AIRFLOW__API__BASE_URL``). With neither set, the "Report"
button holds a path without a host (``/mlcycle/reports/...``): the browser opens it on the API
server that shows the button, whatever its port. A mail has no such page to resolve against, so an
alert's link falls back to http://127.0.0.1:8080, where ``make airflow-ui`` listens by default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperatorLink


def mlflow_url(result: dict[str, Any]) -> str:
    """The MLflow UI page of a step result, or "" when the result names nothing in MLflow."""
    base = os.environ.get("MLCYCLE_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")
    if result.get("model_name") and result.get("version"):
        return f"{base}/#/models/{result['model_name']}/versions/{result['version']}"
    if result.get("run_id") and result.get("experiment_id"):
        return f"{base}/#/experiments/{result['experiment_id']}/runs/{result['run_id']}"
    return ""


class MLflowLink(BaseOperatorLink):
    name = "MLflow"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return getattr(operator, "mlflow_url", "")


#: Where the Airflow API server serves the store's reports (plugins/mlcycle_ui.py mounts them there).
REPORTS_ROUTE = "/mlcycle/reports"


def store_root() -> Path:
    """The data store as the steps see it (the Docker runner mounts it at the same path)."""
    if os.environ.get("MLCYCLE_STORE"):
        return Path(os.environ["MLCYCLE_STORE"]).resolve()
    from pipeline_support import PROJECT_ROOT

    return (Path(os.environ.get("MLCYCLE_HOME", PROJECT_ROOT / ".local")) / "store").resolve()


#: Where ``make airflow-ui`` serves by default: the host of an alert's links when nothing else says.
DEFAULT_API_URL = "http://127.0.0.1:8080"


def report_url(path: str | None, absolute: bool = False) -> str:
    """The address of a report file: served by Airflow when it is in the store's reports, else a file URI.

    Without MLCYCLE_REPORTS_URL or AIRFLOW__API__BASE_URL, the address is a path on the API server
    (``/mlcycle/reports/...``), or with ``absolute`` (a mail), one on DEFAULT_API_URL.
    """
    if not path:
        return ""
    target = Path(path).resolve()
    try:
        relative = target.relative_to(store_root())
    except ValueError:
        return target.as_uri()
    if len(relative.parts) < 3 or relative.parts[1] != "reports":
        return target.as_uri()
    api = os.environ.get("AIRFLOW__API__BASE_URL") or (DEFAULT_API_URL if absolute else "")
    base = (os.environ.get("MLCYCLE_REPORTS_URL") or f"{api.rstrip('/')}{REPORTS_ROUTE}").rstrip("/")
    return f"{base}/{relative.as_posix()}"


def result_report_url(result: dict[str, Any] | None) -> str:
    """The report a person should open for a step result: its Data Docs page, else its report."""
    result = result or {}
    return report_url(result.get("data_docs") or result.get("report"))


class ReportLink(BaseOperatorLink):
    name = "Report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return getattr(operator, "report_url", "")
