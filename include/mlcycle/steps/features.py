"""build_features: the validated partitions of the training window, split by time.

The evaluation slice is the most recent ``evaluation.holdout_days`` of the window; everything before
it is the training slice, so no evaluation row is older than a training row (no leakage). Both
slices keep the spec's features and target, plus ``event_time`` for reference.

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

from mlcycle.errors import NotEnoughData, StepError
from mlcycle.settings import Settings
from mlcycle.spec import EVENT_TIME, PipelineSpec
from mlcycle.steps._common import Interval, Result, training_window
from mlcycle.store import Store, ValidatedVersion, days, fingerprint_of, write_json, write_parquet

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


def build_features(spec: PipelineSpec, settings: Settings, interval: Interval,
                   window_days: int | None = None) -> FeaturesResult:
    start, end = training_window(spec, interval, window_days)
    store = Store(settings.store, spec.name)
    store.remove_stale_temporaries()
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
            raise StepError(f"the validated file {version.path} no longer holds the bytes its name says "
                            f"(sha256 {version.sha256}): the store was modified outside the pipeline; "
                            f"re-run ingest and validate for {day}")
        frames.append(pd.read_parquet(io.BytesIO(data)))
        versions.append(version)
    if missing:
        log.warning("%d day(s) of the window have no validated partition: %s", len(missing), ", ".join(missing))
    columns = [*spec.feature_names, spec.target, EVENT_TIME]
    table = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    table = table.sort_values(EVENT_TIME, kind="stable").reset_index(drop=True)
    if len(table) < spec.min_training_rows:
        raise NotEnoughData(
            f"the window {start} to {end} holds {len(table)} validated rows; {spec.name} needs at least "
            f"{spec.min_training_rows} (window.min_training_rows). Widen the window (param window_days) "
            f"or backfill earlier dates."
        )
    cutoff = pd.Timestamp(end - dt.timedelta(days=spec.evaluation.holdout_days), tz="UTC")
    train, evaluation = table[table[EVENT_TIME] < cutoff], table[table[EVENT_TIME] >= cutoff]
    if train.empty or evaluation.empty:
        raise NotEnoughData(f"the split at {cutoff.date()} leaves an empty slice "
                            f"(train {len(train)} rows, evaluation {len(evaluation)} rows)")
    # The fingerprint names exactly which validated bytes went into this feature table.
    fingerprint = fingerprint_of(versions)
    store.record_lineage(fingerprint, versions)
    with store.new_features(end) as building:
        write_parquet(train, building / "train.parquet")
        write_parquet(evaluation, building / "eval.parquet")
        write_json({"pipeline": spec.name, "window_start": start.isoformat(), "window_end": end.isoformat(),
                    "split_at": cutoff.isoformat(), "train_rows": len(train), "eval_rows": len(evaluation),
                    "features": spec.feature_names, "target": spec.target, "fingerprint": fingerprint,
                    "partitions": [v.to_dict(store.base) for v in versions], "missing_days": missing},
                   building / "manifest.json")
    folder = store.features_dir(end)
    log.info("feature table: %d training rows before %s, %d evaluation rows; fingerprint %s",
             len(train), cutoff.date(), len(evaluation), fingerprint)
    return FeaturesResult(pipeline=spec.name, window_start=start.isoformat(), window_end=end.isoformat(),
                          train_rows=len(train), eval_rows=len(evaluation), fingerprint=fingerprint,
                          path=str(folder))
