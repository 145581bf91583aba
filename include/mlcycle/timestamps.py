"""Derive each row's timestamp (UTC) as the spec's ``timestamp`` section describes.

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


def _numbers(df: pd.DataFrame, column: str) -> tuple[pd.Series, np.ndarray]:
    raw = df[column]
    values = raw if pd.api.types.is_numeric_dtype(raw) else pd.to_numeric(raw, errors="coerce")
    return values, values.isna().to_numpy()


def _day_of_year(df: pd.DataFrame, ts: Timestamp) -> DerivedTimes:
    start = pd.Timestamp(dt.date(ts.year, 1, 1), tz="UTC")
    day, bad = _numbers(df, ts.day_column)
    offset_days = day.astype("float64") - 1
    if ts.hour_column:
        hour, bad_hour = _numbers(df, ts.hour_column)
        bad = bad | bad_hour
        offset_days = offset_days + hour.astype("float64") / 24
    # Timestamps hold about +-292 years around 1970: anything beyond overflows, row by row.
    lo = (pd.Timestamp.min.date() - start.date()).days + 1
    hi = (pd.Timestamp.max.date() - start.date()).days - 1
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
    return DerivedTimes(values=start + offset, unparseable=bad, out_of_range=far)


def derive_event_time(df: pd.DataFrame, ts: Timestamp) -> DerivedTimes:
    try:
        if ts.kind == "column":
            raw = df[ts.column]
            values = pd.to_datetime(raw, format=ts.format, utc=True, errors="coerce")
            derived = DerivedTimes(values=values, unparseable=values.isna().to_numpy(),
                                   out_of_range=np.zeros(len(df), dtype=bool))
        else:
            derived = _day_of_year(df, ts)
    except KeyError as exc:
        raise SourceError(
            f"the source has no column {exc.args[0]!r}, which the spec's `timestamp` section needs"
        ) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise SourceError(f"cannot derive timestamps ({ts.kind}): {exc}") from exc
    values = pd.Series(derived.values, index=df.index).astype("datetime64[us, UTC]").rename("event_time")
    return DerivedTimes(values=values, unparseable=derived.unparseable, out_of_range=derived.out_of_range)
