#!/usr/bin/env bash
# The whole test suite: lint, the step package's unit tests (in the step environment), then the
# DAG and integration tests (in the Airflow environment: real Airflow runs, real MLflow store).
# Extra arguments go to both pytest runs (e.g. -k name, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
echo "==> ruff check (with Airflow's AIR rules)"
.venv/bin/ruff check .
echo "==> unit tests of the step package (.venv-steps)"
.venv-steps/bin/python -m pytest tests/unit tests/data -q "$@"
echo "==> DAG and integration tests (.venv)"
.venv/bin/python -m pytest tests/dags tests/integration -q "$@"
