"""The partition store: layout, deterministic parquet, atomic writes, publish and quarantine."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from mlcycle.store import (
    PARTITION_FILE,
    Store,
    atomic_path,
    days,
    file_sha256,
    write_json,
    write_parquet,
    write_text,
)

DAY = dt.date(2011, 3, 5)


def _frame(n: int = 24) -> pd.DataFrame:
    return pd.DataFrame({
        "x": [i / 10 for i in range(n)],
        "c": ["a", "b", "c"] * (n // 3),
        "event_time": pd.date_range("2011-03-05", periods=n, freq="h", tz="UTC").astype("datetime64[us, UTC]"),
    })


def _temp_files(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_days_is_half_open():
    assert days(dt.date(2011, 1, 30), dt.date(2011, 2, 2)) == [
        dt.date(2011, 1, 30), dt.date(2011, 1, 31), dt.date(2011, 2, 1)]
    assert days(DAY, DAY) == []


def test_layout(tmp_path):
    store = Store(tmp_path, "demo")
    assert store.raw(DAY) == tmp_path / "demo" / "raw" / "date=2011-03-05" / PARTITION_FILE
    assert store.validated(DAY) == tmp_path / "demo" / "validated" / "date=2011-03-05" / PARTITION_FILE
    assert store.quarantine_dir(DAY, "try1") == tmp_path / "demo" / "quarantine" / "date=2011-03-05" / "try1"
    assert store.features_dir(DAY) == tmp_path / "demo" / "features" / "end=2011-03-05"
    assert store.validation_report(DAY).parts[-3:] == ("validation", "end=2011-03-05", "report.html")


def test_parquet_writes_are_deterministic(tmp_path):
    first = write_parquet(_frame(), tmp_path / "a" / "data.parquet")
    second = write_parquet(_frame(), tmp_path / "b" / "data.parquet")
    assert first == second == file_sha256(tmp_path / "a" / "data.parquet")
    # Rewriting in place gives the same bytes, and a different frame gives different ones.
    assert write_parquet(_frame(), tmp_path / "a" / "data.parquet") == first
    assert write_parquet(_frame(12), tmp_path / "c" / "data.parquet") != first
    back = pd.read_parquet(tmp_path / "a" / "data.parquet")
    pd.testing.assert_frame_equal(back, _frame())
    assert _temp_files(tmp_path) == []


def test_atomic_path_renames_into_place_only_on_success(tmp_path):
    target = tmp_path / "deep" / "file.txt"
    write_text("old", target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-written")
        assert tmp.parent == target.parent and tmp != target
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"  # the previous content survives
    assert _temp_files(tmp_path) == []  # and no temporary file is left behind

    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # invisible until the block succeeds
    assert target.read_text() == "new"
    assert _temp_files(tmp_path) == []


def test_a_failing_parquet_write_leaves_nothing(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    target = tmp_path / "raw" / "data.parquet"
    with pytest.raises(OSError, match="disk full"):
        write_parquet(_frame(), target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_write_json_is_sorted_and_readable(tmp_path):
    write_json({"b": 1, "a": DAY}, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == '{\n  "a": "2011-03-05",\n  "b": 1\n}\n'


def test_publish_copies_bytes_and_quarantine_moves_them(tmp_path):
    store = Store(tmp_path, "demo")
    sha = write_parquet(_frame(), store.raw(DAY))
    published = store.publish(DAY)
    assert published == store.validated(DAY) and file_sha256(published) == sha
    assert store.raw(DAY).exists()  # publish copies

    folder = store.quarantine(DAY, "attempt-1")
    assert folder == store.quarantine_dir(DAY, "attempt-1")
    assert not store.raw(DAY).exists()  # quarantine moves
    assert file_sha256(folder / PARTITION_FILE) == sha
    # Quarantining a day without a raw partition still gives a folder for the failure report.
    assert store.quarantine(dt.date(2011, 3, 6), "attempt-1").is_dir()
    assert _temp_files(tmp_path) == []
