"""Source readers: each returns the rows of a time range, with an ``event_time`` column.

A reader is chosen by the spec's ``source.kind``. All of them produce the same frame, so ingest
writes the same raw partition whatever the source was.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

import pandas as pd

from mlcycle.errors import SpecError
from mlcycle.spec import PipelineSpec


class Reader(Protocol):
    def read(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Rows whose ``event_time`` falls in [start, end), sorted by ``event_time``."""
        ...


def reader_for(spec: PipelineSpec) -> Reader:
    kind = spec.source.kind
    if kind == "file":
        from mlcycle.sources.file import FileReader

        return FileReader(spec)
    if kind == "postgres":
        from mlcycle.sources.postgres import PostgresReader

        return PostgresReader(spec)
    if kind == "http":
        from mlcycle.sources.http import HttpReader

        return HttpReader(spec)
    raise SpecError(f"source.kind {kind!r} has no reader")
