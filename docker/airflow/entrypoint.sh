#!/bin/sh
# Entry point of the Airflow image: `<airflow arguments>` runs `airflow <arguments>`; a command that
# starts with airflow, bash or python runs as given; `init` prepares the stack once (volumes,
# database, settings) and exits.
#
# With the host network every container shares the host's hostname, so each one takes a name of its
# own, <hostname>-<container id>: Celery needs one per worker, and Airflow records it as the task's
# hostname (AIRFLOW__CORE__HOSTNAME_CALLABLE=pipeline_support.worker.hostname reads MLCYCLE_HOSTNAME).
set -eu

MLCYCLE_HOSTNAME=$(python -m pipeline_support.worker)
export MLCYCLE_HOSTNAME

# SimpleAuthManager reads its users' passwords from a file: write the admin's from the environment
# (.env), so that the password is the one `make stack` prints and nothing secret is in the image.
if [ -n "${AIRFLOW_ADMIN_PASSWORD:-}" ]; then
    pwfile=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json}
    umask 077
    # json.dumps, not printf: a quote, a backslash or a control character in the password is encoded.
    AIRFLOW_ADMIN_USER=${AIRFLOW_ADMIN_USER:-admin} python -c \
        'import json, os, sys; json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, sys.stdout)' \
        >"$pwfile"
fi

if [ "${1:-}" = "init" ]; then
    if [ "$(id -u)" = "0" ]; then
        # The shared volumes belong to the Airflow user (uid 50000, group 0), as in the official image.
        for dir in ${MLCYCLE_INIT_OWN:-$AIRFLOW_HOME/logs}; do
            mkdir -p "$dir"
            chown -R 50000:0 "$dir"
            chmod -R g+rwX "$dir"
        done
        exec setpriv --reuid=50000 --regid=0 --clear-groups env HOME=/home/mlcycle "$0" "$@"
    fi
    echo "init: migrating the metadata database"
    airflow db migrate
    echo "init: loading airflow_settings.yaml (connections, pools, variables)"
    python /opt/mlcycle/scripts/load_airflow_settings.py --file /opt/mlcycle/airflow_settings.yaml
    echo "init: the object store's bucket (MLCYCLE_STORE, remote logs)"
    python /opt/mlcycle/scripts/ensure_bucket.py
    echo "init: done"
    exit 0
fi

case "${1:-}" in
    # A whole command line, as the apache/airflow image's entry point takes it: the official Helm
    # chart's containers (`bash -c "exec airflow scheduler"`, `airflow db check-migrations`) and the
    # KubernetesExecutor's worker pods (`python -m airflow.sdk.execution_time.execute_workload ...`).
    airflow|bash|python|python3) exec "$@" ;;
esac

case "${1:-} ${2:-}" in
    "celery worker")
        # Each worker is its own Celery node, named after its container.
        exec airflow "$@" --celery-hostname "celery@$MLCYCLE_HOSTNAME" ;;
    "worker-health ")
        # The worker's health check: its Celery node answers a ping through the broker.
        exec celery --app airflow.providers.celery.executors.celery_executor.app inspect ping \
            --destination "celery@$MLCYCLE_HOSTNAME" --timeout 10 ;;
esac
exec airflow "$@"
