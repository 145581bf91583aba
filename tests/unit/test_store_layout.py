"""The store's folder layout and the Parquet files it writes, checked by exact path and file metadata."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow.parquet as pq

from mlcycle.store import Store, write_parquet

DAY = dt.date(2011, 3, 5)


def test_every_location_of_a_pipeline(tmp_path):
    store = Store(tmp_path, "bikeshare")
    base = tmp_path / "bikeshare"
    assert store.landing(DAY) == base / "landing" / "date=2011-03-05" / "data.csv"
    assert store.raw(DAY) == base / "raw" / "date=2011-03-05" / "data.parquet"
    assert store.validated(DAY) == base / "validated" / "date=2011-03-05" / "data.parquet"
    assert store.quarantine_dir(DAY, "try1") == base / "quarantine" / "date=2011-03-05" / "try1"
    assert store.features_dir(DAY) == base / "features" / "end=2011-03-05"
    assert store.validation_report(DAY) == base / "reports" / "validation" / "end=2011-03-05" / "report.html"


def test_quarantining_the_same_attempt_twice_is_harmless(tmp_path):
    store = Store(tmp_path, "p")
    store.raw(DAY).parent.mkdir(parents=True)
    store.raw(DAY).write_bytes(b"partition")
    first = store.quarantine(DAY, "try1", b"partition")  # the exact bytes that were judged
    assert store.quarantine(DAY, "try1", b"partition") == first  # a retry of the same attempt: no error
    assert (first / "data.parquet").read_bytes() == b"partition"
    assert store.raw(DAY).read_bytes() == b"partition", "quarantine copies what was judged; raw stays"


def test_parquet_files_have_no_index_zstd_columns_and_statistics(tmp_path):
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}, index=[7, 8, 9]).iloc[1:]
    target = tmp_path / "data.parquet"
    write_parquet(frame, target)
    assert pq.read_schema(target).pandas_metadata["index_columns"] == []
    assert pq.read_table(target).column_names == ["a", "b"]
    column = pq.ParquetFile(target).metadata.row_group(0).column(0)
    assert column.compression == "ZSTD"
    assert column.is_stats_set and (column.statistics.min, column.statistics.max) == (2, 3)
