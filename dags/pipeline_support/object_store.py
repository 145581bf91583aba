"""Credentials for a data store in object storage, handed to a step when it starts.

When ``MLCYCLE_STORE`` (or ``MLCYCLE_ARTIFACT_ROOT``) is ``s3://...``, a step needs an endpoint and
keys. They come from the Airflow connection ``MLCYCLE_S3_CONN_ID`` (default ``mlcycle_s3``, type
``aws``: login = access key id, password = secret access key, extra ``endpoint_url`` and
``region_name``), looked up when the task runs, never while DAG files are parsed; without such a
connection, from the worker's own ``AWS_*`` environment (an instance role, a mounted secret). A spec
never holds them. The step receives them as the standard variables every AWS client reads, plus
``MLFLOW_S3_ENDPOINT_URL`` for MLflow's artifact client.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: What a step reads to reach S3 (and compatibles): passed through from the worker when present.
S3_ENV = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "MLFLOW_S3_ENDPOINT_URL",
)
DEFAULT_CONN_ID = "mlcycle_s3"


def uses_object_storage(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(env.get(k, "").startswith("s3://") for k in ("MLCYCLE_STORE", "MLCYCLE_ARTIFACT_ROOT"))


def object_store_env() -> dict[str, str]:
    """The S3 variables a step gets: from the connection when it exists, else the worker's own."""
    if not uses_object_storage():
        return {}
    env = {k: os.environ[k] for k in S3_ENV if os.environ.get(k)}
    conn_id = os.environ.get("MLCYCLE_S3_CONN_ID", DEFAULT_CONN_ID)
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:  # noqa: BLE001 - not found (any Airflow version's exception): use the environment
        log.info(
            "no Airflow connection %r (%s): the step reaches object storage with the worker's AWS_* "
            "environment",
            conn_id,
            type(exc).__name__,
        )
        return env
    extra = conn.extra_dejson or {}
    endpoint = extra.get("endpoint_url") or (
        conn.host and f"{conn.schema or 'http'}://{conn.host}" + (f":{conn.port}" if conn.port else "")
    )
    from_conn = {
        "AWS_ACCESS_KEY_ID": conn.login,
        "AWS_SECRET_ACCESS_KEY": conn.password,
        "AWS_SESSION_TOKEN": extra.get("aws_session_token"),
        "AWS_REGION": extra.get("region_name"),
        "AWS_ENDPOINT_URL_S3": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    env.update({k: v for k, v in from_conn.items() if v})
    log.info(
        "object storage: credentials from the Airflow connection %r%s",
        conn_id,
        f", endpoint {endpoint}" if endpoint else "",
    )
    return env
