"""``mlcycle draft-spec``: a complete, commented pipeline spec (and its suite) drafted from the data.

    mlcycle draft-spec flights.csv --target late --label "late: arr_delay > 15" \\
        --timestamp time_hour --timezone America/New_York --out specs/
    mlcycle draft-spec postgresql://me@db.example:5432/rides --table trips --conn-id rides_db \\
        --target late --label "late: delay > 15"

A PostgreSQL table is read as the pipeline will read it (``COPY ... TO STDOUT WITH CSV HEADER``, the
DAG's ``extract`` task): the spec's source is ``kind: postgres`` with ``--conn-id`` (the Airflow
connection the DAG will use; default the pipeline's name) and the table's ``timestamptz`` column
that selects each day (``--timestamp-column``, default the only one).

The data is profiled once: each column's type, range (with a margin), allowed categories and null
share; the timestamp's kind and format; whether there is one row per timestamp or many (events: no
key); the data's first and last day, and a window, hold-out and schedule that fit them. Columns that
would leak the target (those a derived label reads, those that move with a column the label reads,
and those almost equal to the target) are flagged and left out of the features, identifiers and free
text too, each with a comment saying why.
The draft is meant to train as it is; the person onboarding the data reviews it and edits what they
know better (a threshold that means something to the business, a feature that is not known in time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import yaml

from mlcycle.derive import CALENDAR_PARTS, Expression, calendar_parts
from mlcycle.errors import SpecError
from mlcycle.spec_schema import TABLE

#: Categoricals up to this many distinct values; above it a text column is left out (an identifier).
MAX_CATEGORIES = 255
#: A numeric column with this many distinct values or fewer is a class label when it is the target.
MAX_CLASSES = 16
#: Share of parseable values for a text column to be taken as the timestamp.
TIMESTAMP_SHARE = 0.99
#: Formats tried for a text timestamp, first match wins (else pandas infers it at ingest).
FORMATS = (
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%Y-%m-%d",
    "%Y/%m/%d",
    "%d/%m/%Y %H:%M",
    "%m/%d/%Y %H:%M",
)
#: A numeric feature with this many distinct values or fewer may keep one value over a hold-out.
FEW_VALUES = 12
#: The natural range of a source column that is a calendar part of the timestamp.
CALENDAR_RANGES = {
    "hour": (0, 23),
    "day_of_week": (0, 6),
    "day": (1, 31),
    "month": (1, 12),
    "day_of_year": (1, 366),
    "is_weekend": (0, 1),
}
#: |correlation| with the target above which a numeric column is flagged as leaking it.
LEAK_CORRELATION = 0.98
#: |correlation| with a column a derived label reads above which a numeric column is flagged as
#: measured with the outcome (a flight's departure delay, for a label read from its arrival delay).
LABEL_SOURCE_CORRELATION = 0.9


@dataclass
class Draft:
    """The drafted spec (as YAML text with comments), its mapping, and what the profile found."""

    name: str
    spec: dict[str, Any]
    comments: dict[str, str] = field(default_factory=dict)  # column name -> why it is what it is
    notes: list[str] = field(default_factory=list)  # spec-level findings, printed at the top

    def to_yaml(self) -> str:
        head = [
            f"# Pipeline spec drafted by `mlcycle draft-spec` from {source_label(self.spec['source'])}.",
            "# Review it before relying on it: every range, category list and threshold below was read",
            "# from the data (with a margin), not from what the data is supposed to be.",
            "#",
        ]
        head += [f"# {note}" for note in self.notes] + [""]
        body: list[str] = []
        for key, value in self.spec.items():
            if key == "columns":
                body.append("columns:")
                for column, declaration in value.items():
                    line = f"  {column}: {_flow(declaration)}"
                    if column in self.comments:
                        line += f"  # {self.comments[column]}"
                    body.append(line)
            else:
                comment = SECTION_COMMENTS.get(key)
                if comment:
                    body.append(f"# {comment}")
                body.append(
                    yaml.safe_dump({key: value}, sort_keys=False, width=100, allow_unicode=True).rstrip()
                )
        return "\n".join(head + body) + "\n"


SECTION_COMMENTS = {
    "timestamp": "How a row gets its time; naive timestamps are local time in `timezone`.",
    "key": "Events: many rows share a timestamp, nothing else identifies a row.",
    "derive": "Derived columns (the label, calendar parts of the row's local time).",
    "filter": "Rows kept: a label that cannot be computed (its inputs missing) trains nothing.",
    "validation": "Per daily partition: row counts read from the data's days, with a margin.",
    "window": "The data's first and last day; the training window and the rows it must hold.",
    "schedule": "Daily runs over the data's range (default: from data_start + days to data_end).",
    "model": "A bounded search; gradient boosting takes missing values and wide categoricals natively.",
    "evaluation": "The gate: `threshold` is a floor (a ceiling for error metrics) set from the data; "
    "set one that means something to you.",
}


def source_label(source: dict[str, Any]) -> str:
    """How a draft names where its rows came from: a path, a URL, or a table."""
    if source.get("kind") == "postgres":
        return f"PostgreSQL table {source['table']}"
    return str(source.get("path") or source.get("url"))


def _flow(value: dict[str, Any]) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()


def read_table(
    dsn: str, table: str | None, conn_id: str, timestamp_column: str | None
) -> tuple[pd.DataFrame, dict]:
    """The rows of a PostgreSQL table as the DAG's ``extract`` task writes them (CSV through COPY),
    without the column that selects each day, and the spec's ``source`` section for it."""
    import io

    import psycopg2
    from psycopg2 import sql

    if not table or not TABLE.match(table):
        raise SpecError(
            f"draft-spec: a PostgreSQL source needs --table <name> (optionally schema.name; got {table!r})"
        )
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.Error as exc:
        raise SpecError(
            f"draft-spec: cannot connect to {_without_password(dsn)}: {str(exc).strip()}"
        ) from None
    try:
        with conn, conn.cursor() as cur:
            schema, _, name = table.rpartition(".")
            cur.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
                "AND table_schema = COALESCE(NULLIF(%s, ''), current_schema()) ORDER BY ordinal_position",
                (name, schema),
            )
            types = dict(cur.fetchall())
            if not types:
                raise SpecError(f"draft-spec: no table {table!r} in {_without_password(dsn)}")
            zoned = [c for c, t in types.items() if t == "timestamp with time zone"]
            column = timestamp_column or (zoned[0] if len(zoned) == 1 else None)
            if column not in types or types[column] != "timestamp with time zone":
                raise SpecError(
                    f"draft-spec: the table needs a `timestamp with time zone` column to select each day's rows "
                    f"(source.timestamp_column); name it with --timestamp-column (candidates: "
                    f"{', '.join(zoned) or 'none'})"
                )
            ident = sql.Identifier(*table.split("."))
            buffer = io.StringIO()
            query = sql.SQL("COPY (SELECT * FROM {} ORDER BY {}) TO STDOUT WITH CSV HEADER").format(
                ident, sql.Identifier(column)
            )
            cur.copy_expert(query.as_string(conn), buffer)
    finally:
        conn.close()
    frame = pd.read_csv(io.StringIO(buffer.getvalue()))
    source = {"kind": "postgres", "conn_id": conn_id, "table": table, "timestamp_column": column}
    return frame, source


