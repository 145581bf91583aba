"""Read a local CSV or Parquet file (the embedded default)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pandas as pd

from mlcycle.errors import SourceError
from mlcycle.sources import OUTSIDE_BOUNDS, Selection
from mlcycle.spec import EVENT_TIME, PipelineSpec
from mlcycle.timestamps import OUT_OF_RANGE, UNPARSEABLE, day_start, derive_event_time

log = logging.getLogger(__name__)


def read_table(path: Path, fmt: str) -> pd.DataFrame:
    """Read a whole file, turning every parser error into a SourceError that names the file."""
    if not path.is_file():
        raise SourceError(f"source file {path} does not exist: check `source.path` in the spec")
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "csv":
            frame = pd.read_csv(path)
        else:
            raise SourceError(f"source.format {fmt!r}: use csv or parquet")
    except SourceError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many types for a corrupt file
        raise SourceError(f"source file {path} is unreadable as {fmt}: {type(exc).__name__}: {exc}") from exc
    if frame.empty:
        raise SourceError(
            f"source file {path} has no rows (columns: {', '.join(map(str, frame.columns)) or 'none'}): "
            f"check that the export that writes it finished"
        )
    return frame


def select_range(df: pd.DataFrame, spec: PipelineSpec, start: dt.date, end: dt.date) -> Selection:
    """Add ``event_time``, keep the rows in [start, end) in time order (ties keep file order), and
    count the rows that belong to no day: no timestamp, or one outside the source's bounds."""
    frame = df.copy()
    times = derive_event_time(frame, spec.timestamp)
    frame[EVENT_TIME] = times.values.to_numpy()
    stamp = frame[EVENT_TIME]
    lo, hi = day_start(start, spec.timezone), day_start(end, spec.timezone)  # local calendar days
    outside = (stamp < day_start(spec.data_start, spec.timezone)).to_numpy()
    if spec.data_end is not None:
        outside |= (stamp >= day_start(spec.data_end + dt.timedelta(days=1), spec.timezone)).to_numpy()
    masks = {UNPARSEABLE: times.unparseable, OUT_OF_RANGE: times.out_of_range, OUTSIDE_BOUNDS: outside}
    dropped = {reason: int(mask.sum()) for reason, mask in masks.items()}
    examples = {reason: _examples(df, spec, mask) for reason, mask in masks.items() if dropped[reason]}
    mask = (stamp >= lo) & (stamp < hi)
    selected = frame.loc[mask].sort_values(EVENT_TIME, kind="stable").reset_index(drop=True)
    if any(dropped.values()):
        log.warning(
            "%d of %d source rows belong to no day and are dropped: %s",
            sum(dropped.values()),
            len(df),
            ", ".join(f"{n} {reason}" for reason, n in dropped.items() if n),
        )
    return Selection(frame=selected, rows_read=len(df), dropped=dropped, examples=examples)


def _examples(df: pd.DataFrame, spec: PipelineSpec, mask) -> list[str]:
    """A few dropped rows as the source had them (row number and the timestamp columns), for the report."""
    ts = spec.timestamp
    columns = [c for c in (ts.column, ts.day_column, ts.hour_column) if c and c in df.columns]
    rows = df.loc[mask, columns].head(5)
    return [f"row {i}: " + ", ".join(f"{c}={v!r}" for c, v in row.items()) for i, row in rows.iterrows()]


class FileReader:
    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self.path = spec.source.path()
        self.format = str(spec.source.options.get("format") or self.path.suffix.lstrip(".") or "csv")
        self._frame: pd.DataFrame | None = None

    def read(self, start: dt.date, end: dt.date) -> Selection:
        if self._frame is None:
            log.info("reading %s (%s)", self.path, self.format)
            self._frame = read_table(self.path, self.format)
        return select_range(self._frame, self.spec, start, end)
