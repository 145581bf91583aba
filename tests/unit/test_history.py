"""History features (mlcycle.history): point-in-time correct, exactly the aggregate a person would
compute by hand over ``[a - window, a - available_after)`` at the row's grid point ``a``."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mlcycle import history
from mlcycle.history import HistorySpec, parse_features

COLUMNS = {"zone": "categorical", "delay": "numeric", "riders": "integer", "temp": "numeric", "hr": "integer"}


def spec_of(raw: dict) -> HistorySpec:
    problems: list[str] = []
    parsed = parse_features(raw, COLUMNS, problems)
    assert problems == []
    return parsed


def events(seed: int = 0, days: int = 4, per_day: int = 60) -> pd.DataFrame:
    """Events at random minutes, two zones, some null delays."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    start = pd.Timestamp("2023-03-10", tz="UTC").value
    times = np.sort(rng.integers(start, start + days * 86_400 * 10**9, n))
    delay = rng.normal(10, 20, n).round(1)
    delay[rng.random(n) < 0.1] = np.nan
    return pd.DataFrame(
        {"event_time": pd.to_datetime(times, utc=True), "zone": rng.choice(["a", "b"], n), "delay": delay}
    )


def by_hand(
    frame: pd.DataFrame,
    t: pd.Timestamp,
    zone: str,
    window: dt.timedelta,
    delay: dt.timedelta,
    every: dt.timedelta,
    agg: str,
) -> float:
    a = t.floor(every)
    rows = frame[(frame.zone == zone) & (frame.event_time >= a - window) & (frame.event_time < a - delay)]
    values = rows.delay.dropna()
    if agg == "count":
        return float(len(rows))
    if agg == "share":  # of every row: a null delay is not late
        return float((rows.delay > 15).mean()) if len(rows) else np.nan
    if values.empty:
        return 0.0 if agg == "sum" else np.nan
    return float(getattr(values, agg)())


@pytest.mark.parametrize("agg", ["count", "sum", "mean", "min", "max", "share"])
def test_each_row_gets_the_aggregate_computed_by_hand_over_its_window(agg):
    frame = events()
    of = "delay > 15" if agg == "share" else "delay"
    spec = spec_of(
        {
            "entity": ["zone"],
            "every": "1h",
            "history": {
                "f": {
                    "agg": agg,
                    **({} if agg == "count" else {"of": of}),
                    "window": "6h",
                    "available_after": "1h",
                }
            },
        }
    )
    days = sorted({d.date() for d in frame.event_time})
    rows = frame[frame.event_time >= pd.Timestamp("2023-03-11", tz="UTC")]
    out = history.for_rows(rows, frame, spec, days, "UTC")
    for _, row in out.iloc[::7].iterrows():
        expected = by_hand(
            frame,
            row.event_time,
            row.zone,
            dt.timedelta(hours=6),
            dt.timedelta(hours=1),
            dt.timedelta(hours=1),
            agg,
        )
        assert row.f == pytest.approx(expected, nan_ok=True), (row.event_time, row.zone)


def test_a_row_never_sees_its_own_value_or_a_later_one():
    """A feature made of the target: change a row's own value (and every later one) and its feature
    stays the same."""
    frame = events(seed=3)
    spec = spec_of(
        {
            "entity": ["zone"],
            "every": "1h",
            "history": {
                "f": {"of": "delay", "agg": "sum", "window": "1d"},
                "g": {"of": "delay", "lag": "1h"},
            },
        }
    )
    days = sorted({d.date() for d in frame.event_time})
    before = history.for_rows(frame, frame, spec, days, "UTC")
    for i in (50, 120, 200):
        changed = frame.copy()
        changed.loc[i:, "delay"] = 1e6
        after = history.for_rows(changed, changed, spec, days, "UTC")
        assert after.f.iloc[i] == pytest.approx(before.f.iloc[i], nan_ok=True)
        assert after.g.iloc[i] == pytest.approx(before.g.iloc[i], nan_ok=True)


def test_hourly_lags_are_the_row_that_many_hours_before_and_missing_history_is_null():
    times = pd.date_range("2011-01-01", periods=24 * 3, freq="h", tz="UTC")
    frame = pd.DataFrame({"event_time": times, "riders": np.arange(72)})
    frame = frame.drop(index=[30])  # an hour without a row
    spec = spec_of(
        {
            "every": "1h",
            "history": {
                "lag24": {"of": "riders", "lag": "24h"},
                "mean3": {"of": "riders", "agg": "mean", "window": "3h"},
                "n24": {"agg": "count", "window": "24h", "fill": -1},
            },
        }
    )
    days = [dt.date(2011, 1, 1), dt.date(2011, 1, 2), dt.date(2011, 1, 3)]
    out = history.for_rows(frame, frame, spec, days, "UTC").set_index("event_time")
    at = out.loc[pd.Timestamp("2011-01-02 10:00", tz="UTC")]
    assert at.lag24 == 10 and at.mean3 == pytest.approx((31 + 32 + 33) / 3)
    assert at.n24 == 23  # hour 30 has no row
    assert np.isnan(out.loc[pd.Timestamp("2011-01-03 06:00", tz="UTC")].lag24)  # the missing hour
    first = out.loc[pd.Timestamp("2011-01-01 05:00", tz="UTC")]
    assert np.isnan(first.lag24) and first.n24 == -1  # before the data: unknown, then the fill
    assert out.loc[pd.Timestamp("2011-01-01 05:00", tz="UTC")].mean3 == pytest.approx(3.0)
    # a day the store does not hold makes every window over it unknown
    gap = history.for_rows(frame, frame, spec, [days[0], days[2]], "UTC").set_index("event_time")
    assert np.isnan(gap.loc[pd.Timestamp("2011-01-03 10:00", tz="UTC")].lag24)
    assert gap.loc[pd.Timestamp("2011-01-03 10:00", tz="UTC")].n24 == -1


