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
from dataclasses import dataclass

import numpy as np

from mlcycle import derive
from mlcycle.errors import NothingToDo, SourceError, ValidationFailed
from mlcycle.reports import validation_report
from mlcycle.settings import Settings
from mlcycle.sources import reader_for
from mlcycle.spec import EVENT_TIME, PipelineSpec
from mlcycle.steps._common import Interval, Result, training_window
from mlcycle.store import Store, days, write_json, write_parquet, write_text
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
    if spec.source.kind == "file" and spec.source.path().is_file():
        shutil.copyfile(spec.source.path(), folder / spec.source.path().name)
    write_json({"pipeline": spec.name, "partition": interval.start.isoformat(), "failures": [failure]},
               folder / "failures.json")
    report = folder / "report.html"
    write_text(validation_report(
        f"{spec.name}: source unreadable", {"source": spec.source.options, "error": str(error)},
        [{"partition": interval.start.isoformat(), "success": False,
          "results": [{"success": False, **failure}]}]), report)
    return str(report)


def ingest(spec: PipelineSpec, settings: Settings, interval: Interval, window_days: int | None = None,
           attempt: str = "manual") -> IngestResult:
    """Write one raw partition per day of the training window that ends with ``interval``."""
    if spec.data_end is not None and interval.start > spec.data_end:
        raise NothingToDo(f"the source holds nothing after {spec.data_end} (window.data_end); "
                          f"nothing to ingest for {interval.start}")
    if interval.end <= spec.data_start:
        raise NothingToDo(f"the interval ends before the data starts ({spec.data_start})")
    start, end = training_window(spec, interval, window_days)
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
    frame, filtered = derive.apply(selection.frame, spec.derivations, spec.timezone, EVENT_TIME)
    day_of_row = local_days(frame[EVENT_TIME], spec.timezone)
    empty: list[str] = []
    partitions: dict[str, str] = {}
    for i, day in enumerate(days(start, end), start=1):
        part = frame.loc[day_of_row == np.datetime64(day, "D")]
        if part.empty:
            empty.append(day.isoformat())
        partitions[day.isoformat()] = write_parquet(part, store.raw(day))
        if i % 7 == 0 or day == end - dt.timedelta(days=1):
            log.info("ingest progress: %d/%d partitions written (through %s)", i, (end - start).days, day)
    if empty:
        log.warning("no rows for %s: those partitions are empty and will fail validation", ", ".join(empty))
    write_json({"pipeline": spec.name, "window_start": start.isoformat(), "window_end": end.isoformat(),
                "source_rows_read": selection.rows_read, "rows_in_window": len(frame),
                "dropped": selection.dropped, "dropped_examples": selection.examples, "filtered": filtered,
                "partitions_sha256": partitions}, store.ingest_record(end))
    return IngestResult(pipeline=spec.name, window_start=start.isoformat(), window_end=end.isoformat(),
                        partitions=(end - start).days, rows=len(frame), empty_days=empty,
                        dropped=selection.dropped, filtered=filtered)
