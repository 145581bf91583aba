"""build_features: the validated partitions of the training window, split by time.

The evaluation slice is the most recent ``evaluation.holdout_days`` of the window; everything before
it is the training slice, so no evaluation row is older than a training row (no leakage). Both
slices keep every column of the spec (features, target and the others, so that a champion trained on
another feature set can be scored on its own columns), plus ``event_time`` for reference.

Each day is read through its validated pointer, and its bytes are checked against the hash the
pointer names. The manifest lists the exact versions used, the fingerprint names them, and the
store's lineage record maps the fingerprint back to those files even after a restatement. The
train and eval files and the manifest are published as one folder: readers see all or none.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
from dataclasses import dataclass

import pandas as pd

from mlcycle import history
from mlcycle.derive import CALENDAR_NAMES
from mlcycle.errors import DataQualityError, NotEnoughData, StepError
from mlcycle.settings import Settings
from mlcycle.spec import EVENT_TIME, Column, PipelineSpec
from mlcycle.steps._common import Interval, Result, training_window
from mlcycle.store import Store, ValidatedVersion, days, fingerprint_of, write_json, write_parquet
from mlcycle.timestamps import day_start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeaturesResult(Result):
    pipeline: str
    window_start: str
    window_end: str
    train_rows: int
    eval_rows: int
    fingerprint: str
    path: str


def column_kind(spec: PipelineSpec, column: Column) -> tuple[str, str]:
    """Which kind of column the constant-window guard sees, and why: ``calendar``, ``constant`` or
    ``measured``.

    A calendar part (``derive: {month: month}``) or a column derived only from calendar parts is
    constant over a short slice by construction (the month of a 7-day hold-out); a column whose
    declaration allows one value (``min`` equal to ``max``, or one allowed value) is constant by
    design. Every other column is measured: a constant there is a stuck source.
    """
    for name, expression in spec.derivations.derive:
        if name == column.name and expression.names and expression.names <= set(CALENDAR_NAMES):
            return "calendar", f"derived only from calendar parts ({expression.source!r})"
    if column.min is not None and column.min == column.max:
        return "constant", f"declared with min = max = {column.min:g}"
    if column.values is not None and len(column.values) == 1:
        return "constant", f"declared with one allowed value ({column.values[0]!r})"
    return "measured", "from the source, neither a calendar part nor constant by declaration"


def guarded(spec: PipelineSpec, column: Column) -> bool:
    """Whether the guard judges ``column``: its ``constant_guard``, else measured columns only."""
    if column.constant_guard is not None:
        return column.constant_guard
    return column_kind(spec, column)[0] == "measured"


def collapsed_features(spec: PipelineSpec, frame: pd.DataFrame, what: str) -> list[str]:
    """Features whose spread collapsed over ``frame``: a numeric one constant (or below its ``min_std``),
    any with fewer distinct values than its ``min_distinct``. A feature that does not vary cannot be
    learnt from, and a slice where it is stuck would judge candidate and champion on a broken input.

    Judged by kind (``column_kind``): measured columns are; calendar parts and constants by declaration
    are not, unless the column sets ``constant_guard: true`` (``false`` exempts a measured one)."""
    problems = []
    for column in spec.row_feature_columns:
        values = frame[column.name]
        kind, why = column_kind(spec, column)
        found = []
        if column.type in ("numeric", "integer") and values.notna().sum() > 1:
            std = float(values.std())
            floor = column.min_std or 0.0
            if std <= floor:
                detail = f"constant at {values.dropna().iloc[0]:g}" if std == 0 else f"std {std:.3g}"
                found.append(f"is {detail} over the {what} ({len(frame)} rows; allowed: std above {floor:g})")
        if column.min_distinct is not None and values.nunique() < column.min_distinct:
            found.append(
                f"has {values.nunique()} distinct value(s) over the {what} "
                f"(min_distinct {column.min_distinct})"
            )
        if not found:
            continue
        if not guarded(spec, column):
            log.info(
                "`%s` %s; not judged: a %s column (%s)%s",
                column.name,
                "; ".join(found),
                kind,
                why,
                "" if column.constant_guard is None else ", constant_guard: false",
            )
            continue
        reason = f"{why}; constant_guard: true" if column.constant_guard and kind != "measured" else why
        problems.extend(f"`{column.name}` {f}: judged as a {kind} column ({reason})" for f in found)
    return problems


def read_validated(
    store: Store,
    start: dt.date,
    end: dt.date,
    columns: list[str] | None = None,
) -> tuple[list[pd.DataFrame], list[ValidatedVersion], list[str]]:
    """The validated partitions of ``[start, end)`` (``columns`` of them, or all), each checked against
    the hash its pointer names: the frames, their versions, and the days without one."""
    frames: list[pd.DataFrame] = []
    versions: list[ValidatedVersion] = []
    missing: list[str] = []
    for day in days(start, end):
        version = store.current_validated(day)
        if version is None:
            missing.append(day.isoformat())
            continue
        data = version.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != version.sha256:
            raise StepError(
                f"the validated file {version.path} no longer holds the bytes its name says "
                f"(sha256 {version.sha256}): the store was modified outside the pipeline; "
                f"re-run ingest and validate for {day}"
            )
        frames.append(pd.read_parquet(io.BytesIO(data), columns=columns))
        versions.append(version)
    return frames, versions, missing


def _history_columns(spec: PipelineSpec) -> list[str]:
    return sorted({*spec.history.reads, EVENT_TIME})


def _lookback(
    spec: PipelineSpec, store: Store, start: dt.date, end: dt.date
) -> tuple[list[pd.DataFrame], list[ValidatedVersion]]:
    """The columns history features read, of the validated days from the longest feature's lookback
    before ``start`` (not before the data's first day) to ``end``."""
    first = max(start - dt.timedelta(days=spec.history.lookback_days), spec.data_start)
    frames, versions, _ = read_validated(store, first, end, _history_columns(spec))
    return frames, versions


def with_history(
    spec: PipelineSpec, store: Store, rows: pd.DataFrame, start: dt.date, versions: list[ValidatedVersion]
) -> tuple[pd.DataFrame, list[ValidatedVersion]]:
    """``rows`` (the days from ``start`` on, whose ``versions`` are given) with the spec's history
    features, computed from those days and the validated days before ``start`` that the longest
    feature reads (from the store: a restated day counts as it stands now). Returns the rows and the
    versions of the days read before ``start`` (they are part of what the features were made of)."""
    earlier, earlier_versions = _lookback(spec, store, start, start)
    frame = pd.concat([*earlier, rows[_history_columns(spec)]], ignore_index=True)
    known = [v.day for v in (*earlier_versions, *versions)]
    log.info(
        "history features %s: %d rows of %d day(s) before %s read for their lookback",
        ", ".join(spec.history.names),
        sum(len(f) for f in earlier),
        len(earlier),
        start,
    )
    return history.for_rows(rows, frame, spec.history, known, spec.timezone, inplace=True), earlier_versions


def history_inputs(
    spec: PipelineSpec,
    store: Store,
    start: dt.date,
    end: dt.date,
) -> tuple[pd.DataFrame, list[dt.date]]:
    """What the history features of rows in ``[start, end)`` read: the columns they need of the
    validated days from the longest feature's lookback before ``start`` to ``end``, and those days."""
    frames, versions = _lookback(spec, store, start, end)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_history_columns(spec))
    return frame, [v.day for v in versions]


