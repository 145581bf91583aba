"""Read a PostgreSQL table through its landing files.

The step package does not talk to Airflow connections: the DAG's ``extract`` task
(``dags/pipeline_support/extract.py``) streams each day of the window out of the table with
``COPY ... TO STDOUT WITH CSV HEADER`` into ``<store>/<pipeline>/landing/date=YYYY-MM-DD/data.csv``.
This reader parses those files as one CSV (so types are inferred over the whole window, as for a
file source), drops the table's own timestamp column unless the spec lists it, and selects the
range exactly as the file source does: the same data gives byte-identical raw partitions.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from pathlib import Path

import pandas as pd

from mlcycle.errors import SourceError
from mlcycle.settings import Settings
from mlcycle.sources.base import Selection
from mlcycle.sources.file import select_range
from mlcycle.spec import PipelineSpec
from mlcycle.store import Store, days

log = logging.getLogger(__name__)

class PostgresReader:
    def __init__(self, spec: PipelineSpec, store: Path | None = None):
        self.spec = spec
        self.table = str(spec.source.options.get("table"))
        self.timestamp_column = str(spec.source.options.get("timestamp_column") or "")
        self.store = Store(store or Settings.from_env().store, spec.name)
        self.landing = self.store.base / "landing"

    def landing_file(self, day: dt.date) -> Path:
        return self.store.landing(day)

    def _window_csv(self, start: dt.date, end: dt.date) -> bytes:
        """The landing files of [start, end) as one CSV: the first header, then every file's rows."""
        header: bytes | None = None
        body = io.BytesIO()
        for day in days(start, end):
            path = self.landing_file(day)
            if not path.is_file():
                raise SourceError(
                    f"no landing file {path} for table {self.table}: the DAG's `extract` task writes it from "
                    f"connection `{self.spec.source.options.get('conn_id')}`; run the `extract` task for this "
                    f"interval (or the whole DAG) before `ingest`")
            with path.open("rb") as fh:
                first = fh.readline()
                if header is None:
                    header = first
                    body.write(first)
                elif first != header:
                    raise SourceError(f"landing file {path} has columns {first.decode().strip()!r}, but "
                                      f"earlier days have {header.decode().strip()!r}: re-run `extract`")
                body.write(fh.read())
        return body.getvalue()

    def read(self, start: dt.date, end: dt.date) -> Selection:
        if end <= start:
            raise SourceError(f"empty range [{start}, {end}) for table {self.table}")
        log.info("reading landing files of table %s, %s to %s, from %s", self.table, start, end, self.landing)
        try:
            frame = pd.read_csv(io.BytesIO(self._window_csv(start, end)))
        except (ValueError, pd.errors.ParserError) as exc:
            raise SourceError(f"landing files of table {self.table} under {self.landing} are unreadable as "
                              f"CSV: {exc}; re-run `extract`") from exc
        if self.timestamp_column and self.timestamp_column not in self.spec.column_names:
            frame = frame.drop(columns=[self.timestamp_column], errors="ignore")
        for column in self.spec.columns:  # a window of whole-valued doubles must not turn into integers
            if column.type == "numeric" and column.name in frame and pd.api.types.is_integer_dtype(frame[column.name]):
                frame[column.name] = frame[column.name].astype("float64")
        return select_range(frame, self.spec, start, end)
