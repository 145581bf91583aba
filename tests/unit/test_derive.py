"""Any data set by its spec: derived columns and targets, filters, a transform hook, keys, time zones."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mlcycle.derive import Derivations, Expression, apply, parse_derivations
from mlcycle.errors import SpecError
from mlcycle.expectations import suite_from_spec
from mlcycle.settings import Settings
from mlcycle.spec import load_spec
from mlcycle.steps._common import Interval
from mlcycle.steps.ingest import ingest
from mlcycle.steps.validate import validate
from tests.datasets import EVENT_ZONE, make_events_dataset, write_spec_variant


def _eval(source: str, **columns):
    return Expression.parse(source, "test").evaluate({k: pd.Series(v) for k, v in columns.items()})


def test_expressions_compute_over_columns():
    assert list(_eval("a > 15", a=[10, 20])) == [False, True]
    assert list(_eval("(a + b) * 2 - b / 2", a=[1, 2], b=[2, 4])) == [5.0, 10.0]
    assert list(_eval("a in ['x', 'z'] and not b == 1", a=["x", "y", "z"], b=[0, 0, 1])) == [True, False, False]
    assert list(_eval("where(a > 0, a, 0)", a=[-1, 3])) == [0, 3]
    assert list(_eval("clip(a, 0, 10)", a=[-5, 50])) == [0, 10]
    assert list(_eval("isnull(a) or a < 0", a=[np.nan, 1, -1])) == [True, False, True]
    assert _eval("log1p(a)", a=[0.0]).iloc[0] == 0.0


@pytest.mark.parametrize("source", ["__import__('os')", "a.__class__", "(lambda: 1)()", "open('x')",
                                    "a[0]", "eval('1')", "a if b else c"])
def test_expressions_cannot_reach_code(source):
    with pytest.raises(SpecError, match="derive.x|test"):
        Expression.parse(source, "derive.x")


def test_a_spec_with_every_kind_of_derivation_loads(tmp_path):
    spec = load_spec(make_events_dataset(tmp_path, days=3))
    assert spec.key == () and spec.timezone == EVENT_ZONE
    assert [name for name, _ in spec.derivations.derive] == ["late", "dow", "hour"]
    suite = suite_from_spec(spec)
    assert not [e for e in suite["expectations"] if "unique" in e["type"]], "event data has no key to check"


def test_spec_problems_of_derivations_name_the_key(tmp_path):
    base = make_events_dataset(tmp_path / "ok", days=2)
    bad = write_spec_variant(base, tmp_path / "bad.yaml", derive={"speed": "distance / duration"},
                             filter=["cancelled == 0", "colour == 'red'"], transform="no-colon",
                             key=["zone", "nope"], timestamp={"timezone": "Europe/Atlantis"})
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    text = str(err.value)
    for problem in ("derive.speed: declare the derived column under `columns`",
                    "derive.speed: 'duration' is neither a column nor a calendar part",
                    "filter[1]: 'colour' is neither a column", "transform: '<path to a .py file",
                    "spec.key: 'nope' is not among the columns", "timestamp.timezone: an IANA time zone"):
        assert problem in text, (problem, text)


def test_a_compound_key_is_checked_together(tmp_path):
    spec = load_spec(write_spec_variant(make_events_dataset(tmp_path, days=2), tmp_path / "k.yaml",
                                        key=["ts", "zone", "carrier"]))
    (expectation,) = [e for e in suite_from_spec(spec)["expectations"] if "unique" in e["type"]]
    assert expectation == {"type": "expect_compound_columns_to_be_unique",
                           "kwargs": {"column_list": ["ts", "zone", "carrier"]}, "meta": {}}


def _settings(tmp_path) -> Settings:
    base = Settings.from_env()
    return Settings(home=tmp_path / "home", store=tmp_path / "home" / "store", tracking_uri=base.tracking_uri,
                    artifact_root=None, pipelines_dir=base.pipelines_dir, dag_id="t", run_id="t",
                    code_version="t")


def test_partitions_are_local_days_even_across_a_daylight_saving_change(tmp_path):
    spec = load_spec(make_events_dataset(tmp_path, start="2023-03-10", days=5))
    settings = _settings(tmp_path)
    result = ingest(spec, settings, Interval(dt.date(2023, 3, 13), dt.date(2023, 3, 14)), window_days=3)
    assert result.filtered["filter: cancelled == 0"] > 0  # cancelled flights: dropped, and counted
    store = settings.store / "flights" / "raw"
    sunday = pd.read_parquet(store / "date=2023-03-12" / "data.parquet")
    local = sunday["event_time"].dt.tz_convert(EVENT_ZONE)
    # The day clocks went forward: 23 local hours, from midnight EST (05:00 UTC) to midnight EDT (04:00 UTC).
    assert sunday["event_time"].min() == pd.Timestamp("2023-03-12 05:00", tz="UTC")
    assert sunday["event_time"].max() < pd.Timestamp("2023-03-13 04:00", tz="UTC")
    assert set(local.dt.date) == {dt.date(2023, 3, 12)} and local.dt.hour.nunique() == 23
    monday = pd.read_parquet(store / "date=2023-03-13" / "data.parquet")
    assert monday["event_time"].min() == pd.Timestamp("2023-03-13 04:00", tz="UTC")
    # The derived target and features, from the rule and from the local calendar.
    assert set(sunday["late"]) == {0, 1} and (sunday["late"] == (sunday["arr_delay"] > 15)).all()
    assert set(sunday["dow"]) == {6} and set(monday["dow"]) == {0}
    assert (sunday["hour"] == local.dt.hour).all() and (sunday["cancelled"] == 0).all()
    # Many events share a timestamp, and the suite (no key) lets them pass.
    assert sunday["ts"].duplicated().any()
    validated = validate(spec, settings, Interval(dt.date(2023, 3, 13), dt.date(2023, 3, 14)), window_days=3)
    assert validated.validated == 3
    # The filter's rows are counted in the validation report, apart from rows that belong to no day.
    report = (settings.store / "flights" / "reports" / "validation" / "end=2023-03-14" / "report.html").read_text()
    assert f"removed by filter: cancelled == 0</th><td>{result.filtered['filter: cancelled == 0']}<" in report


def test_a_transform_function_adds_what_no_expression_covers(tmp_path):
    base = make_events_dataset(tmp_path, start="2023-03-10", days=3)
    (tmp_path / "transforms.py").write_text(
        "def long_haul_only(frame):\n"
        "    frame = frame[frame['distance'] > 500].copy()\n"
        "    frame['band'] = (frame['distance'] // 1000).astype('int64')\n"
        "    return frame\n")
    spec = load_spec(write_spec_variant(base, tmp_path / "t.yaml", transform="transforms.py:long_haul_only",
                                        columns={"band": {"type": "integer", "min": 0, "max": 2}}))
    result = ingest(spec, _settings(tmp_path), Interval(dt.date(2023, 3, 11), dt.date(2023, 3, 12)), window_days=1)
    assert result.filtered["transform: transforms.py:long_haul_only"] > 0
    part = pd.read_parquet(_settings(tmp_path).store / "flights" / "raw" / "date=2023-03-11" / "data.parquet")
    assert (part["distance"] > 500).all() and set(part["band"]) <= {0, 1, 2}


def test_apply_reports_a_column_the_batch_lacks(tmp_path):
    from mlcycle.errors import SourceError

    frame = pd.DataFrame({"event_time": pd.to_datetime(["2023-01-01"], utc=True), "a": [1]})
    problems: list[str] = []
    rules = parse_derivations({"derive": {"b": "missing + 1"}}, tmp_path, problems)
    assert not problems and isinstance(rules, Derivations)
    with pytest.raises(SourceError, match="derive.b: 'missing \\+ 1' reads 'missing'"):
        apply(frame, rules, "UTC", "event_time")
