"""The spec's ``monitoring:`` section: defaults, and every mistake reported with its path."""

from __future__ import annotations

import pytest

from mlcycle.errors import SpecError
from mlcycle.spec import load_spec
from tests.datasets import BIKESHARE_SPEC, make_classification_dataset, write_spec_variant


def test_bikeshare_watches_its_weather_columns_with_a_distance_test():
    m = load_spec(BIKESHARE_SPEC).monitoring
    assert m.columns == ("temp", "atemp", "hum", "windspeed")
    assert (m.method, m.threshold, m.drift_share, m.cooldown_days) == ("wasserstein", 1.0, 0.5, 7)


def test_defaults_watch_every_feature_but_calendar_parts_and_exclusions(tmp_path):
    path = make_classification_dataset(tmp_path, days=10)
    m = load_spec(path).monitoring
    assert m.columns == ("hour", "x1", "x2", "visits", "color") and m.method is None and m.min_rows == 12
    spec = load_spec(
        write_spec_variant(
            path,
            tmp_path / "v.yaml",
            monitoring={"exclude": ["hour"]},
            derive={"dow": "day_of_week"},
            columns={"dow": {"type": "integer", "min": 0, "max": 6}},
        )
    )
    assert spec.monitoring.columns == ("x1", "x2", "visits", "color")  # dow reads only the calendar


@pytest.mark.parametrize(
    "monitoring, problem",
    [
        ({"drift_shar": 0.3}, "monitoring.drift_shar: unknown key; did you mean `drift_share`?"),
        ({"columns": ["tmp"]}, "monitoring.columns: 'tmp' is not a feature; did you mean `temp`?"),
        ({"exclude": ["bikers"]}, "monitoring.exclude: 'bikers' is not a feature"),
        (
            {"method": "wasserstien"},
            "monitoring.method: unknown drift test 'wasserstien'; did you mean `wasserstein`?",
        ),
        (
            {"columns": ["temp", "weathersit"], "method": "ks"},
            "monitoring.method: ks compares numbers, but weathersit",
        ),
        ({"method": None, "threshold": 0.1}, "monitoring.threshold: set `method` too"),
        ({"drift_share": 1.5}, "monitoring.drift_share: a share in [0, 1)"),
        ({"performance_tolerance": -1}, "monitoring.performance_tolerance: a relative decay >= 0"),
        ({"min_rows": 1}, "monitoring.min_rows: at least 2"),
        ({"cooldown_days": -2}, "monitoring.cooldown_days: zero or more"),
        ({"cooldown_days": "7"}, "monitoring.cooldown_days: expected int"),
    ],
)
def test_each_monitoring_mistake_is_reported_with_its_path(tmp_path, monitoring, problem):
    path = write_spec_variant(BIKESHARE_SPEC, tmp_path / "bad.yaml", monitoring=monitoring)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert problem in str(caught.value)
