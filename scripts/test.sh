#!/usr/bin/env bash
# The whole test suite: lint, the step package's unit tests (in the step environment), then the
# DAG, repository-check and integration tests (in the Airflow environment: real Airflow runs, real
# MLflow store), and the combined coverage of both.
# Extra arguments go to both pytest runs (e.g. -k name, -x). Each run ends with its ten slowest
# tests, so a scenario that grows the suite's budget shows up in every CI log.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
echo "==> ruff check (with Airflow's AIR rules)"
.venv/bin/ruff check .
echo "==> unit tests of the step package (.venv-steps)"
# MLCYCLE_TEST_WORKERS pytest-xdist workers (default 2, one per core; 0: one process, no xdist).
parallel() {
  if [ "${MLCYCLE_TEST_WORKERS:-2}" = 0 ]; then echo "-p no:xdist"; else echo "--numprocesses ${MLCYCLE_TEST_WORKERS:-2} $*"; fi
}
read -ra unit_workers <<<"$(parallel)"
COVERAGE_FILE="$PWD/.coverage.unit" .venv-steps/bin/python -m pytest tests/unit tests/data -q \
  "${unit_workers[@]}" --cov --cov-report= --durations=10 "$@"
if [ -n "${MLCYCLE_IMAGES_BUILD_RC:-}" ]; then  # .ci/run builds the images while the unit tests run
  bash scripts/wait-for-build.sh "$MLCYCLE_IMAGES_BUILD_RC" "$MLCYCLE_IMAGES_BUILD_LOG"
fi
echo "==> DAG and integration tests (.venv, ${MLCYCLE_TEST_WORKERS:-2} workers)"
# Most of their time is spent waiting on Airflow, MLflow and Docker subprocesses; each module runs
# whole on one worker, longest first (tests/integration/conftest.py says how).
read -ra workers <<<"$(parallel --dist loadfile --no-loadscope-reorder)"
COVERAGE_FILE="$PWD/.coverage.airflow" .venv/bin/python -m pytest tests/dags tests/ci tests/integration -q \
  "${workers[@]}" --cov --cov-report= --durations=10 "$@"
echo "==> coverage of include/ and dags/ (coverage.xml)"
COVERAGE_FLOORS=$([ $# -eq 0 ] && echo 1 || echo 0) bash scripts/coverage.sh  # floors apply to the whole suite