def _without_password(dsn: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


def read_data(source: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of a file or URL (CSV or Parquet), and the spec's ``source`` section for it."""
    fmt = "parquet" if re.search(r"\.parquet($|\?)", source) else "csv"
    if source.startswith(("http://", "https://")):
        frame = pd.read_parquet(source) if fmt == "parquet" else pd.read_csv(source)
        return frame, {"kind": "http", "url": source, "format": fmt}
    path = Path(source)
    if not path.is_file():
        raise SpecError(f"draft-spec: {source} is neither a file nor an http(s) URL")
    frame = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
    return frame, {"kind": "file", "path": str(path.resolve()), "format": fmt}


def _timestamp_format(values: pd.Series) -> str | None:
    sample = values.dropna().astype(str).head(2000)
    for fmt in FORMATS:
        if pd.to_datetime(sample, format=fmt, errors="coerce").notna().all():
            return fmt
    return None


def find_timestamp(frame: pd.DataFrame, given: str | None) -> tuple[str, str | None]:
    """The timestamp column (given, or the first that parses) and its format (None: native or inferred)."""
    candidates = [given] if given else list(frame.columns)
    if given and given not in frame.columns:
        raise SpecError(
            f"draft-spec: --timestamp {given!r} is not a column ({', '.join(map(str, frame.columns))})"
        )
    for column in candidates:
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            return column, None
        if values.dtype != object:
            continue
        fmt = _timestamp_format(values)
        parsed = (
            pd.to_datetime(values, format=fmt, errors="coerce")
            if fmt
            else pd.to_datetime(values, errors="coerce", format="mixed")
        )
        if parsed.notna().mean() >= TIMESTAMP_SHARE:
            return column, fmt
        if given:
            raise SpecError(
                f"draft-spec: --timestamp {given!r}: only {parsed.notna().mean():.0%} of its values "
                "parse as timestamps"
            )
    raise SpecError(
        "draft-spec: no column parses as a timestamp; name it with --timestamp (a text column "
        "like 2024-01-31 08:00 or a native timestamp)"
    )


def _margin(low: float, high: float, integer: bool) -> tuple[float, float]:
    spread = (high - low) or abs(high) or 1.0
    lo, hi = low - 0.1 * spread, high + 0.1 * spread
    if low >= 0:
        lo = max(lo, 0.0)
    if integer:
        return float(math.floor(lo)), float(math.ceil(hi))
    return float(_round(lo, down=True)), float(_round(hi, down=False))


def _round(value: float, down: bool) -> float:
    if value == 0:
        return 0.0
    digits = 2 - int(math.floor(math.log10(abs(value))))
    scale = 10.0**digits
    return (math.floor if down else math.ceil)(value * scale) / scale


def _null_share(share: float) -> float:
    return 0.0 if share == 0 else min(1.0, math.ceil((share * 1.5 + 0.01) * 100) / 100)


def _number(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _is_integral(values: pd.Series) -> bool:
    present = values.dropna()
    return pd.api.types.is_integer_dtype(values) or (
        pd.api.types.is_float_dtype(values) and bool(np.all(np.mod(present, 1) == 0))
    )


def draft_spec(
    frame: pd.DataFrame,
    source: dict[str, Any],
    *,
    target: str,
    name: str,
    label: str | None = None,
    timestamp: str | None = None,
    timezone: str | None = None,
    year: int | None = None,
) -> Draft:
    """Profile ``frame`` and draft its spec (see the module docstring)."""
    if timezone:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise SpecError(
                f"draft-spec: --timezone {timezone!r} is not an IANA time zone like America/New_York"
            ) from exc
    zone = timezone or "UTC"
    notes: list[str] = []
    comments: dict[str, str] = {}
    day_of_year: dict[str, Any] | None = None
    if year is not None:  # the row's time is a day of the year (and an hour) in known columns
        day_column, _, hour_column = (timestamp or "").partition(",")
        for column in filter(None, (day_column, hour_column)):
            if column not in frame.columns:
                raise SpecError(
                    f"draft-spec: --timestamp {timestamp!r} with --year: '<day column>[,<hour column>]' "
                    f"of the data; {column!r} is not a column"
                )
        if not day_column:
            raise SpecError("draft-spec: --year needs --timestamp '<day-of-year column>[,<hour column>]'")
        day_of_year = {
            "kind": "day_of_year",
            "year": year,
            "day_column": day_column,
            **({"hour_column": hour_column} if hour_column else {}),
        }
        ts_column, ts_format = day_column, None
        hours = pd.to_numeric(frame[hour_column], errors="coerce") if hour_column else 0
        parsed = (
            pd.Timestamp(year=year, month=1, day=1)
            + pd.to_timedelta(frame[day_column] - 1, unit="D")
            + pd.to_timedelta(hours, unit="h")
        )
        raw_ts = frame[day_column]
    else:
        ts_column, ts_format = find_timestamp(frame, timestamp)
        raw_ts = frame[ts_column]
        parsed = (
            raw_ts
            if pd.api.types.is_datetime64_any_dtype(raw_ts)
            else pd.to_datetime(
                raw_ts, format=ts_format, errors="coerce", **({} if ts_format else {"format": "mixed"})
            )
        )
    aware = getattr(parsed.dt, "tz", None) is not None
    event_time = (
        parsed.dt.tz_convert("UTC")
        if aware
        else parsed.dt.tz_localize(zone, ambiguous="NaT", nonexistent="shift_forward").dt.tz_convert("UTC")
    )
    local = event_time.dt.tz_convert(zone)
    days = local.dt.date
    first, last = days.min(), days.max()
    span = (last - first).days + 1

    derive: dict[str, str] = {}
    filters: list[str] = []
    leaks: dict[str, str] = {}
    label_sources: list[str] = []
    label_name = target
    if label:
        label_name, _, expression = (part.strip() for part in label.partition(":"))
        if not expression:
            raise SpecError(
                f"draft-spec: --label {label!r}: write it as '<name>: <expression>', e.g. "
                "'late: arr_delay > 15'"
            )
        if label_name != target:
            raise SpecError(
                f"draft-spec: --label defines {label_name!r} but --target is {target!r}: the label "
                "is the target, give both the same name"
            )
        parsed_label = Expression.parse(expression, "--label")
        missing = sorted(parsed_label.names - set(frame.columns) - set(CALENDAR_PARTS))
        if missing:
            raise SpecError(f"draft-spec: --label reads {', '.join(missing)}, which the data does not have")
        scope = {**calendar_parts(event_time, zone), **{c: frame[c] for c in frame.columns}}
        frame = frame.assign(
            **{label_name: pd.Series(np.asarray(parsed_label.evaluate(scope))).astype("int64")}
        )
        derive[label_name] = expression
        label_sources = sorted(parsed_label.names & set(frame.columns))
        for column in label_sources:
            leaks[column] = f"the label `{label_name}` is computed from it: it would leak the target"
            if frame[column].isna().any():
                filters.append(f"notnull({column})")
    elif target not in frame.columns:
        raise SpecError(
            f"draft-spec: --target {target!r} is not a column ({', '.join(map(str, frame.columns))}); "
            "or derive it with --label '<name>: <expression>'"
        )
    y = frame[target]
    if not label and y.isna().any():
        filters.append(f"notnull({target})")
    kept = y.notna() & event_time.notna()
    for column in re.findall(r"notnull\((\w+)\)", " ".join(filters)):
        kept &= frame[column].notna()  # the rows the drafted filter keeps are the ones profiled
    for source_column in label_sources:  # what moves with the label's source is measured with the outcome
        for column, corr in _correlations(frame.loc[kept], source_column, skip={target, ts_column, *leaks}):
            if abs(corr) >= LABEL_SOURCE_CORRELATION:
                leaks[column] = (
                    f"correlation {corr:.3f} with `{source_column}`, which the label `{label_name}` reads: "
                    "measured with the outcome, it would leak the target (keep it only if it is known "
                    "at prediction time)"
                )
    numeric_target = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    task = (
        "regression"
        if numeric_target and (label is None and y[kept].nunique() > MAX_CLASSES)
        else "classification"
    )

    if numeric_target:  # numeric columns almost equal to the target leak it
        for column, corr in _correlations(frame.loc[kept], target, skip={ts_column, *leaks}):
            if abs(corr) >= LEAK_CORRELATION:
                leaks[column] = f"correlation {corr:.3f} with the target: it would leak it"

        numeric = [
            c
            for c in frame.columns
            if c not in (target, ts_column)
            and c not in leaks
            and pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])
        ]
        for i, a in enumerate(numeric):  # parts that add up to the target (casual + registered = total)
            for b in numeric[i + 1 :]:
                if np.allclose(
                    frame.loc[kept, a] + frame.loc[kept, b], frame.loc[kept, target], equal_nan=False
                ):
                    leaks[a] = leaks[b] = f"`{a}` + `{b}` equals the target: each would leak it"

    columns: dict[str, dict[str, Any]] = {}
    if day_of_year is None:
        columns[ts_column] = {
            "type": "string" if not pd.api.types.is_datetime64_any_dtype(raw_ts) else "timestamp",
            "role": "ignore",
        }
        comments[ts_column] = "the timestamp: stored as event_time" + (
            f", format {ts_format}" if ts_format else ""
        )
    calendar = calendar_parts(event_time[kept], zone)
    features: list[str] = []
    rows = frame.loc[kept]
    for column in frame.columns:
        if column == ts_column and day_of_year is None:
            continue
        values = rows[column]
        declaration, why = _declare(column, values, column == target, task)
        if column == target:
            declaration["role"] = "target"
        elif column in leaks:
            declaration["role"], why = "ignore", leaks[column]
        elif declaration.get("role") != "ignore":
            features.append(column)
            if (
                column in CALENDAR_PARTS
                and values.notna().all()
                and (values.to_numpy() == calendar[column].to_numpy()).all()
            ):
                declaration["constant_guard"] = False
                if column in CALENDAR_RANGES:  # its whole natural range, not the sample's
                    declaration["min"], declaration["max"] = CALENDAR_RANGES[column]
                why = f"the {column} of the timestamp: constant over a short slice by construction"
        columns[column] = declaration
        if why:
            comments[column] = why
    sub_daily = bool((local.dt.hour != 0).any() or (local.dt.minute != 0).any())
    measured = list(features)
    parts = ("hour", "day_of_week") if sub_daily else ("day_of_week",)
    for part in parts + (() if measured else ("day_of_year",)):  # calendar only: the season too
        if part not in frame.columns:
            derive[part] = part
            columns[part] = {
                "type": "integer",
                "min": CALENDAR_RANGES[part][0],
                "max": CALENDAR_RANGES[part][1],
            }
            comments[part] = "a calendar part of the row's local time"
            features.append(part)
    if not features:
        raise SpecError(
            "draft-spec: no column is left as a feature (all are the target, leaks, identifiers or "
            "constant); name the timestamp with --timestamp if it was taken for a feature"
        )
    if derive and label_name in derive:  # the label last: columns are listed first, then derived in order
        derive = {k: v for k, v in derive.items() if k != label_name} | {label_name: derive[label_name]}

    per_day = pd.Series(1, index=rows.index).groupby(days[kept]).sum()
    unique_times = not event_time[kept].duplicated().any()
    window_days = int(max(8, min(28, span - 1)))
    holdout = int(max(1, min(7, window_days // 4)))
    min_rows = max(1, int(math.floor(per_day.quantile(0.02) * 0.5)))
    max_rows = int(math.ceil(per_day.max() * 2))
    train_rows = int(per_day.median() * (window_days - holdout))
    min_training = max(50, min(1000, train_rows // 4))
    if span <= window_days:
        notes.append(
            f"The data covers {span} day(s), no more than the window ({window_days} days): one run "
            "trains on all of it."
        )
    metric, threshold = _gate(task, y[kept])
    spec: dict[str, Any] = {
        "name": name,
        "description": f"Drafted from {Path(source_label(source)).name}: "
        f"{len(frame):,} rows from {first} to {last}; target `{target}` ({task}).",
        "task": task,
        "target": target,
        "source": source,
        "timestamp": {
            **(
                day_of_year
                or {"kind": "column", "column": ts_column, **({"format": ts_format} if ts_format else {})}
            ),
            **({"timezone": timezone} if timezone else {}),
        },
    }
    if not unique_times:
        spec["key"] = []
        notes.append(
            f"Events: {int(event_time[kept].duplicated().sum()):,} rows share a timestamp with another "
            "(key: [], no uniqueness check)."
        )
    if derive:
        spec["derive"] = derive
    if filters:
        spec["filter"] = sorted(set(filters))
    spec["partition"] = "daily"
    spec["columns"] = columns
    spec["validation"] = {
        "suite": f"{name}.suite.json",
        "min_rows_per_partition": min_rows,
        "max_rows_per_partition": max_rows,
    }
    spec["window"] = {
        "data_start": first.isoformat(),
        "data_end": last.isoformat(),
        "days": window_days,
        "min_training_rows": min_training,
    }
    spec["schedule"] = {"interval": "@daily", "catchup": False}
    spec["model"] = {
        "family": "hist_gradient_boosting",
        "registered_name": name,
        "search": {
            "n_iter": 4,
            "cv_folds": 3,
            "seed": 7,
            "budget_seconds": 300,
            "space": {
                "learning_rate": {"low": 0.03, "high": 0.3, "log": True},
                "max_leaf_nodes": {"values": [15, 31, 63]},
                "max_iter": {"values": [100, 200]},
                "l2_regularization": {"low": 0.0, "high": 1.0},
            },
        },
    }
    if not measured:  # monitoring leaves calendar parts out by default; here they are all there is
        spec["monitoring"] = {"columns": features}
        notes.append("Only calendar parts are features: monitoring watches them (monitoring.columns).")
    spec["evaluation"] = {
        "metric": metric,
        "holdout_days": holdout,
        "threshold": threshold,
        "tolerance": 0.05,
    }
    return Draft(name=name, spec=spec, comments=comments, notes=notes)


def _declare(column: str, values: pd.Series, is_target: bool, task: str) -> tuple[dict[str, Any], str]:
    """A column's declaration and, when it is left out or special, why."""
    present = values.dropna()
    share = float(values.isna().mean())
    nulls = {"max_null_share": _null_share(share)} if share else {}
    distinct = present.nunique()
    if pd.api.types.is_bool_dtype(values):
        return {"type": "categorical", "values": [False, True], **nulls}, ""
    if pd.api.types.is_datetime64_any_dtype(values):
        return {
            "type": "timestamp",
            "role": "ignore",
        }, "another timestamp: derive what the model needs from it"
    if pd.api.types.is_numeric_dtype(values):
        integral = _is_integral(values)
        if is_target and task == "classification":
            return {"type": "categorical", "values": sorted(_number(v) for v in present.unique())}, ""
        if distinct <= 1:
            only = _number(present.iloc[0]) if len(present) else None
            return (
                {
                    "type": "integer" if pd.api.types.is_integer_dtype(values) else "numeric",
                    "role": "ignore",
                    **nulls,
                },
                f"constant ({only}) in the data: nothing to learn from",
            )
        low, high = _margin(float(present.min()), float(present.max()), integral)
        declaration = {
            # integer only when the data reads as integers (a column with nulls in the file reads as floats)
            "type": "integer" if pd.api.types.is_integer_dtype(values) and not share else "numeric",
            "min": _number(low),
            "max": _number(high),
            **nulls,
        }
        if integral and distinct == len(present) and len(present) > 100 and not is_target:
            return {**declaration, "role": "ignore"}, "unique on every row: an identifier, not a feature"
        if distinct <= FEW_VALUES and not is_target:
            return {**declaration, "constant_guard": False}, (
                f"{distinct} values (a flag, a code, a season): may keep one value for a week"
            )
        return declaration, ""
    text = present.astype(str)
    if distinct <= MAX_CATEGORIES:
        if distinct <= 1:
            return {
                "type": "string",
                "role": "ignore",
                **nulls,
            }, "constant in the data: nothing to learn from"
        counts = text.value_counts()
        rare = int((counts < max(2, len(text) // 10_000)).sum())
        why = f"{distinct} categories" + (f", {rare} rare" if rare else "")
        return {"type": "categorical", "values": sorted(counts.index.tolist()), **nulls}, why
    return (
        {"type": "string", "role": "ignore", **nulls},
        f"{distinct:,} distinct values: an identifier or free text, not a categorical feature",
    )


def _is_number(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _correlations(rows: pd.DataFrame, column: str, skip: set[str]) -> list[tuple[str, float]]:
    """Pearson correlation of every other numeric column of ``rows`` with ``column`` (none when it is
    not numeric); a pair with fewer than 11 complete rows or a constant side is left out."""
    if not _is_number(rows[column]):
        return []
    found = []
    for other in rows.columns:
        if other == column or other in skip or not _is_number(rows[other]):
            continue
        both = rows[[other, column]].dropna()
        if len(both) > 10 and both[other].std() > 0 and both[column].std() > 0:
            found.append((other, float(np.corrcoef(both[other], both[column])[0, 1])))
    return found


def _gate(task: str, y: pd.Series) -> tuple[str, float]:
    """The gate's metric and a floor any useful model clears: the spread of the target (a model no
    better than its mean fails) for a regression, chance for a classification."""
    if task == "regression":
        return "rmse", float(_round(float(y.std()), down=False))
    if y.nunique() == 2:
        return "roc_auc", 0.55
    return "accuracy", float(round(float(y.value_counts(normalize=True).iloc[0]), 3))


def write_draft(draft: Draft, out: Path, frame_source: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<out>/<name>.yaml`` (the source path relative to it when it can) and its suite."""
    from mlcycle.expectations import write_suite
    from mlcycle.spec import load_spec

    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / f"{draft.name}.yaml"
    if frame_source.get("kind") == "file":
        target = Path(frame_source["path"])
        try:
            draft.spec["source"]["path"] = str(Path(_relative(target, out.resolve())))
        except ValueError:
            pass
    spec_path.write_text(draft.to_yaml())
    spec = load_spec(spec_path)  # the draft must load: every problem is the drafter's, not the user's
    return spec_path, write_suite(spec)


def _relative(target: Path, base: Path) -> str:
    import os

    return os.path.relpath(target, base)


def add_parser(sub: Any) -> None:
    """The ``draft-spec`` command on the CLI's subparsers."""
    p = sub.add_parser(
        "draft-spec",
        help="draft a pipeline spec and its suite from a data file, a URL or a PostgreSQL table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source", help="a CSV or Parquet file, an http(s) URL of one, or a postgresql:// DSN (with --table)"
    )
    p.add_argument(
        "--table", default=None, help="the PostgreSQL table (optionally schema.table) to draft from"
    )
    p.add_argument(
        "--conn-id", default=None, help="the Airflow connection the spec names (default: the pipeline name)"
    )
    p.add_argument(
        "--timestamp-column",
        default=None,
        help="the table's timestamptz column that selects each day (default: the only one)",
    )
    p.add_argument("--target", required=True, help="the column to predict (or the --label's name)")
    p.add_argument(
        "--label", default=None, help="a derived target, '<name>: <expression>', e.g. 'late: arr_delay > 15'"
    )
    p.add_argument("--timestamp", default=None, help="the timestamp column (default: the first that parses)")
    p.add_argument("--timezone", default=None, help="IANA zone of naive timestamps (default UTC)")
    p.add_argument(
        "--year",
        type=int,
        default=None,
        help="the rows' time is a day of this year: --timestamp '<day-of-year column>[,<hour column>]'",
    )
    p.add_argument("--name", default=None, help="pipeline name (default: from the file name)")
    p.add_argument("--out", default=".", help="folder for <name>.yaml and <name>.suite.json (default: here)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The command: profile, draft, write, and say what to review."""
    postgres = args.source.startswith(("postgresql://", "postgres://"))
    named = args.table.rpartition(".")[2] if postgres and args.table else Path(args.source.split("?")[0]).stem
    stem = re.sub(r"[^A-Za-z0-9_]", "_", named).strip("_") or "pipeline"
    name = args.name or (stem if stem[0].isalpha() else f"p_{stem}")
    if postgres:
        frame, source = read_table(args.source, args.table, args.conn_id or name, args.timestamp_column)
        if args.timestamp != source["timestamp_column"]:  # the day selector, unless it is also the row's time
            frame = frame.drop(columns=[source["timestamp_column"]])
    else:
        frame, source = read_data(args.source)
    draft = draft_spec(
        frame,
        source,
        target=args.target,
        name=name,
        label=args.label,
        timestamp=args.timestamp,
        timezone=args.timezone,
        year=args.year,
    )
    spec_path, suite_path = write_draft(draft, Path(args.out), source)
    left_out = {
        c: why
        for c, why in draft.comments.items()
        if draft.spec["columns"].get(c, {}).get("role") == "ignore"
    }
    if postgres:
        variable = f"AIRFLOW_CONN_{source['conn_id'].upper()}"
        connection = (
            f"export {variable}={_without_password(args.source)} (or an Airflow connection of that id), then "
        )
    else:
        connection = ""
    return {
        "spec": str(spec_path),
        "suite": str(suite_path),
        "rows": len(frame),
        "task": draft.spec["task"],
        "features": [c for c, d in draft.spec["columns"].items() if d.get("role", "feature") == "feature"],
        "left_out": left_out,
        "window": draft.spec["window"],
        # absolute: `make run` runs from the repository, wherever draft-spec was run
        "next": f"review {spec_path}, then: {connection}make run PIPELINE={spec_path.resolve()} "
        f"DATE={dt.date.fromisoformat(draft.spec['window']['data_end']) + dt.timedelta(days=1)}",
    }
