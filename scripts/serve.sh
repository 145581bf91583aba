#!/usr/bin/env bash
# Serve the embedded default's @champion locally (after `make run`): scripts/serve.sh [PIPELINE] [PORT]
# MODEL_URI overrides the model (models:/<name>@<alias>, models:/<name>/<version> or a folder).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
source scripts/env.sh
PIPELINE="${1:-bikeshare}"
PORT="${2:-8000}"
MODEL_URI="${MODEL_URI:-models:/$PIPELINE@champion}"
cat <<MSG
==> serving $MODEL_URI on http://127.0.0.1:$PORT (Ctrl-C stops it and flushes the prediction log)
  API docs:        http://127.0.0.1:$PORT/docs
  predict:         curl -s -H 'content-type: application/json' http://127.0.0.1:$PORT/predict -d @row.json
  MLflow protocol: http://127.0.0.1:$PORT/invocations
  metadata:        http://127.0.0.1:$PORT/metadata
  metrics:         http://127.0.0.1:$PORT/metrics
  prediction log:  $MLCYCLE_HOME/store/$PIPELINE/predictions/
MSG
exec .venv-steps/bin/mlcycle serve --model-uri "$MODEL_URI" --port "$PORT"