def day_history(spec: PipelineSpec, store: Store, day: dt.date) -> history.Snapshots:
    """The history snapshots the rows of ``day`` get, from the store (batch scoring, monitoring)."""
    frame, known = history_inputs(spec, store, day, day + dt.timedelta(days=1))
    return history.Snapshots.of_day(frame, spec.history, day, known, spec.timezone)


def add_history(spec: PipelineSpec, store: Store, rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (``event_time`` and the entity columns) with the spec's history features, computed from
    the store for the days they span; rows that carry them already are returned as they are."""
    if not spec.history or all(name in rows.columns for name in spec.history.names):
        return rows
    if rows.empty:
        return history.for_rows(rows, rows, spec.history, [], spec.timezone)
    local = rows[EVENT_TIME].dt.tz_convert(spec.timezone)
    first, last = local.min().date(), local.max().date()
    frame, known = history_inputs(spec, store, first, last + dt.timedelta(days=1))
    return history.for_rows(rows, frame, spec.history, known, spec.timezone)


def without_warm_up(spec: PipelineSpec, table: pd.DataFrame) -> pd.DataFrame:
    """The rows whose history features can be complete: a row of the first ``lookback`` days after
    ``window.data_start`` has windows reaching before the data, censored rather than missing (the
    server always has the history): such rows warm the features up and are left out of both slices."""
    warm = day_start(spec.data_start + dt.timedelta(days=spec.history.lookback_days), spec.timezone)
    early = table[EVENT_TIME] < warm
    if not early.any():
        return table  # the common case, and no copy of a large table
    log.info(
        "%d row(s) before %s left out: their history features would read days before "
        "window.data_start %s (the features' warm-up)",
        int(early.sum()),
        warm.date(),
        spec.data_start,
    )
    return table[~early].reset_index(drop=True)


def build_features(
    spec: PipelineSpec, settings: Settings, interval: Interval, window_days: int | None = None
) -> FeaturesResult:
    start, end = training_window(spec, interval, window_days)
    store = Store(settings.store, spec.name)
    store.remove_stale_temporaries()
    window, versions, missing = read_validated(store, start, end)
    if missing:
        log.warning(
            "%d day(s) of the window have no validated partition: %s", len(missing), ", ".join(missing)
        )
    # Every column of the spec, not only today's features: a champion trained on another feature set
    # is scored on the columns of its own signature (evaluate), as long as the data still has them.
    columns = [*(c for c in spec.column_names if c != spec.target), spec.target, EVENT_TIME]
    table = pd.concat(window, ignore_index=True)[columns] if window else pd.DataFrame(columns=columns)
    table = table.sort_values(EVENT_TIME, kind="stable").reset_index(drop=True)
    if spec.history:
        table, history_versions = with_history(spec, store, table, start, versions)
        versions = history_versions + versions
        table = without_warm_up(spec, table)
    if len(table) < spec.min_training_rows:
        raise NotEnoughData(
            f"the window {start} to {end} holds {len(table)} validated rows; {spec.name} needs at least "
            f"{spec.min_training_rows} (window.min_training_rows). Widen the window (param window_days) "
            f"or backfill earlier dates."
        )
    cutoff = day_start(end - dt.timedelta(days=spec.evaluation.holdout_days), spec.timezone)
    train, evaluation = table[table[EVENT_TIME] < cutoff], table[table[EVENT_TIME] >= cutoff]
    if train.empty or evaluation.empty:
        raise NotEnoughData(
            f"the split at {cutoff.date()} leaves an empty slice "
            f"(train {len(train)} rows, evaluation {len(evaluation)} rows)"
        )
    problems = collapsed_features(spec, train, "training slice") + collapsed_features(
        spec, evaluation, "evaluation slice"
    )
    if problems:
        raise DataQualityError(
            f"the window {start} to {end} of {spec.name} passed validation day by day, but as a whole it "
            f"cannot train or judge a model: " + "; ".join(problems) + ". Nothing was written, so neither "
            "training nor the gate sees it. Look for a stuck source (a dead sensor) in those days, then "
            "restate them or widen the window. A measured column is judged; calendar parts and columns "
            "constant by declaration are not. Per column, `min_std`/`min_distinct` set the floors and "
            "`constant_guard: false` exempts it (a column that may legitimately stay constant)."
        )
    # The fingerprint names exactly which validated bytes went into this feature table.
    fingerprint = fingerprint_of(versions)
    store.record_lineage(fingerprint, versions)
    with store.new_features(end) as building:
        write_parquet(train, building / "train.parquet")
        write_parquet(evaluation, building / "eval.parquet")
        write_json(
            {
                "pipeline": spec.name,
                "window_start": start.isoformat(),
                "window_end": end.isoformat(),
                "split_at": cutoff.isoformat(),
                "train_rows": len(train),
                "eval_rows": len(evaluation),
                "features": spec.feature_names,
                "target": spec.target,
                "fingerprint": fingerprint,
                "partitions": [v.to_dict(store.base) for v in versions],
                "missing_days": missing,
                "history": {f.name: f.describe() for f in spec.history.features},
            },
            building / "manifest.json",
        )
    folder = store.features_dir(end)
    log.info(
        "feature table: %d training rows before %s, %d evaluation rows; fingerprint %s",
        len(train),
        cutoff.date(),
        len(evaluation),
        fingerprint,
    )
    return FeaturesResult(
        pipeline=spec.name,
        window_start=start.isoformat(),
        window_end=end.isoformat(),
        train_rows=len(train),
        eval_rows=len(evaluation),
        fingerprint=fingerprint,
        path=str(folder),
    )
