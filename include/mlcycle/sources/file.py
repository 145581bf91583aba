"""Read a local CSV or Parquet file (the embedded default)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pandas as pd

from mlcycle.errors import SourceError
from mlcycle.spec import EVENT_TIME, PipelineSpec
from mlcycle.timestamps import day_start, derive_event_time

log = logging.getLogger(__name__)


def read_table(path: Path, fmt: str) -> pd.DataFrame:
    """Read a whole file, turning every parser error into a SourceError that names the file."""
    if not path.is_file():
        raise SourceError(f"source file {path} does not exist: check `source.path` in the spec")
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "csv":
            return pd.read_csv(path)
    except Exception as exc:  # pandas and pyarrow raise many types for a corrupt file
        raise SourceError(f"source file {path} is unreadable as {fmt}: {type(exc).__name__}: {exc}") from exc
    raise SourceError(f"source.format {fmt!r}: use csv or parquet")


def select_range(df: pd.DataFrame, spec: PipelineSpec, start: dt.date, end: dt.date) -> pd.DataFrame:
    """Add ``event_time`` and keep the rows in [start, end), in time order (ties keep file order)."""
    frame = df.copy()
    frame[EVENT_TIME] = derive_event_time(frame, spec.timestamp).to_numpy()
    lo, hi = day_start(start, spec.timezone), day_start(end, spec.timezone)  # local calendar days
    mask = (frame[EVENT_TIME] >= lo) & (frame[EVENT_TIME] < hi)
    return frame.loc[mask].sort_values(EVENT_TIME, kind="stable").reset_index(drop=True)


class FileReader:
    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self.path = spec.source.path()
        self.format = str(spec.source.options.get("format") or self.path.suffix.lstrip(".") or "csv")
        self._frame: pd.DataFrame | None = None

    def read(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        if self._frame is None:
            log.info("reading %s (%s)", self.path, self.format)
            self._frame = read_table(self.path, self.format)
        return select_range(self._frame, self.spec, start, end)
