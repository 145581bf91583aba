"""Read a CSV or Parquet file: on a disk (the embedded default) or in object storage (``s3://``).

A CSV file is read whole (once per reader). A Parquet file is read column-wise: its timestamps
first, then only the row groups and columns the window needs (``read_parquet_window``); in object
storage through pyarrow's S3 file, which fetches only the footer and those byte ranges. An object
is read with the store's keys (``AWS_*``, from the Airflow connection under Airflow).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mlcycle.errors import SourceError
from mlcycle.sources.base import OUTSIDE_BOUNDS, Selection
from mlcycle.spec import EVENT_TIME, PipelineSpec
from mlcycle.storepath import StorePath, is_remote, parquet_source
from mlcycle.timestamps import OUT_OF_RANGE, UNPARSEABLE, day_start, derive_event_time, local_days

log = logging.getLogger(__name__)


def read_table(path: StorePath, fmt: str) -> pd.DataFrame:
    """Read a whole file, turning every parser error into a SourceError that names the file."""
    if not path.is_file():
        raise SourceError(f"source file {path} does not exist: check `source.path` in the spec")
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(parquet_source(path))
        elif fmt == "csv":
            frame = pd.read_csv(io.BytesIO(path.read_bytes()) if is_remote(path) else path)
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


def _window_masks(
    ts_frame: pd.DataFrame, spec: PipelineSpec, start: dt.date, end: dt.date
) -> tuple[pd.Series, np.ndarray, dict[str, int], dict[str, list[str]]]:
    """Each row's ``event_time``, which rows fall in [start, end), and the rows that belong to no day
    (no timestamp, or one outside the source's bounds) counted by reason, with a few examples."""
    times = derive_event_time(ts_frame, spec.timestamp)
    stamp = times.values
    lo, hi = day_start(start, spec.timezone), day_start(end, spec.timezone)  # local calendar days
    outside = (stamp < day_start(spec.data_start, spec.timezone)).to_numpy()
    if spec.data_end is not None:
        outside |= (stamp >= day_start(spec.data_end + dt.timedelta(days=1), spec.timezone)).to_numpy()
    masks = {UNPARSEABLE: times.unparseable, OUT_OF_RANGE: times.out_of_range, OUTSIDE_BOUNDS: outside}
    dropped = {reason: int(mask.sum()) for reason, mask in masks.items()}
    examples = {reason: _examples(ts_frame, spec, mask) for reason, mask in masks.items() if dropped[reason]}
    if any(dropped.values()):
        log.warning(
            "%d of %d source rows belong to no day and are dropped: %s",
            sum(dropped.values()),
            len(ts_frame),
            ", ".join(f"{n} {reason}" for reason, n in dropped.items() if n),
        )
    return stamp, ((stamp >= lo) & (stamp < hi)).to_numpy(), dropped, examples


def select_range(df: pd.DataFrame, spec: PipelineSpec, start: dt.date, end: dt.date) -> Selection:
    """Add ``event_time``, keep the rows in [start, end) in time order (ties keep file order), and
    count the rows that belong to no day: no timestamp, or one outside the source's bounds."""
    stamp, mask, dropped, examples = _window_masks(df, spec, start, end)
    frame = df.loc[mask].copy()
    frame[EVENT_TIME] = stamp[mask].array
    selected = frame.sort_values(EVENT_TIME, kind="stable").reset_index(drop=True)
    return Selection(frame=selected, rows_read=len(df), dropped=dropped, examples=examples)


def _timestamp_columns(spec: PipelineSpec) -> list[str]:
    ts = spec.timestamp
    return [c for c in (ts.column, ts.day_column, ts.hour_column) if c]


def source_columns(spec: PipelineSpec, available: list[str]) -> list[str]:
    """The columns of ``available`` that ingest needs, in the source's order: the spec's columns, the
    timestamp's, and those the derivations and filters read. Every column when there is a
    ``transform`` (a function may read any)."""
    rules = spec.derivations
    if rules.transform:
        return list(available)
    derived = {name for name, _ in rules.derive}
    wanted = {c for c in spec.column_names if c not in derived} | set(_timestamp_columns(spec))
    wanted |= {n for _, e in rules.derive for n in e.names} | {n for e in rules.filters for n in e.names}
    return [c for c in available if c in wanted]


def read_parquet_window(spec: PipelineSpec, path: StorePath, start: dt.date, end: dt.date) -> Selection:
    """The rows of [start, end) of a Parquet file, without reading the rest of it into pandas.

    The timestamp column(s) of the whole file are read first (every row must be counted: in the
    window, outside the source's bounds, or without a timestamp). Then only the row groups that hold
    the window's rows are read, only the columns the pipeline needs (source columns the spec does not
    name are left in the file), and they stay in Arrow's columnar form: ``batches`` turns one local
    day at a time into pandas, in time order, so the peak is the window in Arrow plus one day.
    """
    if not path.is_file():
        raise SourceError(f"source file {path} does not exist: check `source.path` in the spec")
    try:
        parquet = pq.ParquetFile(parquet_source(path))
        available = parquet.schema_arrow.names
        missing = [c for c in _timestamp_columns(spec) if c not in available]
        if missing:
            raise SourceError(
                f"the source has no column {missing[0]!r}, which the spec's `timestamp` section needs"
            )
        if parquet.metadata.num_rows == 0:
            raise SourceError(
                f"source file {path} has no rows (columns: {', '.join(available) or 'none'}): "
                f"check that the export that writes it finished"
            )
        ts_frame = parquet.read(columns=_timestamp_columns(spec)).to_pandas()
    except SourceError:
        raise
    except Exception as exc:  # pyarrow raises many types for a corrupt file
        raise SourceError(
            f"source file {path} is unreadable as parquet: {type(exc).__name__}: {exc}"
        ) from exc
    stamp, mask, dropped, examples = _window_masks(ts_frame, spec, start, end)
    rows_read = len(ts_frame)
    del ts_frame
    # The window's rows in time order (ties keep file order), and the row group each lies in.
    positions = np.flatnonzero(mask)
    utc = stamp.dt.tz_localize(None).to_numpy()
    order = positions[np.argsort(utc[positions], kind="stable")]
    times = stamp.iloc[order].reset_index(drop=True)
    day_of = local_days(times, spec.timezone)
    cuts = np.flatnonzero(day_of[1:] != day_of[:-1]) + 1
    sizes = np.array(
        [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)], dtype=np.int64
    )
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    group = np.searchsorted(starts, order, side="right") - 1
    groups = np.unique(group)
    within = np.concatenate(([0], np.cumsum(sizes[groups])[:-1]))  # where each read group starts
    local = order - starts[group] + within[np.searchsorted(groups, group)]
    columns = source_columns(spec, available)
    ignored = [c for c in available if c not in columns]
    if ignored:
        log.info("source columns the spec does not name are not read: %s", ", ".join(ignored))
    log.info(
        "reading %d of %d row group(s) of %s for %d rows of the window (%d columns)",
        len(groups),
        parquet.num_row_groups,
        path,
        len(order),
        len(columns),
    )
    try:
        table = parquet.read_row_groups(groups.tolist(), columns=columns)
    except Exception as exc:  # noqa: BLE001 - as above
        raise SourceError(
            f"source file {path} is unreadable as parquet: {type(exc).__name__}: {exc}"
        ) from exc
    # One batch per local day; the whole window at once when a transform must see it whole.
    bounds = [0, len(order)] if spec.derivations.transform else [0, *cuts.tolist(), len(order)]

    def batches() -> Iterator[pd.DataFrame]:
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):
            frame = table.take(local[a:b]).to_pandas()
            frame[EVENT_TIME] = times.iloc[a:b].array
            yield frame

    return Selection(frame=None, rows_read=rows_read, dropped=dropped, examples=examples, batches=batches)


def _examples(df: pd.DataFrame, spec: PipelineSpec, mask) -> list[str]:
    """A few dropped rows as the source had them (row number and the timestamp columns), for the report."""
    columns = [c for c in _timestamp_columns(spec) if c in df.columns]
    rows = df.loc[mask, columns].head(5)
    return [f"row {i}: " + ", ".join(f"{c}={v!r}" for c, v in row.items()) for i, row in rows.iterrows()]


class FileReader:
    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self.path = spec.source.path()
        self.format = str(spec.source.options.get("format") or self.path.suffix.lstrip(".") or "csv")
        self._frame: pd.DataFrame | None = None

    def read(self, start: dt.date, end: dt.date) -> Selection:
        if self.format == "parquet":
            return read_parquet_window(self.spec, self.path, start, end)
        if self._frame is None:
            log.info("reading %s (%s)", self.path, self.format)
            self._frame = read_table(self.path, self.format)
        return select_range(self._frame, self.spec, start, end)
