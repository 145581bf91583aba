"""Airflow UI extensions of the project: MLflow in Airflow's navigation bar, and the store's reports.

The per-task "MLflow" and "Report" buttons are operator extra links of the step operators
(dags/pipeline_support/links.py). This plugin adds:

- the MLflow UI to the "Browse" menu (its address from MLCYCLE_MLFLOW_UI_URL, default `make mlflow-ui`'s);
- a read-only route of the Airflow API server, ``/mlcycle/reports/<pipeline>/reports/...``, that
  serves the reports the steps write into the data store (validation summaries and Great
  Expectations Data Docs, drift reports), so that a "Report" button and an alert open them in a
  browser. Only files under a pipeline's ``reports/`` folder are served: raw, validated and
  quarantined data never are. Like the MLflow UI, it is readable by whoever reaches the API server.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.plugins_manager import AirflowPlugin

MLFLOW_UI_URL = os.environ.get("MLCYCLE_MLFLOW_UI_URL", "http://127.0.0.1:5000")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def store_root() -> Path:
    if os.environ.get("MLCYCLE_STORE"):
        return Path(os.environ["MLCYCLE_STORE"]).resolve()
    return (Path(os.environ.get("MLCYCLE_HOME", PROJECT_ROOT / ".local")) / "store").resolve()


def reports_app():
    """A FastAPI app serving ``<store>/<pipeline>/reports/**`` (HTML, JSON, images), nothing else."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import FileResponse

    app = FastAPI(title="mlcycle reports", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/{pipeline}/reports/{path:path}")
    def report(pipeline: str, path: str) -> FileResponse:
        folder = (store_root() / pipeline / "reports").resolve()
        target = (folder / (path or "index.html")).resolve()
        if not target.is_relative_to(folder) or not target.is_file():
            raise HTTPException(status_code=404, detail=f"no report {pipeline}/reports/{path}")
        return FileResponse(target)

    return app


class MlcycleUiPlugin(AirflowPlugin):
    name = "mlcycle_ui"
    external_views = [
        {"name": "MLflow", "href": MLFLOW_UI_URL, "destination": "nav", "category": "browse",
         "url_route": "mlflow"},
    ]
    fastapi_apps = [{"app": reports_app(), "url_prefix": "/mlcycle/reports", "name": "mlcycle reports"}]
