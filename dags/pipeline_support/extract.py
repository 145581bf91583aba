"""The Airflow side of a PostgreSQL source: stream the training window's rows into landing files.

The step package never imports Airflow, so it cannot use an Airflow connection. The ``extract`` task
does that part: for a spec with ``source.kind: postgres`` it opens the spec's connection with
``PostgresHook`` and streams each day of the training window with ``COPY (SELECT ...) TO STDOUT``
into a landing file::

    $MLCYCLE_STORE/<pipeline>/landing/date=YYYY-MM-DD/data.csv   (MLCYCLE_STORE: $MLCYCLE_HOME/store)

The ``ingest`` step then reads those files (``mlcycle.sources.postgres``) exactly as it reads a file
source. Rows are never held in memory here: psycopg copies them to disk block by block. Each file
is written under a temporary name and renamed, so a killed task leaves no half-written day.

For ``file`` and ``http`` sources the task does nothing (the step reads them itself) and says so.
The spec is read with PyYAML (``pipeline_support.specs``): no pandas, no step package here.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from airflow.sdk import task

from pipeline_support.specs import (
    PROJECT_ROOT,
    SpecProblem,
    read_spec,
    resolve_spec,
    spec_schema,
    training_window,
)

log = logging.getLogger(__name__)

LANDING_FILE = "data.csv"


class ExtractError(Exception):
    """The spec or the source is not usable for extraction; the message says what to fix."""


def store_root() -> Path:
    """The data store, as the steps see it (``mlcycle.settings``): MLCYCLE_STORE or $MLCYCLE_HOME/store."""
    home = Path(os.environ.get("MLCYCLE_HOME", PROJECT_ROOT / ".local"))
    root = Path(os.environ.get("MLCYCLE_STORE", home / "store"))
    return root if root.is_absolute() else PROJECT_ROOT / root


def landing_path(root: Path, pipeline: str, day: dt.date) -> Path:
    return root / pipeline / "landing" / f"date={day.isoformat()}" / LANDING_FILE


def _as_date(value: Any, where: str) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError as exc:
        raise ExtractError(f"{where}: an ISO date like 2011-01-01 (got {value!r})") from exc


def quote_ident(name: str) -> str:
    """Quote a (possibly schema-qualified) identifier: ``public.t`` -> ``"public"."t"``."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in str(name).split("."))


def copy_day_sql(table: str, timestamp_column: str, day: dt.date) -> str:
    """One day's rows, in time order (ties broken by the whole row, so the bytes are reproducible).

    The bounds are generated from dates, never from user input, so they are safe to inline; the
    untyped literals compare correctly with ``timestamptz`` and with UTC-naive ``timestamp`` columns.
    """
    ts = quote_ident(timestamp_column)
    lo, hi = day.isoformat(), (day + dt.timedelta(days=1)).isoformat()
    return (f"COPY (SELECT * FROM {quote_ident(table)} AS t "
            f"WHERE t.{ts} >= '{lo} 00:00:00+00' AND t.{ts} < '{hi} 00:00:00+00' "
            f"ORDER BY t.{ts}, t) TO STDOUT WITH (FORMAT csv, HEADER true)")


def extract_to_landing(pipeline: str, start: str | dt.date, end: str | dt.date,
                       window_days: int | str | None = None) -> dict[str, Any]:
    """Land one CSV per day of the training window of the interval [start, end); a no-op for non-postgres sources."""
    try:
        spec_path = resolve_spec(pipeline)
        spec = read_spec(spec_path)
    except SpecProblem as exc:
        raise ExtractError(str(exc)) from exc
    source = spec.get("source") or {}
    name = str(spec.get("name") or spec_path.stem)
    kind = source.get("kind")
    if kind != "postgres":
        log.info("pipeline %s reads a %s source: the ingest step reads it directly, nothing to extract",
                 name, kind)
        return {"pipeline": name, "source": kind, "days": 0, "bytes": 0}
    missing = [k for k in ("conn_id", "table", "timestamp_column") if not source.get(k)]
    if missing:
        raise ExtractError(f"pipeline spec {spec_path}: source.{', source.'.join(missing)} required "
                           f"for a postgres source")

    start_day, end_day = _as_date(start, "start"), _as_date(end, "end")
    try:
        first, stop = training_window(spec.get("window") or {}, end_day, int(window_days) if window_days else None,
                                      spec_schema.history_lookback_days(spec))
    except SpecProblem as exc:
        raise ExtractError(f"pipeline spec {spec_path}: {exc}") from exc
    days = [first + dt.timedelta(days=i) for i in range(max((stop - first).days, 0))]
    if not days:
        log.info("the window of [%s, %s) holds no data days of %s: nothing to extract", start_day, end_day, name)
        return {"pipeline": name, "source": kind, "days": 0, "bytes": 0}

    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=source["conn_id"])
    root = store_root()
    log.info("extracting %s from table %s (connection %s), %s to %s, into %s", name, source["table"],
             source["conn_id"], days[0], days[-1], root / name / "landing")
    total = 0
    for day in days:
        target = landing_path(root, name, day)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{LANDING_FILE}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            hook.copy_expert(copy_day_sql(source["table"], source["timestamp_column"], day), tmp)
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        total += target.stat().st_size
    log.info("landed %d day(s) of %s, %d bytes", len(days), name, total)
    return {"pipeline": name, "source": kind, "days": len(days), "bytes": total,
            "window_start": days[0].isoformat(), "window_end": stop.isoformat()}


@task(task_id="extract")
def extract_task(plan: dict[str, Any]) -> dict[str, Any]:
    """Land the training window of a PostgreSQL source for ``ingest``; a no-op for other sources.

    ``plan`` is the ``interval`` task's result: spec, data interval and window of this run.
    """
    return extract_to_landing(str(plan["spec"]), plan["start"], plan["end"], plan.get("window_days"))