def test_the_snapshot_table_holds_what_rows_get_at_each_grid_point():
    frame = events(seed=5)
    spec = spec_of(
        {"entity": ["zone"], "every": "1h", "history": {"f": {"of": "delay", "agg": "mean", "window": "3h"}}}
    )
    days = sorted({d.date() for d in frame.event_time})
    table = history.snapshot_table(frame, spec, ("zone",), dt.date(2023, 3, 11), days, "UTC")
    assert len(table) == 2 * 24 and table.snapshot_time.min() == pd.Timestamp("2023-03-11 01:00", tz="UTC")
    assert table.snapshot_time.max() == pd.Timestamp("2023-03-12", tz="UTC")
    rows = frame[
        (frame.event_time >= pd.Timestamp("2023-03-11 01:00", tz="UTC"))
        & (frame.event_time < pd.Timestamp("2023-03-12 01:00", tz="UTC"))
    ]
    got = history.for_rows(rows, frame, spec, days, "UTC")
    got["snapshot_time"] = got.event_time.dt.floor("1h")
    joined = got.merge(table, on=["zone", "snapshot_time"], suffixes=("", "_table"))
    assert len(joined) == len(rows)
    np.testing.assert_allclose(joined.f, joined.f_table)


def test_a_day_grid_follows_local_midnights_across_a_daylight_saving_change():
    """New York, clocks forward on 2023-03-12: each row gets the snapshot of its local midnight, the
    same hour of the day before by hour entity, and the day's snapshot table is dated at midnight."""
    zone = "America/New_York"
    local = pd.date_range("2023-03-09", "2023-03-14", freq="h", inclusive="left", tz=zone)
    frame = pd.DataFrame(
        {"event_time": local.tz_convert("UTC"), "riders": np.arange(len(local)), "hr": local.hour}
    )
    spec = spec_of(
        {
            "every": "1d",
            "history": {
                "same_hour_yesterday": {"of": "riders", "lag": "1d", "entity": ["hr"]},
                "mean_yesterday": {"of": "riders", "agg": "mean", "window": "1d"},
            },
        }
    )
    days = [dt.date(2023, 3, 9) + dt.timedelta(days=i) for i in range(5)]
    out = history.for_rows(frame, frame, spec, days, zone)
    out["local"] = out.event_time.dt.tz_convert(zone)
    row = out[out.local == pd.Timestamp("2023-03-13 15:00", tz=zone)].iloc[0]
    before = frame[frame.event_time == pd.Timestamp("2023-03-12 15:00", tz=zone).tz_convert("UTC")].riders
    assert row.same_hour_yesterday == before.iloc[0]
    day12 = frame[
        (frame.event_time >= pd.Timestamp("2023-03-12", tz=zone))
        & (frame.event_time < pd.Timestamp("2023-03-13", tz=zone))
    ]
    assert len(day12) == 23 and row.mean_yesterday == pytest.approx(day12.riders.mean())
    table = history.snapshot_table(frame, spec, (), dt.date(2023, 3, 12), days, zone)
    assert list(table.snapshot_time) == [pd.Timestamp("2023-03-13", tz=zone).tz_convert("UTC")]
    assert table.mean_yesterday.iloc[0] == pytest.approx(day12.riders.mean())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"every": "1h", "history": {"f": {"of": "riders", "lag": "1h", "available_after": "1h"}}},
            "at least available_after + every",
        ),
        (
            {"every": "1h", "history": {"f": {"of": "riders", "agg": "mean", "window": "90min"}}},
            "whole multiple of features.every",
        ),
        (
            {"history": {"f": {"of": "riders", "agg": "mean", "window": "36h"}}},
            "whole multiple of features.every",
        ),
        (
            {
                "every": "1h",
                "history": {"f": {"of": "riders", "agg": "mean", "window": "1h", "available_after": "1h"}},
            },
            "longer than available_after",
        ),
        (
            {"history": {"f": {"of": "ridrs", "agg": "mean", "window": "2h"}}},
            "'ridrs' is not among the columns",
        ),
        ({"history": {"f": {"of": "riders", "agg": "median", "window": "2h"}}}, "agg: one of count"),
        ({"history": {"f": {"of": "riders"}}}, "needs `lag`"),
        ({"history": {"f": {"of": "riders", "lag": "2h", "agg": "sum", "window": "2h"}}}, "not both"),
        ({"every": "7h", "history": {}}, "divides a day"),
        ({"entity": ["temp"], "history": {}}, "an entity is named by categorical"),
        ({"history": {"riders": {"of": "riders", "lag": "2h"}}}, "already a column"),
        ({"history": {"f": {"of": "riders", "lag": "two hours"}}}, "a duration such as"),
    ],
)
def test_spec_mistakes_are_named(raw, message):
    problems: list[str] = []
    parse_features(raw, COLUMNS, problems)
    assert any(message in p for p in problems), problems
