# Source this file to point Airflow, MLflow and the steps at the project-local embedded default:
# Airflow on SQLite, MLflow on SQLite with a local artifact folder, the data store in a folder;
# all under .local/ (git-ignored). Values already set in the environment win.
if [ -z "${BASH_VERSION:-}" ]; then
  echo "scripts/env.sh must be sourced from bash (this shell is $0): run 'bash', then '. scripts/env.sh'" >&2
  return 1 2>/dev/null || exit 1
fi
MLCYCLE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MLCYCLE_ROOT
export MLCYCLE_HOME="${MLCYCLE_HOME:-$MLCYCLE_ROOT/.local}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$MLCYCLE_HOME/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$MLCYCLE_ROOT/dags}"
export AIRFLOW__CORE__PLUGINS_FOLDER="${AIRFLOW__CORE__PLUGINS_FOLDER:-$MLCYCLE_ROOT/plugins}"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$MLCYCLE_HOME/mlflow/mlflow.db}"
case "$MLFLOW_TRACKING_URI" in  # a tracking server keeps artifacts where it was told to
  sqlite:*|file:*) export MLCYCLE_ARTIFACT_ROOT="${MLCYCLE_ARTIFACT_ROOT:-file://$MLCYCLE_HOME/mlflow/artifacts}" ;;
esac
export MLCYCLE_STEPS_BIN="${MLCYCLE_STEPS_BIN:-$MLCYCLE_ROOT/.venv-steps/bin}"
export MLCYCLE_RUNNER="${MLCYCLE_RUNNER:-local}"
export MLFLOW_ENABLE_TELEMETRY="${MLFLOW_ENABLE_TELEMETRY:-false}"
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"
export PATH="$MLCYCLE_ROOT/.venv/bin:$PATH"
mkdir -p "$AIRFLOW_HOME" "$MLCYCLE_HOME/mlflow"
# The API server's JWT signing key (tokens of the UI's login, and of the tasks' Execution API):
# 64 random bytes, made once per Airflow home in a file only its owner reads. Airflow's generated
# default is 16 bytes (24 characters), and PyJWT then warns on every request (HS512 wants >= 64).
if [ -z "${AIRFLOW__API_AUTH__JWT_SECRET:-}" ]; then
  if [ ! -s "$AIRFLOW_HOME/jwt_secret" ]; then
    (umask 077 && head -c 64 /dev/urandom | base64 -w0 >"$AIRFLOW_HOME/jwt_secret")
  fi
  AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$AIRFLOW_HOME/jwt_secret")"
  export AIRFLOW__API_AUTH__JWT_SECRET
fi
