"""The constant-window guard of build_features judges a column by its kind.

A calendar part (the month of a window inside one month), a column derived only from calendar
parts, and a column constant by declaration are constant by construction and never block training;
a measured column stuck at one value still does, and the message says which kind it judged and why.
``constant_guard`` sets the guard per column either way.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from mlcycle.settings import Settings
from mlcycle.spec import load_spec
from mlcycle.steps._common import Interval
from mlcycle.steps.features import build_features, collapsed_features, column_kind
from mlcycle.steps.ingest import ingest
from mlcycle.steps.validate import validate
from tests.datasets import make_events_dataset, write_spec_variant

#: The generated flights with the month and a winter flag as features, and a declared-constant column.
CALENDAR_FEATURES = {
    "derive": {"month": "month", "winter": "local_month in [12, 1, 2]"},
    "columns": {
        "month": {"type": "integer", "min": 1, "max": 12},
        "winter": {"type": "integer", "min": 0, "max": 1},
        "cancelled": {"type": "integer", "min": 0, "max": 0, "role": "feature"},
    },
}


def _spec(tmp_path, **overrides):
    base = make_events_dataset(tmp_path / "data", start="2023-03-01", days=20)
    return load_spec(
        write_spec_variant(base, tmp_path / "flights.yaml", **{**CALENDAR_FEATURES, **overrides})
    )


def _frame(spec, rows=96):
    times = pd.date_range(dt.datetime(2023, 3, 20), periods=rows, freq="15min", tz="UTC")
    frame = pd.DataFrame({c.name: [0] * rows for c in spec.columns}).assign(event_time=times)
    frame["zone"], frame["carrier"] = "z001", "AA"
    frame["distance"], frame["dow"], frame["hour"] = [100.0, 200.0] * (rows // 2), 0, [1, 2] * (rows // 2)
    frame["month"], frame["winter"], frame["cancelled"] = 3, 0, 0
    return frame


def test_kinds(tmp_path):
    spec = _spec(tmp_path)
    kinds = {c.name: column_kind(spec, c)[0] for c in spec.feature_columns}
    assert kinds == {
        "zone": "measured",
        "carrier": "measured",
        "distance": "measured",
        "dow": "calendar",
        "hour": "calendar",
        "month": "calendar",
        "winter": "calendar",
        "cancelled": "constant",
    }


def test_calendar_and_declared_constants_are_exempt_and_measured_columns_are_judged(tmp_path):
    spec = _spec(tmp_path)
    frame = _frame(spec)
    assert collapsed_features(spec, frame, "evaluation slice") == []  # month 3, winter 0, cancelled 0
    frame["distance"] = 812.0  # a stuck measurement
    assert collapsed_features(spec, frame, "evaluation slice") == [
        "`distance` is constant at 812 over the evaluation slice (96 rows; allowed: std above 0): judged as a "
        "measured column (from the source, neither a calendar part nor constant by declaration)"
    ]


def test_the_guard_is_set_per_column(tmp_path):
    spec = _spec(
        tmp_path,
        columns={
            **CALENDAR_FEATURES["columns"],
            "month": {"type": "integer", "min": 1, "max": 12, "constant_guard": True},
            "distance": {"type": "numeric", "min": 0, "max": 5000, "constant_guard": False},
        },
    )
    frame = _frame(spec).assign(distance=812.0)
    assert collapsed_features(spec, frame, "training slice") == [
        "`month` is constant at 3 over the training slice (96 rows; allowed: std above 0): judged as a "
        "calendar column (derived only from calendar parts ('month'); constant_guard: true)"
    ]


def test_a_spec_says_yes_or_no_to_the_guard(tmp_path):
    base = make_events_dataset(tmp_path / "data", days=2)
    bad = write_spec_variant(
        base, tmp_path / "bad.yaml", columns={"distance": {"type": "numeric", "constant_guard": "off"}}
    )
    with pytest.raises(Exception, match=r"columns.distance.constant_guard: expected bool"):
        load_spec(bad)


def test_a_month_constant_over_the_window_trains_a_stuck_measurement_does_not(tmp_path):
    """Real ingest, validate and build_features on generated events: a 14-day window inside March."""
    spec = _spec(tmp_path)
    base = Settings.from_env()
    settings = Settings(**{**base.__dict__, "home": tmp_path / "home", "store": tmp_path / "home" / "store"})
    interval = Interval(dt.date(2023, 3, 18), dt.date(2023, 3, 19))
    ingest(spec, settings, interval, window_days=14)
    assert validate(spec, settings, interval, window_days=14).validated == 14
    result = build_features(spec, settings, interval, window_days=14)  # month 3 throughout: not a dead sensor
    assert result.train_rows > 0 and result.eval_rows > 0
    train = pd.read_parquet(f"{result.path}/train.parquet")
    assert set(train["month"]) == {3} and set(train["winter"]) == {0}
