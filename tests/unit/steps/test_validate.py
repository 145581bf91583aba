"""validate: a good window is published byte for byte; every kind of bad batch is quarantined.

The bad batches are the bundled bikeshare data with one defect on BAD_DAY (tests/datasets.py),
ingested and validated against the committed suite, as a real run would.
"""

from __future__ import annotations

import datetime as dt
import html
import json

import pandas as pd
import pytest

from mlcycle.errors import StepError, ValidationFailed
from mlcycle.spec import load_spec
from mlcycle.steps.ingest import ingest
from mlcycle.steps.validate import validate
from mlcycle.store import Store, file_sha256
from tests.datasets import BAD_KINDS, EXPECTED_FAILURE, make_bad_bikeshare
from tests.unit.conftest import day_interval

BAD_DAY = dt.date(2011, 3, 15)
GOOD_DAY = BAD_DAY - dt.timedelta(days=1)
#: These change the CSV's header: every partition carries them (a wrong type stays on its own day).
FILE_WIDE = {"missing_column", "extra_column"}

KINDS = list(BAD_KINDS)


def test_a_clean_window_is_published_and_a_rerun_skips_it(clf_spec, settings):
    interval = day_interval(dt.date(2011, 3, 4))
    ingest(clf_spec, settings, interval, window_days=3)
    result = validate(clf_spec, settings, interval, window_days=3)
    assert (result.validated, result.skipped) == (3, 0) and result.suite == "synthclass.partition"
    store = Store(settings.store, clf_spec.name)
    for day in (dt.date(2011, 3, 2), dt.date(2011, 3, 3), dt.date(2011, 3, 4)):
        assert file_sha256(store.validated(day)) == file_sha256(store.raw(day))
    report = (store.validation_report(dt.date(2011, 3, 5))).read_text()
    assert result.report == str(store.validation_report(dt.date(2011, 3, 5)))
    assert report.count('class="pass">passed') == 3 and "FAILED" not in report
    assert not (store.base / "quarantine").exists()

    again = validate(clf_spec, settings, interval, window_days=3)
    assert (again.validated, again.skipped) == (0, 3)


def test_a_changed_raw_partition_is_validated_again(clf_spec, settings):
    interval = day_interval(dt.date(2011, 3, 3))
    ingest(clf_spec, settings, interval, window_days=1)
    validate(clf_spec, settings, interval, window_days=1)
    store = Store(settings.store, clf_spec.name)
    raw = pd.read_parquet(store.raw(dt.date(2011, 3, 3)))
    raw.loc[0, "color"] = "purple"
    raw.to_parquet(store.raw(dt.date(2011, 3, 3)))
    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_in_set on `color`"):
        validate(clf_spec, settings, interval, window_days=1)


def test_validate_before_ingest_says_what_to_run(clf_spec, settings):
    with pytest.raises(StepError, match="no raw partition for 2011-03-03 .*run the ingest step"):
        validate(clf_spec, settings, day_interval(dt.date(2011, 3, 3)), window_days=1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_batch_is_quarantined_and_named(kind, tmp_path, settings):
    spec = load_spec(make_bad_bikeshare(tmp_path / "bad", BAD_DAY.isoformat(), kind))
    expectation = EXPECTED_FAILURE["bikeshare"][kind]
    store = Store(settings.store, spec.name)
    interval = day_interval(BAD_DAY)
    window = 1 if kind in FILE_WIDE else 2  # day-local defects: a good day rides along

    if kind == "unreadable":
        with pytest.raises(ValidationFailed) as info:
            ingest(spec, settings, interval, window_days=window, attempt="a1")
    else:
        ingest(spec, settings, interval, window_days=window, attempt="a1")
        with pytest.raises(ValidationFailed) as info:
            validate(spec, settings, interval, window_days=window, attempt="a1")

    exc = info.value
    assert expectation in str(exc), str(exc)
    assert any(f["expectation"].startswith(expectation) for f in exc.failures)
    if kind != "unreadable":
        assert "2011-03-15: " + expectation in str(exc) and "quarantined under" in str(exc)
        assert all(f["partition"] == "2011-03-15" for f in exc.failures)
    folder = store.quarantine_dir(BAD_DAY, "a1")
    failures = json.loads((folder / "failures.json").read_text())
    assert failures["partition"] == "2011-03-15"
    assert any(f["expectation"].startswith(expectation) for f in failures["failures"])
    assert html.escape(expectation) in (folder / "report.html").read_text()
    # Nothing downstream can see the bad batch.
    assert not store.validated(BAD_DAY).exists()
    if kind != "unreadable":
        # The rejected batch is kept for inspection: the very bytes that were judged.
        assert (folder / "data.parquet").read_bytes() == store.raw(BAD_DAY).read_bytes()
        window_report = store.validation_report(BAD_DAY + dt.timedelta(days=1)).read_text()
        assert exc.report == str(store.validation_report(BAD_DAY + dt.timedelta(days=1)))
        assert "Partition 2011-03-15: <span class=\"fail\">FAILED" in window_report
        assert html.escape(expectation) in window_report
    if window == 2 and kind != "unreadable":
        assert store.validated(GOOD_DAY).is_file()  # only the bad day is held back
        assert not store.quarantine_dir(GOOD_DAY, "a1").exists()
