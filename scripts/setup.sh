#!/usr/bin/env bash
# Create the two environments (idempotent; re-run after changing a requirements file):
#   .venv        the Airflow environment: requirements.txt (+ dev tools), no ML libraries
#   .venv-steps  the step environment: docker/steps/requirements.txt + the mlcycle package
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"' \
  || { echo "error: Python 3.11 is required (found $("$PYTHON" --version)); set PYTHON=/path/to/python3.11" >&2; exit 1; }

pip_install() {  # pip install, minus one harmless warning some machines' pip.conf repeats per package
  local py=$1; shift
  "$py" -m pip install --quiet "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2)
}

make_env() {  # make_env DIR STAMP_INPUTS... : rebuild only when an input changed
  local dir=$1; shift
  local stamp="$dir/.mlcycle-requirements.sha"
  local want; want=$(cat "$@" | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 1; fi
  [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
  pip_install "$dir/bin/python" --upgrade pip
  echo "$want" > "$stamp.pending"
  return 0
}

if make_env .venv requirements.txt requirements-dev.txt requirements-tools.txt constraints-airflow.txt; then
  echo "==> installing the Airflow environment (.venv)"
  pip_install .venv/bin/python -r requirements.txt -r requirements-dev.txt -r requirements-tools.txt \
    -c constraints-airflow.txt
  mv .venv/.mlcycle-requirements.sha.pending .venv/.mlcycle-requirements.sha
fi
if make_env .venv-steps docker/steps/requirements.txt docker/steps/constraints.txt requirements-dev.txt pyproject.toml; then
  echo "==> installing the step environment (.venv-steps)"
  pip_install .venv-steps/bin/python -r docker/steps/requirements.txt -r requirements-dev.txt \
    -c docker/steps/constraints.txt
  pip_install .venv-steps/bin/python --no-deps -e .
  mv .venv-steps/.mlcycle-requirements.sha.pending .venv-steps/.mlcycle-requirements.sha
fi
# Node tools of the repository checks (gitlab-ci-local), pinned by .ci/gitlab-ci-local/package-lock.json.
# Optional on a laptop without npm: the tests that need them skip and say why.
NODE_TOOLS=.ci/gitlab-ci-local
node_want=$(sha256sum "$NODE_TOOLS/package-lock.json" | cut -c1-16)
if command -v npm >/dev/null && [ "$(cat "$NODE_TOOLS/node_modules/.mlcycle-lock.sha" 2>/dev/null)" != "$node_want" ]; then
  echo "==> installing the node tools ($NODE_TOOLS)"
  npm ci --prefix "$NODE_TOOLS" --no-audit --no-fund --loglevel=error >/dev/null
  echo "$node_want" > "$NODE_TOOLS/node_modules/.mlcycle-lock.sha"
fi
echo "==> environments ready: .venv (Airflow) and .venv-steps (steps)"
