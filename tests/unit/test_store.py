"""The partition store: layout, deterministic parquet, atomic writes, versions, pointers, lineage."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pandas as pd
import pytest

from mlcycle.store import (
    PARTITION_FILE,
    TEMP_SUFFIX,
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
    return pd.DataFrame(
        {
            "x": [i / 10 for i in range(n)],
            "c": ["a", "b", "c"] * (n // 3),
            "event_time": pd.date_range("2011-03-05", periods=n, freq="h", tz="UTC").astype(
                "datetime64[us, UTC]"
            ),
        }
    )


def _temp_files(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def test_days_is_half_open():
    assert days(dt.date(2011, 1, 30), dt.date(2011, 2, 2)) == [
        dt.date(2011, 1, 30),
        dt.date(2011, 1, 31),
        dt.date(2011, 2, 1),
    ]
    assert days(DAY, DAY) == []


def test_layout(tmp_path):
    store = Store(tmp_path, "demo")
    assert store.raw(DAY) == tmp_path / "demo" / "raw" / "date=2011-03-05" / PARTITION_FILE
    assert store.validated_dir(DAY) == tmp_path / "demo" / "validated" / "date=2011-03-05"
    assert store.validated_version_path(DAY, "ab" * 32) == store.validated_dir(DAY) / f"{'ab' * 8}.parquet"
    assert not store.validated(DAY).exists() and store.current_validated(DAY) is None
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


def test_every_validated_version_is_kept_and_the_pointer_names_the_current(tmp_path):
    store = Store(tmp_path, "demo")
    sha = write_parquet(_frame(), store.raw(DAY))
    published = store.publish(DAY)
    assert published == store.validated(DAY) and file_sha256(published) == sha
    assert published.name == f"{sha[:16]}.parquet" and store.current_validated(DAY).rows == 24
    assert store.raw(DAY).exists()  # publish copies

    second = write_parquet(_frame(12), store.raw(DAY))
    assert store.publish(DAY) == store.validated(DAY) != published
    assert file_sha256(published) == sha and file_sha256(store.validated(DAY)) == second  # both kept
    assert store.current_validated(DAY).rows == 12

    data = store.raw(DAY).read_bytes()
    folder = store.quarantine(DAY, "attempt-1", data)
    assert folder == store.quarantine_dir(DAY, "attempt-1")
    assert (folder / PARTITION_FILE).read_bytes() == data  # the exact bytes judged
    # Quarantining with no batch still gives a folder for the failure report.
    assert store.quarantine(dt.date(2011, 3, 6), "attempt-1").is_dir()
    assert _temp_files(tmp_path) == []


def test_store_files_get_the_process_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text("x", tmp_path / "a.txt")
        write_parquet(_frame(), tmp_path / "b.parquet")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.parquet"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name  # mkstemp would give 0600


def test_stale_temporaries_are_removed_but_a_live_writers_are_not(tmp_path):
    store = Store(tmp_path, "demo")
    write_parquet(_frame(), store.raw(DAY))
    stale = store.raw(DAY).parent / f".data.parquet.dead{TEMP_SUFFIX}"
    stale.write_bytes(b"half")  # what a SIGKILLed writer leaves: a temporary nobody holds a lock on
    stale_dir = store.base / "features" / "end=2011-03-05" / f".build.dead{TEMP_SUFFIX}"
    stale_dir.mkdir(parents=True)
    (stale_dir / "train.parquet").write_bytes(b"half")
    foreign = store.raw(DAY).parent / ".data.parquet.x.tmp"  # not the store's own naming: left alone
    foreign.write_bytes(b"x")
    with atomic_path(store.raw(DAY)) as live:
        live.write_bytes(b"being written")
        assert store.remove_stale_temporaries() == 2
        assert live.read_bytes() == b"being written"  # a live writer keeps its file
    assert not stale.exists() and not stale_dir.exists() and foreign.exists()
    assert store.raw(DAY).read_bytes() == b"being written"


def test_a_feature_table_is_published_as_one_unit(tmp_path):
    store = Store(tmp_path, "demo")
    with store.new_features(DAY) as folder:
        write_text("1", folder / "train.parquet")
        write_text("1", folder / "manifest.json")
    first = store.features_dir(DAY)
    assert first.parent == tmp_path / "demo" / "features" / "end=2011-03-05"
    with pytest.raises(RuntimeError), store.new_features(DAY) as folder:
        write_text("2", folder / "train.parquet")
        raise RuntimeError("killed between the two files")
    assert store.features_dir(DAY) == first and (first / "train.parquet").read_text() == "1"
    with store.new_features(DAY) as folder:
        write_text("2", folder / "train.parquet")
        write_text("2", folder / "manifest.json")
    assert store.features_dir(DAY) != first and (store.features_dir(DAY) / "manifest.json").read_text() == "2"
    assert _temp_files(tmp_path) == []
