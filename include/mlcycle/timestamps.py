"""Each row's timestamp, as the spec's ``timestamp`` section describes, and the local calendar days.

Timestamps are stored in UTC (``event_time``). A naive timestamp is local time in
``timestamp.timezone`` (default UTC); an aware one keeps its own offset. Daily partitions are calendar
days in that zone, so a day at a daylight-saving change has 23 or 25 hours. Local times that occur
twice (clocks going back) are read as the first occurrence (daylight time); local times that do not
exist (clocks going forward) move forward to the first valid instant.

A row whose timestamp cannot be derived is not an error of the whole source: it gets ``NaT`` and
is counted (missing or unparseable value, or a value the rule turns into a time beyond what a
timestamp can hold), so ingest can report it and validate can decide on the share.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlcycle.errors import SourceError
from mlcycle.spec import Timestamp

#: Why a row has no timestamp.
UNPARSEABLE, OUT_OF_RANGE = "unparseable_timestamp", "timestamp_out_of_range"


@dataclass(frozen=True)
class DerivedTimes:
    values: pd.Series        # datetime64[us, UTC], NaT where no time could be derived
    unparseable: np.ndarray  # missing, or not a time / not a number
    out_of_range: np.ndarray  # a number the rule turns into a time outside pandas' range (1677 to 2262)


def _to_utc(values: pd.Series, timezone: str) -> pd.Series:
    """Aware timestamps converted to UTC; naive ones read as local time in ``timezone`` first."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if timezone == "UTC":
        return values.dt.tz_localize("UTC")
    ambiguous = np.ones(len(values), dtype=bool)  # a repeated local time: its first occurrence
    return values.dt.tz_localize(timezone, ambiguous=ambiguous, nonexistent="shift_forward").dt.tz_convert("UTC")


def _numbers(df: pd.DataFrame, column: str) -> tuple[pd.Series, np.ndarray]:
    raw = df[column]
    values = raw if pd.api.types.is_numeric_dtype(raw) else pd.to_numeric(raw, errors="coerce")
    return values, values.isna().to_numpy()


def _day_of_year(df: pd.DataFrame, ts: Timestamp) -> DerivedTimes:
    start = pd.Timestamp(dt.date(ts.year, 1, 1))
    day, bad = _numbers(df, ts.day_column)
    offset_days = day.astype("float64") - 1
    if ts.hour_column:
        hour, bad_hour = _numbers(df, ts.hour_column)
        bad = bad | bad_hour
        offset_days = offset_days + hour.astype("float64") / 24
    # Timestamps hold about +-292 years around 1970: anything beyond overflows, row by row.
    lo = (pd.Timestamp.min.date() - start.date()).days + 2
    hi = (pd.Timestamp.max.date() - start.date()).days - 2
    with np.errstate(invalid="ignore"):
        far = ~bad & ~((offset_days >= lo) & (offset_days <= hi)).to_numpy()
    keep = ~(bad | far)
    if not keep.all():
        day = day.where(keep)
        if ts.hour_column:
            hour = hour.where(keep)
    offset = pd.to_timedelta(day - 1, unit="D")
    if ts.hour_column:
        offset = offset + pd.to_timedelta(hour, unit="h")
    local = pd.Series(start + offset, index=df.index)
    return DerivedTimes(values=_to_utc(local, ts.timezone), unparseable=bad, out_of_range=far)


def _column(df: pd.DataFrame, ts: Timestamp) -> DerivedTimes:
    raw = df[ts.column]
    if pd.api.types.is_datetime64_any_dtype(raw):  # a native timestamp column (e.g. Parquet)
        values = raw
    else:
        try:
            values = pd.to_datetime(raw, format=ts.format, errors="coerce")
        except ValueError:  # mixed offsets in the text: one instant each, in UTC
            values = pd.to_datetime(raw, format=ts.format, errors="coerce", utc=True)
        if values.dtype == object:
            values = pd.to_datetime(raw, format=ts.format, errors="coerce", utc=True)
    values = _to_utc(pd.Series(values, index=df.index), ts.timezone)
    return DerivedTimes(values=values, unparseable=values.isna().to_numpy(),
                        out_of_range=np.zeros(len(df), dtype=bool))


def derive_event_time(df: pd.DataFrame, ts: Timestamp) -> DerivedTimes:
    try:
        derived = _column(df, ts) if ts.kind == "column" else _day_of_year(df, ts)
    except KeyError as exc:
        raise SourceError(
            f"the source has no column {exc.args[0]!r}, which the spec's `timestamp` section needs"
        ) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise SourceError(f"cannot derive timestamps ({ts.kind}): {exc}") from exc
    values = pd.Series(derived.values, index=df.index).astype("datetime64[us, UTC]").rename("event_time")
    return DerivedTimes(values=values, unparseable=derived.unparseable, out_of_range=derived.out_of_range)


def day_start(day: dt.date, timezone: str) -> pd.Timestamp:
    """The first instant of a local calendar day (a partition's lower bound)."""
    return pd.Timestamp(day).tz_localize(timezone, nonexistent="shift_forward", ambiguous=True)


def local_days(event_time: pd.Series, timezone: str) -> np.ndarray:
    """The local calendar day of each UTC timestamp (the partition a row belongs to), as
    ``datetime64[D]``: compared with ``np.datetime64(day)`` in one vectorised pass, no date objects."""
    return event_time.dt.tz_convert(timezone).dt.tz_localize(None).to_numpy().astype("datetime64[D]")
