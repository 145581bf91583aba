#!/usr/bin/env bash
# The main job on the embedded default: one full run of the training DAG through Airflow
# (`airflow dags test`), on SQLite and local folders. Usage: scripts/run.sh [DATE] [PIPELINE]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
DATE="${1:-2011-06-30}"
PIPELINE="${2:-bikeshare}"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 \
  || { tail -20 "$AIRFLOW_HOME/db-migrate.log" >&2; exit 1; }
.venv/bin/python scripts/load_airflow_settings.py --file airflow_settings.yaml  # connections, pools, variables
echo "==> airflow dags test training $DATE (pipeline: $PIPELINE)"
airflow dags test training "$DATE" --conf "{\"pipeline\": \"$PIPELINE\"}"
cat <<MSG

==> Done. Where to look:
  MLflow UI:          make mlflow-ui      (http://127.0.0.1:5000; model registry: $PIPELINE, aliases @champion/@challenger)
  Airflow UI:         make airflow-ui     (http://127.0.0.1:8080; same Airflow home: $AIRFLOW_HOME)
  Validation reports: $MLCYCLE_HOME/store/$PIPELINE/reports/validation/
  Data partitions:    $MLCYCLE_HOME/store/$PIPELINE/{raw,validated,features}/
  Quarantine:         $MLCYCLE_HOME/store/$PIPELINE/quarantine/
MSG
