"""ingest: one raw partition per day of the window, deterministic, atomic; nothing to do past the data."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from mlcycle.errors import NothingToDo, ValidationFailed
from mlcycle.spec import EVENT_TIME, load_spec
from mlcycle.steps.ingest import ingest
from mlcycle.store import Store, file_sha256
from tests.datasets import make_classification_dataset
from tests.unit.conftest import START, day_interval


def _raw_hashes(store: Store) -> dict[str, str]:
    return {p.parent.name: file_sha256(p) for p in sorted((store.base / "raw").glob("date=*/data.parquet"))}


def test_writes_one_partition_per_day_of_the_window(clf_spec, settings):
    result = ingest(clf_spec, settings, day_interval(dt.date(2011, 3, 10)), window_days=4)
    assert (result.window_start, result.window_end) == ("2011-03-07", "2011-03-11")
    assert result.partitions == 4 and result.rows == 4 * 24 and result.empty_days == []
    store = Store(settings.store, clf_spec.name)
    assert settings.store == settings.home / "store"
    assert sorted(_raw_hashes(store)) == [f"date=2011-03-{d:02d}" for d in range(7, 11)]
    part = pd.read_parquet(store.raw(dt.date(2011, 3, 9)))
    assert list(part.columns) == [*clf_spec.column_names, EVENT_TIME]
    assert isinstance(part[EVENT_TIME].dtype, pd.DatetimeTZDtype) and str(part[EVENT_TIME].dt.tz) == "UTC"
    assert part[EVENT_TIME].dt.date.eq(dt.date(2011, 3, 9)).all() and part[EVENT_TIME].is_monotonic_increasing
    assert part["ts"].iloc[0] == "2011-03-09T00:00:00Z"


def test_the_window_defaults_to_the_spec_and_is_clipped_to_the_data(clf_spec, settings):
    result = ingest(clf_spec, settings, day_interval(START + dt.timedelta(days=2)))
    assert (result.window_start, result.window_end) == ("2011-03-01", "2011-03-04")  # data_start clips
    last = ingest(clf_spec, settings, day_interval(clf_spec.data_end))
    assert last.partitions == clf_spec.window_days and last.window_end == "2011-03-31"


def test_ingesting_twice_gives_byte_identical_partitions(clf_spec, settings):
    interval = day_interval(dt.date(2011, 3, 12))
    ingest(clf_spec, settings, interval, window_days=5)
    store = Store(settings.store, clf_spec.name)
    first = _raw_hashes(store)
    ingest(clf_spec, settings, interval, window_days=5)
    assert _raw_hashes(store) == first and len(first) == 5
    # A fresh store from the same source gets the very same bytes too.
    again = Store(settings.home / "other-store", clf_spec.name)
    ingest(clf_spec, settings.__class__(**{**settings.__dict__, "store": again.root}), interval, window_days=5)
    assert _raw_hashes(again) == first


def test_writes_leave_no_temporary_files(clf_spec, settings):
    ingest(clf_spec, settings, day_interval(dt.date(2011, 3, 12)), window_days=5)
    leftovers = [p for p in settings.store.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_nothing_to_do_after_the_end_of_the_data(clf_spec, settings):
    with pytest.raises(NothingToDo, match=r"nothing after 2011-03-30 \(window.data_end\)"):
        ingest(clf_spec, settings, day_interval(clf_spec.data_end + dt.timedelta(days=1)))
    with pytest.raises(NothingToDo, match="ends before the data starts"):
        ingest(clf_spec, settings, day_interval(START - dt.timedelta(days=1)))
    assert NothingToDo.exit_code == 99
    assert not settings.store.exists() or not any(settings.store.rglob("*.parquet"))


def test_an_empty_day_is_written_and_reported(tmp_path, settings):
    spec = load_spec(make_classification_dataset(tmp_path / "d", days=10,
                                                  bad={"day": "2011-03-05", "kind": "empty"}))
    result = ingest(spec, settings, day_interval(dt.date(2011, 3, 6)), window_days=3)
    assert result.empty_days == ["2011-03-05"] and result.rows == 48
    empty = pd.read_parquet(Store(settings.store, spec.name).raw(dt.date(2011, 3, 5)))
    assert len(empty) == 0 and list(empty.columns) == [*spec.column_names, EVENT_TIME]


def test_an_unreadable_source_is_quarantined_and_nothing_is_written(tmp_path, settings):
    spec = load_spec(make_classification_dataset(tmp_path / "d", days=10,
                                                 bad={"day": "2011-03-05", "kind": "unreadable"}))
    with pytest.raises(ValidationFailed) as info:
        ingest(spec, settings, day_interval(dt.date(2011, 3, 5)), window_days=3, attempt="try-1")
    exc = info.value
    assert "expectation `source is readable` failed" in str(exc) and "quarantined" in str(exc)
    store = Store(settings.store, spec.name)
    folder = store.quarantine_dir(dt.date(2011, 3, 5), "try-1")
    assert exc.report == str(folder / "report.html")
    failures = json.loads((folder / "failures.json").read_text())
    assert failures["failures"][0]["expectation"] == "source is readable"
    assert "unreadable as csv" in failures["failures"][0]["observed"]
    assert "source is readable" in (folder / "report.html").read_text()
    assert file_sha256(folder / "synthclass.csv") == file_sha256(spec.source.path())  # evidence kept
    assert not (store.base / "raw").exists() and not (store.base / "validated").exists()


def test_a_missing_source_file_is_rejected_with_the_path(tmp_path, settings):
    spec_path = make_classification_dataset(tmp_path / "d", days=10)
    spec = load_spec(spec_path)
    spec.source.path().unlink()
    with pytest.raises(ValidationFailed, match="does not exist: check `source.path` in the spec"):
        ingest(spec, settings, day_interval(dt.date(2011, 3, 5)), window_days=2)
