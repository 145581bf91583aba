"""The prediction log: every served row, written off the request path as daily Parquet partitions.

Layout: ``$MLCYCLE_STORE/<pipeline>/predictions/date=YYYY-MM-DD/part-<host>-<pid>-<start>-<seq>.parquet``.

Two halves, so that building Arrow tables and writing Parquet never holds the server's GIL:

- ``PredictionLog``, in the server worker: a request appends its rows to a list (under a lock,
  about a microsecond); a hand-off thread ships what was appended, every ``handoff_seconds`` (or
  sooner when ``handoff_rows`` are waiting), to the writer as one pickled frame on a pipe.
- the writer, a child process per worker (``python -m mlcycle.serving.predlog``): buffers the rows
  and writes them every ``flush_rows`` rows or ``flush_seconds`` seconds, on ``flush`` and on
  ``close`` (a graceful shutdown, e.g. SIGTERM). It ignores SIGINT and SIGTERM and stops when its
  pipe closes, so even a worker that is killed outright (SIGKILL) loses only the rows of its last
  hand-off interval: the writer writes everything it received, then exits.

Each file is written under a temporary name and renamed into place, and its name is unique per
worker process, so readers never see half a file and workers never collide. A writer that dies is
started again, and the rows it held are counted as lost in the log.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlcycle.store import atomic_path
from mlcycle.storepath import StorePath, store_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedRequest:
    """One request's rows, as the server hands them over (no per-row work on the request path)."""

    request_id: str
    time: dt.datetime
    endpoint: str
    rows: list[dict[str, Any]]
    predictions: list[Any]
    probabilities: list[list[float]] | None
    latency_ms: float
    #: The day the rows belong to, when the client states it (a replay of past traffic sends
    #: ``X-Event-Date``); otherwise the day the request arrived.
    day: dt.date | None = None


