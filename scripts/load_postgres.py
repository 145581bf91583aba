"""Load the bundled bikeshare data into a PostgreSQL table, to try the `postgres` source.

    .venv-steps/bin/python scripts/load_postgres.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
                                                    [--table bikeshare_hourly] [--csv PATH]

The table gets the CSV's columns (bigint, double precision or text, as pandas reads them) plus
``event_time timestamptz``: 2011-01-01 UTC plus (``day`` - 1) days plus ``hr`` hours, the rule of the
spec's ``timestamp: {kind: day_of_year}`` section, and an index on it. Idempotent: the table is
dropped and recreated in one transaction, so a re-run leaves the same rows and readers never see a
half-loaded table. Rows go in with COPY. Needs pandas and psycopg2 (the step environment), not mlcycle.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import pandas as pd
import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "include" / "data" / "bikeshare" / "bikeshare_hourly_2011.csv"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def pg_type(dtype) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "bigint"
    if pd.api.types.is_float_dtype(dtype):
        return "double precision"
    return "text"


def event_time(df: pd.DataFrame, year: int, day_column: str, hour_column: str | None) -> pd.Series:
    """The spec's day_of_year rule: ``year``-01-01 plus (day - 1) days plus the hour, in UTC."""
    offset = pd.to_timedelta(pd.to_numeric(df[day_column]) - 1, unit="D")
    if hour_column:
        offset = offset + pd.to_timedelta(pd.to_numeric(df[hour_column]), unit="h")
    return pd.Timestamp(year=year, month=1, day=1, tz="UTC") + offset


def table_ident(name: str) -> sql.Composable:
    return sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))


def load(dsn: str, table: str, csv: Path, year: int, day_column: str, hour_column: str | None,
         timestamp_column: str) -> dict:
    df = pd.read_csv(csv)
    if timestamp_column in df.columns:
        raise SystemExit(f"error: {csv} already has a column {timestamp_column!r}; choose --timestamp-column")
    df[timestamp_column] = event_time(df, year, day_column, hour_column)
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(pg_type(df[c].dtype) if c != timestamp_column
                                                           else "timestamptz NOT NULL"))
        for c in df.columns)
    body = io.StringIO()
    out = df.copy()
    out[timestamp_column] = out[timestamp_column].dt.strftime("%Y-%m-%d %H:%M:%S+00")
    out.to_csv(body, index=False, header=False)
    body.seek(0)
    ident = table_ident(table)
    index = sql.Identifier(f"{table.split('.')[-1]}_{timestamp_column}_idx")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:  # one transaction: commit on success
        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
        cur.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, columns))
        cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
            ident, sql.SQL(", ").join(sql.Identifier(c) for c in df.columns)).as_string(cur), body)
        cur.execute(sql.SQL("CREATE INDEX {} ON {} ({})").format(index, ident, sql.Identifier(timestamp_column)))
        cur.execute(sql.SQL("ANALYZE {}").format(ident))
        cur.execute(sql.SQL("SELECT count(*), min({ts}), max({ts}) FROM {t}").format(
            ts=sql.Identifier(timestamp_column), t=ident))
        rows, first, last = cur.fetchone()
    conn.close()
    return {"table": table, "rows": rows, "first": first.isoformat(), "last": last.isoformat(),
            "columns": list(df.columns)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default=DEFAULT_DSN, help=f"libpq connection URI (default {DEFAULT_DSN})")
    p.add_argument("--table", default="bikeshare_hourly", help="table to (re)create, optionally schema.table")
    p.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="CSV to load (default: the bundled data)")
    p.add_argument("--year", type=int, default=2011, help="year of the day-of-year column")
    p.add_argument("--day-column", default="day")
    p.add_argument("--hour-column", default="hr")
    p.add_argument("--timestamp-column", default="event_time")
    args = p.parse_args(argv)
    started = time.perf_counter()
    try:
        result = load(args.dsn, args.table, args.csv, args.year, args.day_column, args.hour_column,
                      args.timestamp_column)
    except psycopg2.Error as exc:
        print(f"error: cannot load {args.csv} into {args.table} at {args.dsn}: {exc}".strip(), file=sys.stderr)
        return 1
    result["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
