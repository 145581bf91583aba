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
    out = derive_event_time(df, Timestamp(kind="column", column="ts", format="%Y-%m-%dT%H:%M:%SZ"))
    assert out.name == "event_time" and str(out.dtype) == UTC_US
    assert list(out) == [pd.Timestamp("2011-03-01 00:00", tz="UTC"), pd.Timestamp("2011-03-01 13:00", tz="UTC")]


def test_column_with_offsets_is_converted_to_utc():
    df = pd.DataFrame({"ts": ["2011-03-01 09:00:00+02:00", "2011-03-01 09:00:00+02:00"]})
    out = derive_event_time(df, Timestamp(kind="column", column="ts"))
    assert out.iloc[0] == pd.Timestamp("2011-03-01 07:00", tz="UTC")


def test_day_of_year_and_hour():
    df = pd.DataFrame({"day": [1, 32, 365], "hr": [0, 5, 23]})
    out = derive_event_time(df, Timestamp(kind="day_of_year", year=2011, day_column="day", hour_column="hr"))
    assert str(out.dtype) == UTC_US
    assert list(out.astype(str)) == ["2011-01-01 00:00:00+00:00", "2011-02-01 05:00:00+00:00",
                                     "2011-12-31 23:00:00+00:00"]


def test_day_of_year_without_hour_is_midnight():
    out = derive_event_time(pd.DataFrame({"day": [60]}), Timestamp(kind="day_of_year", year=2011, day_column="day"))
    assert out.iloc[0] == pd.Timestamp("2011-03-01", tz="UTC")


def test_missing_column_names_it():
    with pytest.raises(SourceError, match="no column 'hr'.*`timestamp` section"):
        derive_event_time(pd.DataFrame({"day": [1]}),
                          Timestamp(kind="day_of_year", year=2011, day_column="day", hour_column="hr"))


@pytest.mark.parametrize(("frame", "ts"), [
    (pd.DataFrame({"ts": ["yesterday"]}), Timestamp(kind="column", column="ts")),
    (pd.DataFrame({"ts": ["2011/03/01"]}), Timestamp(kind="column", column="ts", format="%Y-%m-%d")),
    (pd.DataFrame({"day": ["first"]}), Timestamp(kind="day_of_year", year=2011, day_column="day")),
])
def test_unparseable_values_are_a_source_error(frame, ts):
    with pytest.raises(SourceError, match=f"cannot derive timestamps \\({ts.kind}\\)"):
        derive_event_time(frame, ts)
