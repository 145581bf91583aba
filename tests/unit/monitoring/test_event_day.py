"""A replayed request states its day: the prediction log files its rows under that day, not today."""

from __future__ import annotations

import dataclasses
import datetime as dt

from mlcycle.serving.predlog import PredictionLog
from tests.unit.serving.test_predlog import FEATURES, _entry, _files


def test_rows_of_a_stated_day_are_logged_under_it_and_the_others_under_their_arrival(tmp_path):
    log = PredictionLog(
        tmp_path, "bikeshare", "bikeshare", "3", FEATURES, flush_rows=10_000, flush_seconds=3600
    )
    now = dt.datetime.now(dt.UTC)
    log.append(dataclasses.replace(_entry(1, now), day=dt.date(2011, 3, 10)))
    log.append(_entry(2, now))
    log.close()
    assert sorted(p.parent.name for p in _files(tmp_path)) == [
        "date=2011-03-10",
        f"date={now.date().isoformat()}",
    ]
