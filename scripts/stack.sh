#!/usr/bin/env bash
# The compose stack (docker/compose.yaml): bring it up, wait until healthy, take it down.
#
#   scripts/stack.sh up [WORKERS]   build the images, start, wait until every service is healthy,
#                                   print the URLs and the admin password (default: 1 worker)
#   scripts/stack.sh down           remove the stack's containers (deploy and step containers too),
#                                   its network and its volumes
#   scripts/stack.sh compose ARGS   run `docker compose ARGS` (or docker-compose) on the stack
#   scripts/stack.sh env            print the settings of docker/.env (secrets masked)
#
# Environment:
#   MLCYCLE_IMAGES      local (default: images built here, no registry needed) or official (postgres,
#                       redis, prom/prometheus, prom/statsd-exporter, nginx from Docker Hub)
#   SKIP_BUILD=1        do not run scripts/build-images.sh first
#   STACK_WAIT_SECONDS  give up when no service changed state for this long (default 180)
#   STACK_ENV_FILE      the settings file (default docker/.env, made from docker/.env.example)
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE_FILE=docker/compose.yaml
ENV_FILE=${STACK_ENV_FILE:-docker/.env}
WAIT=${STACK_WAIT_SECONDS:-180}

log() { echo "stack: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- docker/.env: made once from the example, empty secrets filled with random values ----------------
ensure_env() {
    if [ ! -f "$ENV_FILE" ]; then
        cp docker/.env.example "$ENV_FILE"
        chmod 600 "$ENV_FILE"
        log "created $ENV_FILE from docker/.env.example"
    fi
    local key value
    for key in POSTGRES_PASSWORD AIRFLOW_ADMIN_PASSWORD AIRFLOW_API_SECRET_KEY AIRFLOW_JWT_SECRET \
               GRAFANA_ADMIN_PASSWORD AIRFLOW_FERNET_KEY DOCKER_GID S3_ACCESS_KEY S3_SECRET_KEY; do
        value=$(sed -n "s/^$key=//p" "$ENV_FILE" | tail -n 1)
        [ -n "$value" ] && continue
        case $key in
            AIRFLOW_FERNET_KEY) value=$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())') ;;
            DOCKER_GID) value=$(stat -c %g /var/run/docker.sock) ;;
            S3_ACCESS_KEY) value=mlcycle-$(python3 -c 'import secrets; print(secrets.token_hex(8))') ;;
            *) value=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))') ;;
        esac
        if grep -q "^$key=" "$ENV_FILE"; then
            sed -i "s|^$key=.*|$key=$value|" "$ENV_FILE"
        else
            echo "$key=$value" >>"$ENV_FILE"
        fi
        [ "$key" = DOCKER_GID ] || log "generated $key in $ENV_FILE"
    done
}

setting() { sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1; }

# Official images, pinned; used when MLCYCLE_IMAGES=official (a value set in the environment wins).
use_official_images() {
    export POSTGRES_IMAGE=${POSTGRES_IMAGE:-postgres:15.14}
    export REDIS_IMAGE=${REDIS_IMAGE:-redis:7.4.6}
    export PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-prom/prometheus:v2.55.1}
    export STATSD_EXPORTER_IMAGE=${STATSD_EXPORTER_IMAGE:-prom/statsd-exporter:v0.28.0}
    export PROXY_IMAGE=${PROXY_IMAGE:-nginx:1.28.0}
    export SEAWEEDFS_IMAGE=${SEAWEEDFS_IMAGE:-chrislusf/seaweedfs:4.48}
}

# MLCYCLE_IMAGES from the environment, else from docker/.env; `official` sets the official images.
select_images() {
    MLCYCLE_IMAGES=${MLCYCLE_IMAGES:-$(setting MLCYCLE_IMAGES)}
    export MLCYCLE_IMAGES
    if [ "$MLCYCLE_IMAGES" = official ]; then use_official_images; fi
    # No endpoint given: the stack's own SeaweedFS.
    S3_ENDPOINT_URL=${S3_ENDPOINT_URL:-$(setting S3_ENDPOINT_URL)}
    local s3_port; s3_port=$(setting SEAWEEDFS_S3_PORT)
    export S3_ENDPOINT_URL=${S3_ENDPOINT_URL:-http://127.0.0.1:${s3_port:-18333}}
}

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose --project-name "$(project)" --env-file "$ENV_FILE" -f "$COMPOSE_FILE" "$@"
    elif command -v docker-compose >/dev/null 2>&1; then
        docker-compose --project-name "$(project)" --env-file "$ENV_FILE" -f "$COMPOSE_FILE" "$@"
    else
        die "neither \`docker compose\` (v2) nor \`docker-compose\` is installed (Debian: apt-get install docker-compose)"
    fi
}

