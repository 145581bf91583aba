"""ingest: copy the rows of the training window from the source into daily raw partitions.

Each day of the window becomes ``raw/date=YYYY-MM-DD/data.parquet`` with the source's columns plus
``event_time``. Writing is deterministic and atomic, so re-running a date rewrites its partition
with identical bytes; days that are already validated with the same bytes cost nothing downstream.
Source rows that belong to no day (no timestamp, or one outside the source's bounds) are counted by
reason in ``reports/ingest/end=YYYY-MM-DD.json``, where validate reads them and decides on the share.
An unreadable source is quarantined with a report, and nothing is written.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlcycle import derive
from mlcycle.errors import NothingToDo, SourceError, StepError, ValidationFailed
from mlcycle.reports import validation_report
from mlcycle.settings import Settings
from mlcycle.sources import reader_for
from mlcycle.spec import EVENT_TIME, PipelineSpec
from mlcycle.steps._common import Interval, Result, data_window
from mlcycle.store import Store, atomic_path, days, write_json, write_parquet, write_text
from mlcycle.storepath import is_remote
from mlcycle.timestamps import local_days

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult(Result):
    pipeline: str
    window_start: str
    window_end: str
    partitions: int
    rows: int
    empty_days: list[str]
    #: Rows that belong to no day (no timestamp, or outside the source's bounds), by reason.
    dropped: dict[str, int]
    #: Rows the spec's filters (or transform) removed, by rule: dropped on purpose, and counted.
    filtered: dict[str, int]


def _quarantine_unreadable(spec: PipelineSpec, store: Store, interval: Interval, attempt: str,
                           error: SourceError) -> str:
    folder = store.quarantine_dir(interval.start, attempt)
    folder.mkdir(parents=True, exist_ok=True)
    failure = {"expectation": "source is readable", "observed": str(error)}
    source = spec.source.path() if spec.source.kind == "file" else None
    if source is not None and source.is_file():
        with atomic_path(folder / source.name) as tmp:
            if is_remote(source):
                tmp.write_bytes(source.read_bytes())
            else:
                shutil.copyfile(source, tmp)
    write_json({"pipeline": spec.name, "partition": interval.start.isoformat(), "failures": [failure]},
               folder / "failures.json")
    report = folder / "report.html"
    write_text(validation_report(
        f"{spec.name}: source unreadable", {"source": spec.source.options, "error": str(error)},
        [{"partition": interval.start.isoformat(), "success": False,
          "results": [{"success": False, **failure}]}]), report)
    return str(report)


def _timestamps_in_utc(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Columns typed ``timestamp`` that carry a zone, stored as UTC without it (one dtype for the suite)."""
    aware = [c.name for c in spec.columns if c.type == "timestamp" and c.name in frame
             and isinstance(frame[c.name].dtype, pd.DatetimeTZDtype)]
    if aware:
        frame = frame.assign(**{name: frame[name].dt.tz_convert("UTC").dt.tz_localize(None) for name in aware})
    return frame


def _typed_by_day(spec: PipelineSpec, part: pd.DataFrame) -> pd.DataFrame:
    """A day's numeric columns typed by its own rows, so that each day is judged on them alone.

    A CSV column has one type: a text value (or a null in a whole-number column) on one day makes
    the column text (or floats) on every day. A day whose own values of such a column are all numbers
    (whole numbers, without nulls) gets the column back as numbers; the day that holds the text or
    the null keeps it, and validation names its rows.
    """
    changes = {}
    for col in spec.columns:
        if col.name not in part:
            continue
        values = part[col.name]
        whole = col.type == "integer" or (col.type == "categorical" and bool(col.values) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in col.values))
        if col.type != "numeric" and not whole:
            continue
        if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            parsed = pd.to_numeric(values, errors="coerce")
            if (parsed.isna() != values.isna()).any():
                continue  # text on this very day
            values = parsed
        if whole and values.dtype.kind == "f" and len(values) and values.notna().all() and (values % 1 == 0).all():
            values = values.astype("int64")
        if values is not part[col.name]:
            changes[col.name] = values
    return part.assign(**changes) if changes else part


