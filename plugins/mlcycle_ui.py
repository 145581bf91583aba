"""Airflow UI extensions of the project: MLflow in Airflow's navigation bar.

The per-task "MLflow" buttons (a training run, a model version) are operator extra links of the
step operators (dags/pipeline_support/links.py); this plugin adds the MLflow UI itself to the
"Browse" menu. Its address comes from MLCYCLE_MLFLOW_UI_URL (default: `make mlflow-ui`'s).
"""

from __future__ import annotations

import os

from airflow.plugins_manager import AirflowPlugin

MLFLOW_UI_URL = os.environ.get("MLCYCLE_MLFLOW_UI_URL", "http://127.0.0.1:5000")


class MlcycleUiPlugin(AirflowPlugin):
    name = "mlcycle_ui"
    external_views = [
        {"name": "MLflow", "href": MLFLOW_UI_URL, "destination": "nav", "category": "browse",
         "url_route": "mlflow"},
    ]