project() { local p; p=$(setting COMPOSE_PROJECT_NAME); echo "${p:-mlcycle}"; }

# name status health, one line per container of the project (health is "-" without a check)
states() {
    docker ps -a --filter "label=com.docker.compose.project=$(project)" --format '{{.ID}}' \
        | xargs -r docker inspect --format \
            '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{.State.ExitCode}}'
}

wait_healthy() {
    local last="" since=$SECONDS now line name status health code pending failed
    while true; do
        now=$(states | sort)
        pending=0 failed=""
        while read -r name status health code; do
            [ -n "$name" ] || continue
            case "$name" in
                */*-init-*|*airflow-init*)  # the init job: must have exited 0
                    if [ "$status" = exited ] && [ "$code" != 0 ]; then failed="$failed ${name#/}(exit $code)"
                    elif [ "$status" != exited ]; then pending=$((pending + 1)); fi ;;
                *)
                    if [ "$status" = exited ] || [ "$status" = dead ] || [ "$health" = unhealthy ]; then
                        failed="$failed ${name#/}($status/$health)"
                    elif [ "$health" != healthy ] && [ "$health" != - ]; then pending=$((pending + 1)); fi ;;
            esac
        done <<<"$now"
        if [ -n "$failed" ]; then
            log "failed:$failed"
            for name in $failed; do
                log "last lines of ${name%%(*}:"; docker logs --tail 30 "${name%%(*}" 2>&1 | sed 's/^/    /' >&2
            done
            return 1
        fi
        [ -n "$now" ] && [ "$pending" -eq 0 ] && return 0
        if [ "$now" != "$last" ]; then
            last=$now since=$SECONDS
            log "waiting for $pending service(s): $(awk '$3 != "healthy" && !($2 == "exited" && $4 == 0) {sub("^/", "", $1); printf "%s(%s) ", $1, ($3 == "-" ? $2 : $3)}' <<<"$now")"
        elif [ $((SECONDS - since)) -ge "$WAIT" ]; then
            log "no service changed state for ${WAIT} s; still waiting for:"
            awk '$3 != "healthy" {print "    " $0}' <<<"$now" >&2
            return 1
        fi
        sleep 2
    done
}

print_urls() {
    local user pw
    user=$(setting AIRFLOW_ADMIN_USER) pw=$(setting AIRFLOW_ADMIN_PASSWORD)
    cat <<EOF

==> the stack $(project) is up ($(states | grep -c worker) worker(s))
    Airflow UI and REST API  http://127.0.0.1:$(setting AIRFLOW_PORT)   user ${user:-admin}, password $pw
    MLflow                   http://127.0.0.1:$(setting MLFLOW_PORT)
    object store (S3)        $S3_ENDPOINT_URL   bucket $(setting S3_BUCKET), keys S3_ACCESS_KEY/S3_SECRET_KEY in $ENV_FILE
    Prometheus               http://127.0.0.1:$(setting PROMETHEUS_PORT)
    StatsD exporter          http://127.0.0.1:$(setting STATSD_EXPORTER_PORT)/metrics
    production (after deploy_bikeshare)  http://127.0.0.1:8700
    settings and secrets: $ENV_FILE; take it all down with: make stack-down
EOF
}

cmd=${1:-up}
case $cmd in
    up)
        workers=${2:-1}
        docker info >/dev/null 2>&1 || bash scripts/docker-engine.sh
        ensure_env
        select_images
        if [ -z "${SKIP_BUILD:-}" ]; then
            STACK_IMAGES=1 bash scripts/build-images.sh
        fi
        start=$SECONDS
        log "starting $(project) with $workers worker(s)"
        compose up -d --scale worker="$workers" >&2
        wait_healthy || die "the stack is not healthy: see above, and \`scripts/stack.sh compose logs <service>\`"
        log "healthy in $((SECONDS - start)) s"
        print_urls
        ;;
    down)
        [ -f "$ENV_FILE" ] || die "no $ENV_FILE: nothing was started from this folder"
        ensure_env  # compose interpolates the whole file, secrets included, even to take it down
        select_images
        # Containers the workers started (steps, serving slots, proxy) are not compose's: remove them first.
        ids=$(docker ps -aq --filter "label=io.mlcycle.namespace=$(project)")
        [ -z "$ids" ] || { log "removing $(wc -w <<<"$ids") step and deploy container(s)"; docker rm -f $ids >/dev/null; }
        compose down --volumes --remove-orphans >&2
        log "removed the containers, network and volumes of $(project)"
        ;;
    compose) shift; ensure_env; select_images; compose "$@" ;;
    env) ensure_env; sed -E 's/^((.*PASSWORD|.*SECRET.*|.*KEY)=).+/\1********/' "$ENV_FILE" ;;
    *) die "unknown command '$cmd' (up, down, compose, env)" ;;
esac
