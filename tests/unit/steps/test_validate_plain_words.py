"""validate says in plain words which rows, columns and values are bad, with their day, and judges
each day on its own rows: one bad day never quarantines the days that are fine.

The cases are the bundled bikeshare data with one defect, ingested and validated as a real run would.
"""

from __future__ import annotations

import csv
import datetime as dt
import json

import pytest

from mlcycle.errors import ValidationFailed
from mlcycle.spec import load_spec
from mlcycle.steps.ingest import ingest
from mlcycle.steps.validate import validate
from mlcycle.store import Store
from tests.datasets import BIKESHARE_CSV, BIKESHARE_SPEC, write_spec_variant
from tests.unit.conftest import day_interval

BAD_DAY = dt.date(2011, 6, 30)
GOOD_DAYS = (dt.date(2011, 6, 28), dt.date(2011, 6, 29))
HOURS = ("3", "4", "5")


def _bikeshare(tmp_path, defect: str):
    with BIKESHARE_CSV.open(newline="") as fh:
        reader = csv.reader(fh)
        header, rows = next(reader), list(reader)
    doy = str(BAD_DAY.timetuple().tm_yday)
    for row in rows:
        if row[header.index("day")] == doy and row[header.index("hr")] in HOURS:
            if defect == "text":
                row[header.index("temp")] = "abc"
            elif defect == "null_target":
                row[header.index("bikers")] = ""
    if defect == "renamed":
        header[header.index("temp")] = "temperature"
    path = tmp_path / f"bikeshare_{defect}.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return load_spec(
        write_spec_variant(
            BIKESHARE_SPEC,
            tmp_path / f"bikeshare_{defect}.yaml",
            source={"kind": "file", "path": str(path), "format": "csv"},
        )
    )


def _fail(spec, settings, window: int) -> ValidationFailed:
    interval = day_interval(BAD_DAY)
    ingest(spec, settings, interval, window_days=window, attempt="a1")
    with pytest.raises(ValidationFailed) as info:
        validate(spec, settings, interval, window_days=window, attempt="a1")
    return info.value


@pytest.fixture(autouse=True)
def _no_data_docs(monkeypatch):
    monkeypatch.setenv("MLCYCLE_DATA_DOCS", "off")


def _only_the_bad_day_is_held_back(spec, settings, exc):
    store = Store(settings.store, spec.name)
    assert {f["partition"] for f in exc.failures} == {BAD_DAY.isoformat()}
    assert not store.validated(BAD_DAY).exists()
    for day in GOOD_DAYS:
        assert store.validated(day).is_file(), f"{day} is fine and must be published"
        assert not store.quarantine_dir(day, "a1").exists()
    return json.loads((store.quarantine_dir(BAD_DAY, "a1") / "failures.json").read_text())


def test_text_in_a_numeric_column_names_the_rows_and_the_value_and_spares_the_other_days(tmp_path, settings):
    spec = _bikeshare(tmp_path, "text")
    exc = _fail(spec, settings, window=3)
    text = str(exc)
    assert "3 rows of 2011-06-30 have text in numeric column `temp`: 'abc'" in text, text
    assert "event_time 2011-06-30 03:00, 2011-06-30 04:00, 2011-06-30 05:00" in text
    assert (
        "2011-06-30: expect_column_values_to_be_in_type_list on `temp`" in text
    )  # the suite's verdict stays
    assert text.index("have text in numeric column") < text.index("expect_column_values_to_be_in_type_list")
    failures = _only_the_bad_day_is_held_back(spec, settings, exc)
    assert failures["problems"] == [
        {
            "day": "2011-06-30",
            "kind": "text",
            "column": "temp",
            "rows": 3,
            "problem": failures["problems"][0]["problem"],
        }
    ]
    report = (Store(settings.store, spec.name).quarantine_dir(BAD_DAY, "a1") / "report.html").read_text()
    assert "have text in numeric column `temp`: &#x27;abc&#x27;" in report


def test_a_null_target_says_null_the_target_and_the_day(tmp_path, settings):
    spec = _bikeshare(tmp_path, "null_target")
    exc = _fail(spec, settings, window=3)
    text = str(exc)
    assert "3 rows of 2011-06-30 have no value (null) in the target `bikers`, which allows none" in text, text
    assert "reads as float64, not a whole-number type" in text  # why GX says "observed 'float64'"
    assert "2011-06-30: expect_column_values_to_not_be_null on `bikers`" in text
    _only_the_bad_day_is_held_back(spec, settings, exc)


def test_a_renamed_column_is_reported_once_with_the_closest_name(tmp_path, settings):
    spec = _bikeshare(tmp_path, "renamed")
    exc = _fail(spec, settings, window=3)
    text = str(exc)
    assert text.count("column `temp` is missing") == 1, text
    assert (
        "every day of the window (2011-06-28 to 2011-06-30, 3 days): column `temp` is missing; the rows have "
        "`temperature` instead"
    ) in text
    assert text.count("expect_table_columns_to_match_set") == 1  # once for the window, not once per day
    assert (
        "every day of the window (2011-06-28 to 2011-06-30, 3 days): expect_table_columns_to_match_set"
        in text
    )
    assert "`temperature` that the spec does not list" not in text  # said once, as the rename
    assert len(text) < 3000, len(text)
    assert len(exc.failures) >= 3  # the record keeps every day's verdict
