"""Operator extra links: an "MLflow" button on a step task that produced a run or a model version.

Airflow 3 computes extra links in the worker right after a task succeeds and keeps them as XCom,
so the link is built from the step's own JSON result: a training run for train and evaluate, a
model version for register. The MLflow UI address comes from MLCYCLE_MLFLOW_UI_URL.
"""

from __future__ import annotations

import os
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
