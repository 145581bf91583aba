"""Each row's timestamp, as the spec's ``timestamp`` section describes, and the local calendar days.

Timestamps are stored in UTC (``event_time``). A naive timestamp is local time in
``timestamp.timezone`` (default UTC); an aware one keeps its own offset. Daily partitions are calendar
days in that zone, so a day at a daylight-saving change has 23 or 25 hours. Local times that occur
twice (clocks going back) are read as the first occurrence (daylight time); local times that do not
exist (clocks going forward) move forward to the first valid instant.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from mlcycle.errors import SourceError
from mlcycle.spec import Timestamp


def _to_utc(values: pd.Series, timezone: str) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    ambiguous = np.ones(len(values), dtype=bool)  # the first occurrence: daylight time
    return values.dt.tz_localize(timezone, ambiguous=ambiguous, nonexistent="shift_forward").dt.tz_convert("UTC")


def derive_event_time(df: pd.DataFrame, ts: Timestamp) -> pd.Series:
    try:
        if ts.kind == "column":
            raw = df[ts.column]
            if pd.api.types.is_datetime64_any_dtype(raw):  # a native timestamp column (e.g. Parquet)
                values = raw
            else:
                values = pd.to_datetime(raw, format=ts.format)
                if values.dtype == object:  # mixed offsets in the text: one instant each, in UTC
                    values = pd.to_datetime(raw, format=ts.format, utc=True)
            values = _to_utc(values, ts.timezone)
        else:
            start = pd.Timestamp(dt.date(ts.year, 1, 1))
            day = pd.to_numeric(df[ts.day_column])
            offset = pd.to_timedelta(day - 1, unit="D")
            if ts.hour_column:
                offset = offset + pd.to_timedelta(pd.to_numeric(df[ts.hour_column]), unit="h")
            values = _to_utc(pd.Series(start + offset, index=df.index), ts.timezone)
    except KeyError as exc:
        raise SourceError(
            f"the source has no column {exc.args[0]!r}, which the spec's `timestamp` section needs"
        ) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise SourceError(f"cannot derive timestamps ({ts.kind}): {exc}") from exc
    return values.astype("datetime64[us, UTC]").rename("event_time")


def day_start(day: dt.date, timezone: str) -> pd.Timestamp:
    """The first instant of a local calendar day (a partition's lower bound)."""
    return pd.Timestamp(day).tz_localize(timezone, nonexistent="shift_forward", ambiguous=True)


def local_days(event_time: pd.Series, timezone: str) -> pd.Series:
    """The local calendar day of each UTC timestamp: the partition a row belongs to."""
    return event_time.dt.tz_convert(timezone).dt.date
