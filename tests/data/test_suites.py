"""The committed expectation suite: in step with its spec, and passed by the real bundled data."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from mlcycle.expectations import load_suite, suite_from_spec
from mlcycle.sources.file import FileReader
from mlcycle.spec import load_spec
from mlcycle.steps.validate import SuiteRunner
from mlcycle.store import write_parquet
from tests.datasets import BIKESHARE_SPEC, BIKESHARE_SUITE

#: 19 days spread over 2011 (every 19th day, each month at least once), plus the shortest real day,
#: 2011-01-27 (8 hours): one GX run per partition costs about half a second, so not all 365.
SAMPLE_DAYS = sorted({dt.date(2011, 1, 1) + dt.timedelta(days=19 * i) for i in range(19)} | {dt.date(2011, 1, 27)})


@pytest.fixture(scope="module")
def spec():
    return load_spec(BIKESHARE_SPEC)


def test_the_committed_suite_is_the_one_derived_from_the_spec(spec):
    committed = json.loads(BIKESHARE_SUITE.read_text())
    derived = json.loads(json.dumps(suite_from_spec(spec)))
    assert committed == derived, (
        "include/expectations/bikeshare.json is out of step with include/pipelines/bikeshare.yaml: "
        "regenerate it with `mlcycle suite --pipeline bikeshare --write` and review the diff")
    assert spec.suite_path == BIKESHARE_SUITE.resolve() and load_suite(spec) == committed


def test_sampled_days_of_the_real_data_pass_the_committed_suite(spec, tmp_path):
    runner = SuiteRunner(load_suite(spec))
    reader = FileReader(spec)
    failures, sizes = {}, {}
    for day in SAMPLE_DAYS:
        # Exactly what validate sees: the partition ingest writes, read back from parquet.
        path = tmp_path / f"{day}.parquet"
        write_parquet(reader.read(day, day + dt.timedelta(days=1)).frame, path)
        frame = pd.read_parquet(path)
        sizes[day] = len(frame)
        bad = [r for r in runner.run(frame) if not r["success"]]
        if bad:
            failures[day.isoformat()] = [f"{r['expectation']}: {r['observed']}" for r in bad]
    assert failures == {}
    assert len(SAMPLE_DAYS) == 20 and {d.month for d in SAMPLE_DAYS} == set(range(1, 13))
    assert sizes[dt.date(2011, 1, 27)] == 8 == min(sizes.values())
    assert sum(sizes.values()) > 20 * 20


def test_the_runner_really_checks(spec):
    """Guards the test above: the same runner rejects a partition the suite must reject."""
    runner = SuiteRunner(load_suite(spec))
    frame = FileReader(spec).read(dt.date(2011, 7, 1), dt.date(2011, 7, 2)).frame
    frame.loc[0, "weathersit"] = "sandstorm"
    failed = [r["expectation"] for r in runner.run(frame) if not r["success"]]
    assert failed == ["expect_column_values_to_be_in_set on `weathersit` (value_set=['clear', 'cloudy/misty', "
                      "'light rain/snow', 'heavy rain/snow'])"]
