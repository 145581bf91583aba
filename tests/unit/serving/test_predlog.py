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


def test_a_killed_server_loses_only_its_last_hand_off(tmp_path):
    """SIGKILL of the server worker: the writer writes every row handed over, then exits."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal, time
        from tests.unit.serving.test_predlog import FEATURES, _entry
        from mlcycle.serving.predlog import PredictionLog
        log = PredictionLog({str(tmp_path)!r}, "bikeshare", "m", "1", FEATURES, flush_rows=10_000,
                            flush_seconds=3600, handoff_seconds=0.05)
        for i in range(100):
            log.append(_entry(i))
        time.sleep(1.0)  # twenty hand-off intervals
        print(log._writer.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -9, done.stderr
    writer_pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 20
    while _alive(writer_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(writer_pid), "the writer outlived its server"
    assert sum(pq.read_table(f).num_rows for f in _files(tmp_path)) == 200


def test_the_writer_ignores_a_signal_to_the_process_group_and_is_replaced_when_it_dies(tmp_path, caplog):
    import os
    import signal

    log = PredictionLog(tmp_path, "bikeshare", "m", "1", FEATURES, flush_rows=10_000, flush_seconds=3600)
    log.append(_entry(1))
    assert log.flush() == 2  # the writer is up
    os.kill(log._writer.pid, signal.SIGTERM)  # a stray signal: the server's shutdown decides
    log.append(_entry(1))
    assert log.flush() == 2 and log._writer.poll() is None

    log._writer.kill()
    log._writer.wait()
    log.append(_entry(2))
    deadline = time.monotonic() + 10
    while log._writer.poll() is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # the hand-off thread notices and starts a new writer
    log.append(_entry(3))
    log.close()
    assert "the prediction log writer exited" in caplog.text
    assert sum(pq.read_table(f).num_rows for f in _files(tmp_path)) >= 6


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_writer_yields_the_cores_to_the_server(tmp_path):
    """Parquet encoding is background work: on a busy machine the server's requests go first."""
    import os

    log = PredictionLog(tmp_path, "bikeshare", "m", "1", FEATURES, flush_rows=10_000, flush_seconds=3600)
    try:
        log.append(_entry(0))
        log.flush()  # the writer has answered: it runs its loop, at its own priority
        server = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, log._writer.pid) == min(server + 10, 19)
    finally:
        log.close()


def test_the_log_goes_to_a_store_in_object_storage(s3_env, monkeypatch):
    """MLCYCLE_STORE=s3://...: the writer process uploads whole Parquet files that monitoring reads."""
    import uuid

    from mlcycle.monitoring.data import current_data
    from mlcycle.spec import load_spec
    from mlcycle.store import Store, read_parquet
    from mlcycle.storepath import RemotePath, store_root

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)  # the writer process inherits them
    root = store_root(f"s3://{s3_env['MLCYCLE_TEST_S3_BUCKET']}/tests/{uuid.uuid4().hex}")
    assert isinstance(root, RemotePath)
    day = dt.datetime(2011, 7, 1, 12, tzinfo=dt.UTC)
    spec = load_spec("bikeshare")
    row = {name: 1 for name in spec.feature_names}
    log = PredictionLog(
        root, "bikeshare", "bikeshare", "3", spec.feature_names, flush_rows=10_000, flush_seconds=3600
    )
    for i in range(30):
        log.append(
            LoggedRequest(
                request_id=f"r{i}",
                time=day,
                endpoint="predict",
                rows=[row, row],
                predictions=[1.0, 2.0],
                probabilities=None,
                latency_ms=0.4,
            )
        )
    log.close()
    files = _files(root)
    assert len(files) == 1 and str(files[0]).startswith("s3://")
    assert read_parquet(files[0]).shape[0] == 60
    current = current_data(spec, Store(root, "bikeshare"), day.date(), day.date() + dt.timedelta(days=1))
    assert len(current.frame) == 60 and set(current.frame["prediction"]) == {1.0, 2.0}
