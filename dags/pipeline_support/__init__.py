"""Airflow-side helpers shared by the DAG files: the step runner seam and failure alerts.

Nothing here imports the ML stack: steps are reached only through their command line.
"""

from pathlib import Path

#: The project folder (the one holding dags/, include/ and .venv-steps/).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