def _split_days(frame: pd.DataFrame, timezone: str) -> Iterator[tuple[dt.date, pd.DataFrame]]:
    """The rows of each local calendar day, in one pass: slices of the time-ordered frame."""
    day_of_row = local_days(frame[EVENT_TIME], timezone)
    if len(day_of_row) > 1 and (day_of_row[1:] < day_of_row[:-1]).any():  # a transform reordered them
        order = np.argsort(day_of_row, kind="stable")
        frame, day_of_row = frame.iloc[order], day_of_row[order]
    cuts = [0, *(np.flatnonzero(day_of_row[1:] != day_of_row[:-1]) + 1).tolist(), len(day_of_row)]
    for a, b in zip(cuts[:-1], cuts[1:], strict=False):
        if b > a:
            yield day_of_row[a].item(), frame.iloc[a:b]


def ingest(spec: PipelineSpec, settings: Settings, interval: Interval, window_days: int | None = None,
           attempt: str = "manual") -> IngestResult:
    """Write one raw partition per day of the training window that ends with ``interval``."""
    if spec.data_end is not None and interval.start > spec.data_end:
        raise NothingToDo(f"the source holds nothing after {spec.data_end} (window.data_end); "
                          f"nothing to ingest for {interval.start}")
    if interval.end <= spec.data_start:
        raise NothingToDo(f"the interval ends before the data starts ({spec.data_start})")
    start, end = data_window(spec, interval, window_days)
    store = Store(settings.store, spec.name)
    store.remove_stale_temporaries()
    log.info("ingesting %s from %s source, window %s to %s", spec.name, spec.source.kind, start, end)
    try:
        selection = reader_for(spec).read(start, end)
    except SourceError as exc:
        report = _quarantine_unreadable(spec, store, interval, attempt, exc)
        raise ValidationFailed(f"batch for {interval.start} rejected: expectation `source is readable` "
                               f"failed: {exc}. The batch is quarantined; report: {report}",
                               failures=[{"expectation": "source is readable", "observed": str(exc)}],
                               report=report) from exc
    window = days(start, end)
    written: dict[dt.date, str] = {}
    filtered: dict[str, int] = {}
    rows = 0
    template = None
    for batch in selection.parts():  # time-ordered; a streaming reader gives one local day at a time
        frame, removed = derive.apply(batch, spec.derivations, spec.timezone, EVENT_TIME)
        frame = _timestamps_in_utc(spec, frame)
        for rule, n in removed.items():
            filtered[rule] = filtered.get(rule, 0) + n
        template = frame.iloc[:0]
        rows += len(frame)
        for day, part in _split_days(frame, spec.timezone):
            if day in written:
                raise StepError(f"the source reader returned rows of {day} in two batches; the partition "
                                f"would lose one of them")
            written[day] = write_parquet(_typed_by_day(spec, part), store.raw(day))
            if len(written) % 7 == 0:
                log.info("ingest progress: %d/%d partitions written (through %s)", len(written), len(window), day)
    empty = [day for day in window if day not in written]
    for day in empty:  # the reader always gives a batch, so there is a template
        written[day] = write_parquet(template, store.raw(day))
    empty = [day.isoformat() for day in empty]
    partitions = {day.isoformat(): written[day] for day in sorted(written)}
    if empty:
        log.warning("no rows for %s: those partitions are empty and will fail validation", ", ".join(empty))
    write_json({"pipeline": spec.name, "window_start": start.isoformat(), "window_end": end.isoformat(),
                "source_rows_read": selection.rows_read, "rows_in_window": rows,
                "dropped": selection.dropped, "dropped_examples": selection.examples, "filtered": filtered,
                "partitions_sha256": partitions}, store.ingest_record(end))
    return IngestResult(pipeline=spec.name, window_start=start.isoformat(), window_end=end.isoformat(),
                        partitions=(end - start).days, rows=rows, empty_days=empty,
                        dropped=selection.dropped, filtered=filtered)
