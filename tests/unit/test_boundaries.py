"""The lifecycle's thresholds exactly at, just under and just over their limits, through the public functions.

A limit is inclusive where the spec reference says "at most" (a restatement shrinking the day by at
most ``max_restatement_shrink``, a drifted share up to ``drift_share``, a decay up to
``performance_tolerance``) and a cool-down is a number of days (a drift exactly ``cooldown_days``
after the last triggered one starts a new episode). Each case fails if a comparison is loosened or
tightened by one step.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mlcycle.errors import ValidationFailed
from mlcycle.monitoring.decision import Figures, Ledger, judge
from mlcycle.spec import MonitoringSpec, load_spec
from mlcycle.steps.ingest import ingest
from mlcycle.steps.validate import validate
from mlcycle.store import Store, write_parquet
from tests.unit.conftest import day_interval
from tests.unit.test_integrity import DAY, bikeshare_variant

CONFIG = MonitoringSpec(
    columns=("a", "b", "c", "d"), drift_share=0.5, performance_tolerance=0.2, cooldown_days=5
)


@pytest.mark.parametrize(("drifted", "drift"), [(1, False), (2, False), (3, True)])
def test_drift_share_is_an_inclusive_limit(drifted, drift):
    """Of 4 features with drift_share 0.5: 2 drifted (exactly 0.5) is not drift, 3 is."""
    assert judge(Figures(drifted=tuple("abcd"[:drifted]), monitored=4), CONFIG).drift is drift


@pytest.mark.parametrize(("current", "decay"), [(11.9, False), (12.0, False), (12.1, True)])
def test_performance_tolerance_is_an_inclusive_limit(current, decay):
    """An error metric 10.0 at training with a tolerance of 20%: 12.0 is still within it."""
    figures = Figures(drifted=(), monitored=4, metric="rmse", current_score=current, holdout_score=10.0)
    assert judge(figures, CONFIG).decay is decay


@pytest.mark.parametrize(("current", "decay"), [(0.81, False), (0.8, False), (0.79, True)])
def test_a_greater_is_better_metric_decays_below_its_tolerance(current, decay):
    figures = Figures(
        drifted=(), monitored=4, metric="r2", current_score=current, holdout_score=1.0, greater_is_better=True
    )
    assert judge(figures, CONFIG).decay is decay


@pytest.mark.parametrize(("days_later", "trigger"), [(4, False), (5, True), (6, True)])
def test_a_drift_exactly_cooldown_days_later_starts_a_new_episode(tmp_path, days_later, trigger):
    drift = judge(Figures(drifted=("a", "b", "c"), monitored=4), CONFIG)
    ok = judge(Figures(drifted=(), monitored=4), CONFIG)
    ledger = Ledger(tmp_path / "ledger.json")
    first = dt.date(2011, 6, 1)
    assert ledger.decide(first, drift, CONFIG.cooldown_days).trigger
    for gap in range(1, days_later):  # quiet days in between: the episode itself has ended
        ledger.decide(first + dt.timedelta(days=gap), ok, CONFIG.cooldown_days)
    later = ledger.decide(first + dt.timedelta(days=days_later), drift, CONFIG.cooldown_days)
    assert later.trigger is trigger, later.why
    assert later.episode == (later.day if trigger else first.isoformat())


@pytest.mark.parametrize(("kept", "accepted"), [(19, True), (18, True), (17, False)])
def test_max_restatement_shrink_is_an_inclusive_limit(tmp_path, settings, kept, accepted):
    """24 validated rows, max_restatement_shrink 0.25: a restatement keeping 18 (exactly 25% fewer)
    is published, 17 (29% fewer) is refused and the validated version kept."""
    spec = load_spec(bikeshare_variant(tmp_path / "data", validation={"max_restatement_shrink": 0.25}))
    ingest(spec, settings, day_interval(DAY), window_days=1)
    validate(spec, settings, day_interval(DAY), window_days=1)
    store = Store(settings.store, spec.name)
    first = store.current_validated(DAY)
    write_parquet(pd.read_parquet(store.raw(DAY)).head(kept), store.raw(DAY))
    if accepted:
        validate(spec, settings, day_interval(DAY), window_days=1)
        assert store.current_validated(DAY).rows == kept
    else:
        with pytest.raises(ValidationFailed, match="shrinks the day by at most 25%"):
            validate(spec, settings, day_interval(DAY), window_days=1)
        assert store.current_validated(DAY) == first


WATCH = {"requests": 100, "errors": 5, "error_rate": 0.05, "p99_ms": 500.0}


@pytest.mark.parametrize(
    ("figures", "breach"),
    [
        ({}, None),  # exactly at both limits: no breach
        ({"errors": 4, "error_rate": 0.04, "p99_ms": 499.0}, None),
        ({"errors": 6, "error_rate": 0.06}, "error rate 6.00%"),
        ({"p99_ms": 501.0}, "p99 latency 501 ms"),
        ({"requests": 20, "errors": 20, "error_rate": 1.0}, "error rate 100.00%"),  # the fewest judged
        ({"requests": 19, "errors": 19, "error_rate": 1.0}, None),  # too few answers to judge
    ],
)
def test_the_watch_window_limits_are_inclusive(figures, breach):
    from mlcycle.deploy.figures import breach_of
    from mlcycle.spec import DeploySpec

    found = breach_of(WATCH | figures, DeploySpec(watch_max_error_rate=0.05, watch_max_p99_ms=500))
    assert (found is None) if breach is None else (found is not None and breach in found), found


@pytest.mark.parametrize(("allowed", "passes"), [(7 / 8645, True), (float(np.nextafter(7 / 8645, 0)), False)])
def test_max_dropped_share_is_an_inclusive_limit(tmp_path, settings, allowed, passes):
    """7 of the 8645 source rows move past window.data_end (dropped as outside_source_bounds): a
    limit of exactly that share passes the window, the float below it fails it."""

    def next_year(frame):
        frame.loc[frame.index[frame["day"] == DAY.timetuple().tm_yday][:7], "day"] = 400
        return frame

    spec = load_spec(
        bikeshare_variant(
            tmp_path / "data", next_year, validation={"max_dropped_share": {"outside_source_bounds": allowed}}
        )
    )
    assert ingest(spec, settings, day_interval(DAY), window_days=1).dropped["outside_source_bounds"] == 7
    if passes:
        validate(spec, settings, day_interval(DAY), window_days=1)
    else:
        with pytest.raises(ValidationFailed, match="as outside_source_bounds.*7 of 8645 source rows"):
            validate(spec, settings, day_interval(DAY), window_days=1)
