"""Deriving event_time (UTC) from a column or from year + day-of-year + hour."""

from __future__ import annotations

import pandas as pd
import pytest

from mlcycle.errors import SourceError
from mlcycle.spec import Timestamp
from mlcycle.timestamps import derive_event_time

UTC_US = "datetime64[us, UTC]"


def test_column_with_format():
    df = pd.DataFrame({"ts": ["2011-03-01T00:00:00Z", "2011-03-01T13:00:00Z"]})
    out = derive_event_time(df, Timestamp(kind="column", column="ts", format="%Y-%m-%dT%H:%M:%SZ")).values
    assert out.name == "event_time" and str(out.dtype) == UTC_US
    assert list(out) == [pd.Timestamp("2011-03-01 00:00", tz="UTC"), pd.Timestamp("2011-03-01 13:00", tz="UTC")]


def test_column_with_offsets_is_converted_to_utc():
    df = pd.DataFrame({"ts": ["2011-03-01 09:00:00+02:00", "2011-03-01 09:00:00+02:00"]})
    out = derive_event_time(df, Timestamp(kind="column", column="ts")).values
    assert out.iloc[0] == pd.Timestamp("2011-03-01 07:00", tz="UTC")


def test_day_of_year_and_hour():
    df = pd.DataFrame({"day": [1, 32, 365], "hr": [0, 5, 23]})
    out = derive_event_time(df, Timestamp(kind="day_of_year", year=2011, day_column="day", hour_column="hr")).values
    assert str(out.dtype) == UTC_US
    assert list(out.astype(str)) == ["2011-01-01 00:00:00+00:00", "2011-02-01 05:00:00+00:00",
                                     "2011-12-31 23:00:00+00:00"]


def test_day_of_year_without_hour_is_midnight():
    out = derive_event_time(pd.DataFrame({"day": [60]}), Timestamp(kind="day_of_year", year=2011, day_column="day")).values
    assert out.iloc[0] == pd.Timestamp("2011-03-01", tz="UTC")


def test_missing_column_names_it():
    with pytest.raises(SourceError, match="no column 'hr'.*`timestamp` section"):
        derive_event_time(pd.DataFrame({"day": [1]}),
                          Timestamp(kind="day_of_year", year=2011, day_column="day", hour_column="hr"))


@pytest.mark.parametrize(("frame", "ts"), [
    (pd.DataFrame({"ts": ["2011-03-01", "yesterday", None]}), Timestamp(kind="column", column="ts")),
    (pd.DataFrame({"ts": ["2011-03-01", "2011/03/01", None]}), Timestamp(kind="column", column="ts", format="%Y-%m-%d")),
    (pd.DataFrame({"day": ["60", "first", None]}), Timestamp(kind="day_of_year", year=2011, day_column="day")),
    (pd.DataFrame({"day": [60, 61, 62], "hr": [1.0, "x", None]}),
     Timestamp(kind="day_of_year", year=2011, day_column="day", hour_column="hr")),
])
def test_unparseable_values_are_counted_row_by_row(frame, ts):
    out = derive_event_time(frame, ts)
    assert list(out.unparseable) == [False, True, True] and not out.out_of_range.any()
    assert out.values.iloc[0].year == 2011 and out.values.iloc[1:].isna().all()


def test_values_that_overflow_the_rule_are_counted_not_raised():
    frame = pd.DataFrame({"day": [1, 10**12, -10**9, float("inf")], "hr": [0, 1, 2, 3]})
    out = derive_event_time(frame, Timestamp(kind="day_of_year", year=2011, day_column="day", hour_column="hr"))
    assert list(out.out_of_range) == [False, True, True, True] and not out.unparseable.any()
    assert out.values.iloc[0] == pd.Timestamp("2011-01-01", tz="UTC") and out.values.iloc[1:].isna().all()
