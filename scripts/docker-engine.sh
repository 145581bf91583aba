#!/usr/bin/env bash
# Make sure a Docker engine is running on this machine (idempotent; run as root).
#
#   scripts/docker-engine.sh
#
# - does nothing when `docker info` already works;
# - installs Debian's docker.io when dockerd is missing (one apt-get update);
# - starts dockerd with --bridge=none --iptables=false (no bridge network: containers
#   use the host network, every service is reached on 127.0.0.1), logging to
#   /var/log/dockerd.log, detached so it outlives this script;
# - waits up to DOCKER_WAIT_SECONDS (60) for `docker info`.
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
WAIT=${DOCKER_WAIT_SECONDS:-60}

log() { echo "docker-engine: $*" >&2; }

docker_ok() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

if docker_ok; then
    log "engine already running ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    log "ERROR: no running Docker engine, and starting one needs root"
    exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
    log "installing docker.io from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

if pgrep -x dockerd >/dev/null 2>&1; then
    log "dockerd is already starting (pid $(pgrep -x dockerd | head -1)); waiting for it"
else
    # A stale pid file from an unclean stop keeps dockerd from starting.
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        rm -f /var/run/docker.pid
    fi
    log "starting dockerd (log: $LOG)"
    mkdir -p "$(dirname "$LOG")"
    setsid nohup dockerd --bridge=none --iptables=false >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq "$WAIT"); do
    if docker_ok; then
        log "engine ready ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
        exit 0
    fi
    sleep 1
done

log "ERROR: Docker engine not ready after ${WAIT}s; last lines of $LOG:"
tail -n 30 "$LOG" >&2 || true
exit 1
