"""The spec is strict and the suite cannot drift from it; slices whose features collapsed never train."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from mlcycle.errors import DataQualityError, SpecError
from mlcycle.expectations import load_suite, suite_from_spec, write_suite
from mlcycle.spec import load_spec
from mlcycle.steps.features import collapsed_features
from tests.datasets import BIKESHARE_SPEC, write_spec_variant


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            {"columns": {"temp": {"type": "numeric", "mn": 0, "max": 1}}},
            "columns.temp.mn: unknown key; did you mean `min`?",
        ),
        (
            {"columns": {"temp": {"type": "numeric", "minimum": 0}}},
            "columns.temp.minimum: unknown key; did you mean `min`?",
        ),
        ({"evaluation": {"treshold": 1}}, "evaluation.treshold: unknown key; did you mean `threshold`?"),
        ({"windw": {"days": 3}}, "spec.windw: unknown key; did you mean `window`?"),
        ({"model": {"search": {"n_iters": 3}}}, "model.search.n_iters: unknown key; did you mean `n_iter`?"),
        (
            {"columns": {"temp": {"type": "numeric", "min": 2, "max": 1}}},
            "columns.temp: min 2 is greater than max 1",
        ),
        ({"window": {"days": 0}}, "window.days: between 1 and 3660 (got 0)"),
        ({"window": {"days": True}}, "window.days: expected int, got True"),
        ({"evaluation": {"tolerance": -0.1}}, "evaluation.tolerance: a share between 0 and 1 (got -0.1)"),
        ({"evaluation": {"holdout_days": 0}}, "evaluation.holdout_days: at least 1 (got 0)"),
        ({"evaluation": {"threshold": True}}, "evaluation.threshold: expected int or float, got True"),
        (
            {"columns": {"temp": {"type": "numeric", "max_null_share": False}}},
            "columns.temp.max_null_share: expected",
        ),
        ({"name": "../../x"}, "spec.name: a plain identifier"),
        (
            {"columns": {"weathersit": {"type": "categorical", "values": ["clear"], "min_std": 1}}},
            "columns.weathersit.min_std: only for numeric and integer columns",
        ),
        # the deploy and monitoring sections are as strict as the rest
        ({"deploy": {"watch_second": 3}}, "deploy.watch_second: unknown key; did you mean `watch_seconds`?"),
        ({"deploy": {"watch_seconds": -1}}, "deploy.watch_seconds: at least 0 (got -1)"),
        ({"deploy": {"production_port": True}}, "deploy.production_port: expected int, got True"),
        ({"monitoring": {"colums": ["temp"]}}, "monitoring.colums: unknown key; did you mean `columns`?"),
        ({"monitoring": {"columns": ["no_such_col"]}}, "monitoring.columns: 'no_such_col' is not a feature"),
    ],
)
def test_each_mistake_is_reported_with_its_path(tmp_path, overrides, problem):
    bad = write_spec_variant(BIKESHARE_SPEC, tmp_path / "bad.yaml", **overrides)
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    assert problem in str(err.value), str(err.value)


def test_a_suite_that_drifted_from_its_spec_is_refused_with_the_fix(tmp_path):
    spec = load_spec(
        write_spec_variant(
            BIKESHARE_SPEC, tmp_path / "b.yaml", validation={"suite": str(tmp_path / "suite.json")}
        )
    )
    write_suite(spec)
    assert load_suite(spec) == suite_from_spec(spec)
    edited = load_spec(
        write_spec_variant(
            BIKESHARE_SPEC,
            tmp_path / "b.yaml",
            validation={"suite": str(tmp_path / "suite.json")},
            columns={"temp": {"type": "numeric", "min": 0, "max": 0.9, "max_null_share": 0.01}},
        )
    )
    with pytest.raises(SpecError) as err:
        load_suite(edited)
    text = str(err.value)
    assert "does not match spec" in text and "2 difference(s)" in text
    assert (
        "missing from the committed suite: expect_column_values_to_be_between on `temp` (min_value=0, max_value=0.9)"
        in text
    )
    assert "in the committed suite but not in the spec: expect_column_values_to_be_between on `temp`" in text
    assert f"mlcycle suite --pipeline {edited.path} --write" in text
    # The bundled suite is exactly what the bundled spec generates.
    bundled = load_spec(BIKESHARE_SPEC)
    assert load_suite(bundled) == json.loads(bundled.suite_path.read_text())


def test_distribution_floors_become_expectations_on_each_partition(tmp_path):
    spec = load_spec(
        write_spec_variant(
            BIKESHARE_SPEC,
            tmp_path / "d.yaml",
            columns={
                "hum": {"type": "numeric", "min": 0, "max": 1, "max_null_share": 0.01, "min_std": 0.01},
                "weathersit": {
                    "type": "categorical",
                    "values": ["clear", "cloudy/misty", "light rain/snow", "heavy rain/snow"],
                    "min_distinct": 2,
                },
            },
        )
    )
    kinds = {
        (e["type"], e["kwargs"].get("column")): e["kwargs"] for e in suite_from_spec(spec)["expectations"]
    }
    assert kinds[("expect_column_stdev_to_be_between", "hum")] == {
        "column": "hum",
        "min_value": 0.01,
        "strict_min": False,
    }
    assert kinds[("expect_column_unique_value_count_to_be_between", "weathersit")]["min_value"] == 2


def test_a_feature_stuck_over_a_slice_is_named(tmp_path):
    spec = load_spec(BIKESHARE_SPEC)
    times = pd.date_range(dt.datetime(2011, 6, 1), periods=48, freq="h", tz="UTC")
    frame = pd.DataFrame({c.name: [1] * 48 for c in spec.columns}).assign(event_time=times)
    frame["temp"], frame["atemp"], frame["hum"], frame["hr"] = (
        0.54,
        [0.1, 0.2] * 24,
        [0.5, 0.6] * 24,
        [0, 1] * 24,
    )
    frame["windspeed"] = [0.2, 0.3] * 24
    problems = collapsed_features(spec, frame, "evaluation slice")
    assert problems == [
        "`temp` is constant at 0.54 over the evaluation slice (48 rows; allowed: std above 0): judged as a "
        "measured column (from the source, neither a calendar part nor constant by declaration)"
    ]
    assert DataQualityError.__mro__[1].__name__ == "StepError"  # a clean step failure, exit code 1


def test_a_dead_sensor_over_the_window_passes_each_day_but_never_reaches_training(tmp_path):
    """Real steps on real files: `temp` stuck at 0.5 for a whole window. Each day is valid on its own
    (the real data has such a day, 2011-09-06), but the window cannot train nor judge a model."""
    import csv

    from mlcycle.settings import Settings
    from mlcycle.steps._common import Interval
    from mlcycle.steps.features import build_features
    from mlcycle.steps.ingest import ingest
    from mlcycle.steps.validate import validate
    from tests.datasets import BIKESHARE_CSV

    rows = list(csv.DictReader(BIKESHARE_CSV.open()))
    for row in rows:
        if 160 <= int(row["day"]) <= 181:  # 2011-06-09 to 2011-06-30
            row["temp"] = "0.5"
    stuck = tmp_path / "stuck.csv"
    with stuck.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    spec = load_spec(
        write_spec_variant(BIKESHARE_SPEC, tmp_path / "bikeshare.yaml", source={"path": str(stuck)})
    )
    base = Settings.from_env()
    settings = Settings(**{**base.__dict__, "home": tmp_path / "home", "store": tmp_path / "home" / "store"})
    interval = Interval(dt.date(2011, 6, 29), dt.date(2011, 6, 30))
    ingest(spec, settings, interval, window_days=14)
    assert validate(spec, settings, interval, window_days=14).validated == 14  # every day passes alone
    with pytest.raises(DataQualityError) as err:
        build_features(spec, settings, interval, window_days=14)
    assert "`temp` is constant at 0.5 over the training slice" in str(err.value)
    assert "`temp` is constant at 0.5 over the evaluation slice" in str(err.value)
    assert not (settings.store / "bikeshare" / "features").exists(), "nothing may be written for training"
