"""Derive each row's timestamp (UTC) as the spec's ``timestamp`` section describes."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from mlcycle.errors import SourceError
from mlcycle.spec import Timestamp


def derive_event_time(df: pd.DataFrame, ts: Timestamp) -> pd.Series:
    try:
        if ts.kind == "column":
            values = pd.to_datetime(df[ts.column], format=ts.format, utc=True)
        else:
            start = pd.Timestamp(dt.date(ts.year, 1, 1), tz="UTC")
            day = pd.to_numeric(df[ts.day_column])
            offset = pd.to_timedelta(day - 1, unit="D")
            if ts.hour_column:
                offset = offset + pd.to_timedelta(pd.to_numeric(df[ts.hour_column]), unit="h")
            values = start + offset
    except KeyError as exc:
        raise SourceError(
            f"the source has no column {exc.args[0]!r}, which the spec's `timestamp` section needs"
        ) from exc
    except (ValueError, TypeError) as exc:
        raise SourceError(f"cannot derive timestamps ({ts.kind}): {exc}") from exc
    return values.astype("datetime64[us, UTC]").rename("event_time")
