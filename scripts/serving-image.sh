#!/usr/bin/env bash
# Build the serving image of one model version: scripts/serving-image.sh [PIPELINE] [MODEL_URI] [extra options]
#   scripts/serving-image.sh bikeshare                          # models:/bikeshare@champion
#   scripts/serving-image.sh bikeshare models:/bikeshare/3 --tag my-registry/bikeshare:v3
# Default tag mlcycle-serving-<pipeline>:v<version>; an image for the same version and code is reused
# (--force rebuilds). Base image: BASE_IMAGE or MLCYCLE_SERVING_BASE_IMAGE, else python:3.11-slim when
# present, else local/python-base:3.11 (scripts/build-images.sh builds it where no registry is reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
source scripts/env.sh
docker info >/dev/null 2>&1 || scripts/docker-engine.sh
PIPELINE="${1:-bikeshare}"
MODEL_URI="${2:-models:/$PIPELINE@champion}"
shift $(( $# < 2 ? $# : 2 ))
exec .venv-steps/bin/mlcycle serving-image --pipeline "$PIPELINE" --model-uri "$MODEL_URI" "$@"
