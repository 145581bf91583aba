"""The prediction log: every served row, written off the request path as daily Parquet partitions.

Layout: ``$MLCYCLE_STORE/<pipeline>/predictions/date=YYYY-MM-DD/part-<host>-<pid>-<start>-<seq>.parquet``.
A request appends its rows to an in-memory buffer (a list append under a lock); a background thread
writes the buffer every ``flush_rows`` rows or ``flush_seconds`` seconds, and ``close`` (called on a
graceful shutdown, e.g. SIGTERM) writes what is left. Each file is written under a temporary name
and renamed into place, and its name is unique per worker process, so readers never see half a
file and workers never collide. A hard kill (SIGKILL, power loss) loses at most the rows buffered
since the last flush: up to ``flush_rows`` rows or ``flush_seconds`` seconds of traffic per worker.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mlcycle.store import atomic_path

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


class PredictionLog:
    def __init__(
        self,
        root: Path,
        pipeline: str,
        model_name: str,
        model_version: str,
        feature_names: list[str],
        classes: list[Any] | None = None,
        flush_rows: int = 5_000,
        flush_seconds: float = 10.0,
    ):
        self.folder = Path(root) / pipeline / "predictions"
        self.model_name, self.model_version = model_name, model_version
        self.feature_names, self.classes = feature_names, classes
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._pending: list[LoggedRequest] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seq = 0
        self._prefix = f"part-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        self.rows_written = 0
        self.files_written = 0
        self._thread = threading.Thread(target=self._loop, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._pending.append(entry)
            self._pending_rows += len(entry.rows)
            full = self._pending_rows >= self.flush_rows
        if full:
            self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except OSError:
                log.exception("prediction log: writing to %s failed; the rows stay buffered", self.folder)

    def flush(self) -> int:
        """Write everything buffered; return the number of rows written."""
        with self._lock:
            batch, self._pending, self._pending_rows = self._pending, [], 0
        if not batch:
            return 0
        try:
            written = self._write(batch)
        except OSError:
            with self._lock:  # keep the rows for the next attempt, oldest first
                self._pending[:0] = batch
                self._pending_rows += sum(len(b.rows) for b in batch)
            raise
        self.rows_written += written
        return written

    def close(self, timeout: float = 30.0) -> None:
        """Stop the writer and write what is left (graceful shutdown)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.flush()
        log.info(
            "prediction log closed: %d rows in %d files under %s",
            self.rows_written,
            self.files_written,
            self.folder,
        )

    def _write(self, batch: list[LoggedRequest]) -> int:
        by_day: dict[dt.date, list[LoggedRequest]] = {}
        for entry in batch:
            by_day.setdefault(entry.time.date(), []).append(entry)
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
        cols: dict[str, list[Any]] = {
            "request_id": [],
            "row": [],
            "time": [],
            "endpoint": [],
            "model_name": [],
            "model_version": [],
            "latency_ms": [],
        }
        features: dict[str, list[Any]] = {name: [] for name in self.feature_names}
        predictions: list[Any] = []
        probas: dict[str, list[float]] = {f"proba_{c}": [] for c in (self.classes or [])}
        for e in entries:
            n = len(e.rows)
            cols["request_id"] += [e.request_id] * n
            cols["row"] += list(range(n))
            cols["time"] += [e.time] * n
            cols["endpoint"] += [e.endpoint] * n
            cols["model_name"] += [self.model_name] * n
            cols["model_version"] += [self.model_version] * n
            cols["latency_ms"] += [e.latency_ms] * n
            for name, values in features.items():
                values.extend(row.get(name) for row in e.rows)
            predictions.extend(e.predictions)
            if e.probabilities is not None and probas:
                for j, key in enumerate(probas):
                    probas[key].extend(p[j] for p in e.probabilities)
        data: dict[str, Any] = {**cols, **features, "prediction": predictions}
        if probas and len(next(iter(probas.values()))) == len(predictions):
            data.update(probas)
        data["time"] = pa.array(cols["time"], type=pa.timestamp("us", tz="UTC"))
        return pa.table(data)
