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
# The pipeline's DAG, and a check that its schedule serves DATE (a clear error instead of an empty run).
# A spec of a new name, in any folder, joins MLCYCLE_PIPELINES_DIR as a file entry (nothing is copied).
plan=$(.venv/bin/python scripts/pipeline_run.py "$PIPELINE" "$DATE")
{ read -r DAG_ID; read -r CONF; read -r DIRS; read -r LOGICAL_DATE; } <<<"$plan"
export MLCYCLE_PIPELINES_DIR="$DIRS"
NAME=${DAG_ID#training_}
# DATE at the schedule's time in its zone, so that the run covers the day before DATE there.
echo "==> airflow dags test $DAG_ID $LOGICAL_DATE (pipeline: $PIPELINE; a manual run covers the day before $DATE)"
echo "    MLCYCLE_PIPELINES_DIR=$MLCYCLE_PIPELINES_DIR"
.venv/bin/python scripts/run_dag.py "$DAG_ID" "$LOGICAL_DATE" --conf "$CONF"  # dags test, with task logs and start time for the UI
STORE=${MLCYCLE_STORE:-$MLCYCLE_HOME/store}  # a folder, or s3://bucket/prefix
cat <<MSG

==> Done. Where to look:
  MLflow UI:          make mlflow-ui      (http://127.0.0.1:5000; model registry: $NAME, aliases @champion/@challenger)
  Airflow UI:         make airflow-ui     (http://127.0.0.1:8080; same Airflow home: $AIRFLOW_HOME)
  Validation reports: $STORE/$NAME/reports/validation/
  Data partitions:    $STORE/$NAME/{raw,validated,features}/
  Quarantine:         $STORE/$NAME/quarantine/
MSG