class PredictionLog:
    """The server side of the log: ``append`` on the request path, a hand-off thread, a writer process."""

    def __init__(
        self,
        root: StorePath,
        pipeline: str,
        model_name: str,
        model_version: str,
        feature_names: list[str],
        classes: list[Any] | None = None,
        flush_rows: int = 5_000,
        flush_seconds: float = 10.0,
        handoff_seconds: float = 0.05,
        handoff_rows: int = 1_000,
    ):
        self.folder = store_root(root) / pipeline / "predictions"
        self._config = {
            "root": str(root),
            "pipeline": pipeline,
            "model_name": model_name,
            "model_version": model_version,
            "feature_names": list(feature_names),
            "classes": list(classes) if classes is not None else None,
            "flush_rows": flush_rows,
            "flush_seconds": flush_seconds,
        }
        self.handoff_seconds, self.handoff_rows = handoff_seconds, handoff_rows
        self._pending: list[tuple] = []
        self._pending_rows = 0
        self._lock = threading.Lock()  # the pending list
        self._pipe_lock = threading.Lock()  # the writer's pipe: one frame (and its reply) at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.rows_written = 0
        self.files_written = 0
        self._writer = self._start_writer()
        self._thread = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
        self._thread.start()

    def _start_writer(self) -> subprocess.Popen:
        package_root = str(Path(__file__).resolve().parents[2])  # where `mlcycle` is importable from
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        }
        # A new name prefix per writer: a replacement never overwrites the files of the one before.
        config = {**self._config, "prefix": f"part-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"}
        return subprocess.Popen(
            [sys.executable, "-m", "mlcycle.serving.predlog", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            env=env,
            start_new_session=True,
        )  # Ctrl-C to the server's group is the server's

    def append(self, entry: LoggedRequest) -> None:
        item = (
            entry.request_id,
            entry.time,
            entry.endpoint,
            entry.rows,
            entry.predictions,
            entry.probabilities,
            entry.latency_ms,
            entry.day,
        )
        with self._lock:
            self._pending.append(item)
            self._pending_rows += len(entry.rows)
            full = self._pending_rows >= self.handoff_rows
        if full:
            self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.handoff_seconds)
            self._wake.clear()
            try:
                self._ship()
            except OSError:
                log.exception("prediction log: the writer process is gone; starting a new one")

    def _ship(self, command: str | None = None) -> dict[str, Any] | None:
        """Hand the pending rows (and a command: flush, close) to the writer; return its reply."""
        with self._pipe_lock:
            with self._lock:
                batch, self._pending, self._pending_rows = self._pending, [], 0
            if not batch and command is None:
                return None
            try:
                if batch:
                    _send(self._writer.stdin, ("rows", batch))
                if command is None:
                    return None
                _send(self._writer.stdin, (command, None))
                reply = json.loads(self._writer.stdout.readline() or "null")
            except (OSError, ValueError):
                lost = sum(len(item[3]) for item in batch)
                code = self._writer.poll()
                self._writer = self._start_writer()
                raise OSError(
                    f"the prediction log writer exited (code {code}); {lost} row(s) of this hand-off "
                    "and those it held are lost"
                ) from None
            if reply is None:
                raise OSError("the prediction log writer closed its pipe without a reply")
            self.rows_written, self.files_written = reply["rows_written"], reply["files_written"]
            return reply

    def flush(self) -> int:
        """Write everything appended so far; return the number of rows written by this flush."""
        before = self.rows_written
        self._ship("flush")
        return self.rows_written - before

    def close(self, timeout: float = 30.0) -> None:
        """Stop the hand-off, let the writer write what is left and exit (graceful shutdown)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        try:
            self._ship("close")
        finally:
            with self._pipe_lock:
                for stream in (self._writer.stdin, self._writer.stdout):
                    stream.close()
                try:
                    self._writer.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._writer.kill()
        log.info(
            "prediction log closed: %d rows in %d files under %s",
            self.rows_written,
            self.files_written,
            self.folder,
        )


def _send(stream: Any, message: tuple) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<I", len(data)) + data)
    stream.flush()


class _Writer:
    """The writer process: buffers what the server hands over, writes daily Parquet files."""

    def __init__(
        self,
        root: str,
        pipeline: str,
        model_name: str,
        model_version: str,
        feature_names: list[str],
        classes: list[Any] | None,
        flush_rows: int,
        flush_seconds: float,
        prefix: str,
    ):
        self.folder = store_root(root) / pipeline / "predictions"
        self.model_name, self.model_version = model_name, model_version
        self.feature_names, self.classes = feature_names, classes
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._prefix = prefix
        self._pending: list[LoggedRequest] = []
        self._pending_rows = 0
        self._seq = 0
        self.rows_written = 0
        self.files_written = 0

    def add(self, batch: list[tuple]) -> None:
        for item in batch:
            self._pending.append(LoggedRequest(*item))
            self._pending_rows += len(item[3])

    def flush(self) -> None:
        batch, self._pending, self._pending_rows = self._pending, [], 0
        if batch:
            try:
                self.rows_written += self._write(batch)
            except OSError:
                log.exception("prediction log: writing to %s failed; the rows stay buffered", self.folder)
                self._pending[:0] = batch
                self._pending_rows += sum(len(b.rows) for b in batch)

    def counts(self) -> dict[str, int]:
        return {"rows_written": self.rows_written, "files_written": self.files_written}

    def _write(self, batch: list[LoggedRequest]) -> int:
        by_day: dict[dt.date, list[LoggedRequest]] = {}
        for entry in batch:
            by_day.setdefault(entry.day or entry.time.date(), []).append(entry)
        total = 0
        for day, entries in sorted(by_day.items()):
            table = self._table(entries)
            self._seq += 1
            target = self.folder / f"date={day.isoformat()}" / f"{self._prefix}-{self._seq:06d}.parquet"
            with atomic_path(target) as tmp:
                pq.write_table(table, tmp, compression="zstd")
            self.files_written += 1
            total += table.num_rows
        return total

    def _table(self, entries: list[LoggedRequest]) -> pa.Table:
        """One table of the entries' rows: whole-batch comprehensions, constant columns by repeat
        (a per-request loop of list concatenations cost most of the writer's time on one-row traffic)."""
        rows = [row for e in entries for row in e.rows]
        total = len(rows)

        def per_row(values: list[Any]) -> list[Any]:  # a request's value once per row it holds
            return [v for e, v in zip(entries, values, strict=True) for _ in e.rows]

        data: dict[str, Any] = {
            "request_id": per_row([e.request_id for e in entries]),
            "row": [i for e in entries for i in range(len(e.rows))],
            "time": pa.array(per_row([e.time for e in entries]), type=pa.timestamp("us", tz="UTC")),
            "endpoint": per_row([e.endpoint for e in entries]),
            "model_name": pa.repeat(pa.scalar(self.model_name, pa.string()), total),
            "model_version": pa.repeat(pa.scalar(self.model_version, pa.string()), total),
            "latency_ms": pa.array(per_row([e.latency_ms for e in entries]), type=pa.float64()),
        }
        for name in self.feature_names:
            data[name] = [row.get(name) for row in rows]
        data["prediction"] = [p for e in entries for p in e.predictions]
        if self.classes and all(e.probabilities is not None for e in entries):
            probas = [p for e in entries for p in e.probabilities]
            for j, c in enumerate(self.classes):
                data[f"proba_{c}"] = [p[j] for p in probas]
        return pa.table(data)


def _serve(writer: _Writer, stdin: Any, stdout: Any) -> None:
    """Read frames until the pipe closes or ``close`` arrives; flush by rows and by time meanwhile."""
    fd = stdin.fileno()
    buffer = bytearray()
    deadline = time.monotonic() + writer.flush_seconds
    while True:
        timeout = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            writer.flush()
            deadline = time.monotonic() + writer.flush_seconds
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:  # the server is gone (even killed): write what it handed over, and stop
            writer.flush()
            return
        buffer += chunk
        while len(buffer) >= 4:
            size = struct.unpack_from("<I", buffer)[0]
            if len(buffer) < 4 + size:
                break
            kind, payload = pickle.loads(bytes(buffer[4 : 4 + size]))
            del buffer[: 4 + size]
            if kind == "rows":
                writer.add(payload)
                if writer._pending_rows >= writer.flush_rows:
                    writer.flush()
                    deadline = time.monotonic() + writer.flush_seconds
                continue
            writer.flush()
            deadline = time.monotonic() + writer.flush_seconds
            stdout.write(json.dumps(writer.counts()) + "\n")
            stdout.flush()
            if kind == "close":
                return


def main() -> None:
    # The server's own shutdown decides when the log stops: a signal to the process group must not
    # stop the writer before the server has handed over its last rows.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Background work: when cores are scarce, the server's requests go first and the log catches up.
    os.nice(int(os.environ.get("MLCYCLE_SERVING_LOG_NICE", "10")))
    writer = _Writer(**json.loads(sys.argv[1]))
    _serve(writer, sys.stdin.buffer, sys.stdout)


if __name__ == "__main__":
    main()
