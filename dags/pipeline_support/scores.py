"""The Airflow side of batch scoring: the PostgreSQL load and the scores Asset of ``scoring_<name>``.

The ``score`` step (``mlcycle.steps.score``) writes each day's predictions to the store, as Parquet
and as a CSV load file. The step package never imports Airflow, so the load into PostgreSQL happens
here, through the spec's Airflow connection (``scoring.postgres.conn_id``) and ``PostgresHook``: in
one transaction, the table is created when missing, the interval's rows are deleted and the load
files are copied in (``COPY ... FROM STDIN``). A re-run of the interval therefore replaces its rows,
and a failed load leaves the table as it was.

``announce`` emits ``mlcycle://<name>/scores`` once per scored interval, with the lineage in its
``extra``, so a downstream DAG scheduled on it knows which days, model version and data it gets.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from airflow.sdk import task

from pipeline_support.assets import scores_asset
from pipeline_support.extract import quote_ident, store_root

log = logging.getLogger(__name__)


def load_files(root: Path, pipeline: str, start: dt.date, end: dt.date) -> list[Path]:
    """The CSV load files of ``[start, end)``, as this (Airflow) side sees the store."""
    days = [start + dt.timedelta(days=i) for i in range((end - start).days)]
    return [root / pipeline / "scores" / f"date={day.isoformat()}" / "load.csv" for day in days]


def load_scores(conn_id: str, table: str, scored: dict[str, Any]) -> dict[str, Any]:
    """Replace the interval's rows of ``table`` with the scored ones, in one transaction."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    start, end = dt.date.fromisoformat(scored["start"]), dt.date.fromisoformat(scored["end"])
    files = [f for f in load_files(store_root(), scored["pipeline"], start, end) if f.is_file()]
    columns = [(str(name), str(kind)) for name, kind in scored["columns"]]
    target = quote_ident(table)
    names = ", ".join(quote_ident(name) for name, _ in columns)
    copy_sql = f"COPY {target} ({names}) FROM STDIN WITH (FORMAT csv, HEADER true)"
    conn = PostgresHook(postgres_conn_id=conn_id).get_conn()
    try:
        cur = conn.cursor()
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {target} ("
            + ", ".join(f"{quote_ident(name)} {kind}" for name, kind in columns)
            + ")"
        )
        cur.execute(f"DELETE FROM {target} WHERE date >= %s AND date < %s", (start, end))
        deleted = cur.rowcount
        for path in files:
            with path.open("rb") as fh:
                if hasattr(cur, "copy_expert"):  # psycopg2
                    cur.copy_expert(copy_sql, fh)
                else:  # psycopg 3
                    with cur.copy(copy_sql) as copy:
                        while block := fh.read(1 << 20):
                            copy.write(block)
        cur.execute(f"SELECT count(*) FROM {target} WHERE date >= %s AND date < %s", (start, end))
        loaded = int(cur.fetchone()[0])
        conn.commit()
    except Exception:
        conn.rollback()
        raise
    finally:
        conn.close()
    log.info(
        "table %s (connection %s): replaced %d row(s) of [%s, %s) with %d",
        table,
        conn_id,
        deleted,
        start,
        end,
        loaded,
    )
    if loaded != scored["rows"]:
        raise RuntimeError(
            f"table {table} holds {loaded} rows of [{start}, {end}) after the load, but "
            f"{scored['rows']} were scored: check the load files under {store_root()}"
        )
    return {"table": table, "conn_id": conn_id, "deleted": deleted, "loaded": loaded}


def postgres_target(spec_arg: str) -> tuple[str, str] | None:
    """``scoring.postgres`` of the run's spec (its YAML only): (conn_id, table), or None."""
    from pipeline_support.specs import read_spec, resolve_spec

    section = (read_spec(resolve_spec(spec_arg)).get("scoring") or {}).get("postgres") or {}
    if not section.get("conn_id") or not section.get("table"):
        return None
    return str(section["conn_id"]), str(section["table"])


def load_postgres_task(plan: Any, scored: Any) -> Any:
    @task(task_id="load_postgres")
    def load_postgres(plan: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        """The interval's predictions into the spec's PostgreSQL table (a re-run replaces them)."""
        from airflow.sdk.exceptions import AirflowSkipException

        target = postgres_target(str(plan["spec"]))
        if target is None:
            raise AirflowSkipException(
                "the spec names no scoring.postgres table: the store's partitions only"
            )
        return load_scores(target[0], target[1], result)

    return load_postgres(plan, scored)


def announce_scores_task(name: str, scored: Any) -> Any:
    """One ``mlcycle://<name>/scores`` event per scored interval, its lineage in ``extra``."""
    asset = scores_asset(name)

    @task(task_id="announce", outlets=[asset], trigger_rule="none_failed")  # also when no table is loaded
    def announce(result: dict[str, Any] | None, *, outlet_events: Any = None) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        if not result or "partitions" not in result:
            raise AirflowSkipException("nothing was scored: no scores event")
        extra = {
            key: result.get(key)
            for key in (
                "pipeline",
                "start",
                "end",
                "model_name",
                "version",
                "fingerprint",
                "code_version",
                "rows",
                "run_id",
                "path",
            )
        }
        extra["days"] = [p["date"] for p in result.get("partitions", [])]
        outlet_events[asset].extra = extra
        return extra

    return announce(scored)
