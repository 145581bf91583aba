#!/usr/bin/env bash
# Dependency audit of every pinned environment: the Airflow side (requirements.txt and
# constraints-airflow.txt), the step image (docker/steps/), the serving image (docker/serving/).
# pip-audit asks PyPI's JSON API (its default `pypi` vulnerability service; `AUDIT_SERVICE=osv` for
# OSV) about each exact pin, without resolving or installing anything (--no-deps --disable-pip).
# --strict: a pin that could not be audited (the service unreachable, a mirror without the JSON
# API) fails the audit instead of passing silently. Not part of `make test`: the answer depends on
# the network and changes as advisories are published (docs/security.md).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.local/audit-venv
if [ ! -x "$venv/bin/pip-audit" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "pip-audit==2.10.1"
fi
status=0
for file in requirements.txt constraints-airflow.txt docker/steps/requirements.txt docker/steps/constraints.txt \
  docker/serving/requirements.txt docker/serving/constraints.txt; do
  echo "==> $file"
  "$venv/bin/pip-audit" -r "$file" --no-deps --disable-pip --strict --progress-spinner off \
    --vulnerability-service "${AUDIT_SERVICE:-pypi}" || status=1
done
exit $status
