#!/usr/bin/env bash
# The whole test suite: lint, the step package's unit tests (in the step environment), then the
# DAG, repository-check and integration tests (in the Airflow environment: real Airflow runs, real
# MLflow store), and the combined coverage of both.
# Extra arguments go to both pytest runs (e.g. -k name, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
echo "==> ruff check (with Airflow's AIR rules)"
.venv/bin/ruff check .
echo "==> unit tests of the step package (.venv-steps)"
COVERAGE_FILE=.coverage.unit .venv-steps/bin/python -m pytest tests/unit tests/data -q --cov --cov-report= "$@"
echo "==> DAG and integration tests (.venv)"
COVERAGE_FILE=.coverage.airflow .venv/bin/python -m pytest tests/dags tests/ci tests/integration -q --cov --cov-report= "$@"
echo "==> coverage of include/ and dags/ (coverage.xml)"
COVERAGE_FLOORS=$([ $# -eq 0 ] && echo 1 || echo 0) bash scripts/coverage.sh  # floors apply to the whole suite
