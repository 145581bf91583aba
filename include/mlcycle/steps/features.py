"""build_features: the validated partitions of the training window, split by time.

The evaluation slice is the most recent ``evaluation.holdout_days`` of the window; everything before
it is the training slice, so no evaluation row is older than a training row (no leakage). Both
slices keep the spec's features and target, plus ``event_time`` for reference.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

import pandas as pd

from mlcycle.errors import NotEnoughData
from mlcycle.settings import Settings
from mlcycle.spec import EVENT_TIME, PipelineSpec
from mlcycle.steps._common import Interval, Result, training_window
from mlcycle.store import Store, days, file_sha256, write_json, write_parquet
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


def build_features(spec: PipelineSpec, settings: Settings, interval: Interval,
                   window_days: int | None = None) -> FeaturesResult:
    start, end = training_window(spec, interval, window_days)
    store = Store(settings.store, spec.name)
    frames, hashes, missing = [], [], []
    for day in days(start, end):
        path = store.validated(day)
        if not path.exists():
            missing.append(day.isoformat())
            continue
        frames.append(pd.read_parquet(path))
        hashes.append(f"{day}:{file_sha256(path)}")
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
    cutoff = day_start(end - dt.timedelta(days=spec.evaluation.holdout_days), spec.timezone)
    train, evaluation = table[table[EVENT_TIME] < cutoff], table[table[EVENT_TIME] >= cutoff]
    if train.empty or evaluation.empty:
        raise NotEnoughData(f"the split at {cutoff.date()} leaves an empty slice "
                            f"(train {len(train)} rows, evaluation {len(evaluation)} rows)")
    # The fingerprint names exactly which validated bytes went into this feature table.
    fingerprint = hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]
    folder = store.features_dir(end)
    write_parquet(train, folder / "train.parquet")
    write_parquet(evaluation, folder / "eval.parquet")
    write_json({"pipeline": spec.name, "window_start": start.isoformat(), "window_end": end.isoformat(),
                "split_at": cutoff.isoformat(), "train_rows": len(train), "eval_rows": len(evaluation),
                "features": spec.feature_names, "target": spec.target, "fingerprint": fingerprint,
                "partitions": hashes, "missing_days": missing}, folder / "manifest.json")
    log.info("feature table: %d training rows before %s, %d evaluation rows; fingerprint %s",
             len(train), cutoff.date(), len(evaluation), fingerprint)
    return FeaturesResult(pipeline=spec.name, window_start=start.isoformat(), window_end=end.isoformat(),
                          train_rows=len(train), eval_rows=len(evaluation), fingerprint=fingerprint,
                          path=str(folder))
