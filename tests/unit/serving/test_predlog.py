"""The prediction log writer: flushed by rows, by time and on close; atomic, unique files; typed columns."""

from __future__ import annotations

import datetime as dt
import time

import pyarrow.parquet as pq

from mlcycle.serving.predlog import LoggedRequest, PredictionLog

FEATURES = ["hr", "temp", "mnth"]


def _entry(i: int, when: dt.datetime | None = None, n: int = 2) -> LoggedRequest:
    rows = [{"hr": i % 24, "temp": 0.5, "mnth": "Jan"} for _ in range(n)]
    return LoggedRequest(
        request_id=f"r{i}",
        time=when or dt.datetime.now(dt.UTC),
        endpoint="predict",
        rows=rows,
        predictions=[float(i)] * n,
        probabilities=None,
        latency_ms=0.4,
    )


def _files(root):
    return sorted(root.glob("bikeshare/predictions/date=*/part-*.parquet"))


def test_close_writes_everything_buffered(tmp_path):
    log = PredictionLog(
        tmp_path, "bikeshare", "bikeshare", "3", FEATURES, flush_rows=10_000, flush_seconds=3600
    )
    for i in range(50):
        log.append(_entry(i))
    assert _files(tmp_path) == []  # nothing written on the request path
    log.close()
    table = pq.read_table(_files(tmp_path)[0])
    assert table.num_rows == 100 and set(table.column("model_version").to_pylist()) == {"3"}
    assert table.schema.field("temp").type == "double" and table.schema.field("mnth").type == "string"
    assert str(table.schema.field("time").type) == "timestamp[us, tz=UTC]"
    assert table.column("row").to_pylist()[:2] == [0, 1]
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"


def test_flushes_when_the_buffer_is_full_and_when_time_is_up(tmp_path):
    by_rows = PredictionLog(
        tmp_path / "a", "bikeshare", "m", "1", FEATURES, flush_rows=10, flush_seconds=3600
    )
    for i in range(6):
        by_rows.append(_entry(i))
    deadline = time.monotonic() + 10
    while not _files(tmp_path / "a") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _files(tmp_path / "a"), "a full buffer was not written"
    by_rows.close()

    by_time = PredictionLog(
        tmp_path / "b", "bikeshare", "m", "1", FEATURES, flush_rows=10_000, flush_seconds=0.2
    )
    by_time.append(_entry(1))
    deadline = time.monotonic() + 10
    while not _files(tmp_path / "b") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _files(tmp_path / "b"), "the timer did not flush"
    by_time.close()


def test_rows_go_to_the_partition_of_their_day_and_writers_never_collide(tmp_path):
    day1 = dt.datetime(2026, 1, 1, 23, 59, tzinfo=dt.UTC)
    day2 = dt.datetime(2026, 1, 2, 0, 1, tzinfo=dt.UTC)
    logs = [
        PredictionLog(tmp_path, "bikeshare", "m", "1", FEATURES, flush_rows=10_000, flush_seconds=3600)
        for _ in range(2)
    ]
    for log in logs:
        log.append(_entry(1, day1))
        log.append(_entry(2, day2, n=3))
        log.close()
    files = _files(tmp_path)
    assert len(files) == 4 and len({f.name for f in files}) == 4
    assert {f.parent.name for f in files} == {"date=2026-01-01", "date=2026-01-02"}
    assert sum(pq.read_table(f).num_rows for f in files) == 2 * (2 + 3)


def test_classification_probabilities_get_a_column_per_class(tmp_path):
    log = PredictionLog(
        tmp_path, "bikeshare", "m", "1", FEATURES, classes=[0, 1], flush_rows=10_000, flush_seconds=3600
    )
    entry = _entry(1)
    log.append(
        LoggedRequest(**{**entry.__dict__, "predictions": [1, 0], "probabilities": [[0.2, 0.8], [0.9, 0.1]]})
    )
    log.close()
    table = pq.read_table(_files(tmp_path)[0])
    assert table.column("proba_1").to_pylist() == [0.8, 0.1] and table.column("prediction").to_pylist() == [
        1,
        0,
    ]
