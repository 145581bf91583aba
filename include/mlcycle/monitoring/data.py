"""Which rows the monitor compares: the interval's current data and the production model's training data.

**Current data** is what the model saw in the interval: the rows the serving API logged
(``predictions/date=…``) when there are any, otherwise the interval's validated batch (a pipeline
without live traffic, like the bundled data set). The validated batch also carries the target, so
the model's performance on the interval is measured on it whenever it exists ("labels arrived").

**Reference data** is the training data of the model in production: ``@production`` when the
deploy DAG has set it, else ``@champion``. It is found from the model version's own lineage tags
(``mlcycle.data_fingerprint`` and the window), through the store's lineage record to the exact
validated files, hash-checked; never re-derived from today's date, so a deleted or restated
partition is an error, not a silently different reference.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlcycle.errors import NothingToDo, StepError
from mlcycle.settings import Settings
from mlcycle.spec import EVENT_TIME, PipelineSpec
from mlcycle.steps.features import add_history
from mlcycle.store import LineageError, Store, days, read_parquet

log = logging.getLogger(__name__)

#: Aliases the monitor watches, first found wins: the deploy DAG's, then the training DAG's.
WATCHED_ALIASES = ("production", "champion")


class ReferenceMissing(StepError):
    """The production model's training data can no longer be found in the store."""


class MonitoringInputError(StepError):
    """The current data cannot be compared with the reference (a feature is missing)."""


@dataclass(frozen=True)
class CurrentData:
    frame: pd.DataFrame
    #: ``predictions`` (the serving API's log), ``validated`` (the interval's validated batch) or
    #: ``scoring`` (the batch predictions, with a ``prediction`` column).
    source: str
    #: The interval's validated rows with the target, when they exist (for performance); else None.
    labelled: pd.DataFrame | None
    days: tuple[str, ...]


@dataclass(frozen=True)
class Reference:
    frame: pd.DataFrame
    model_name: str
    version: str
    alias: str
    run_id: str
    model_uri: str
    window_start: str
    window_end: str
    fingerprint: str
    #: The gate metric on the hold-out slice at training time (``holdout_<metric>`` of the run).
    holdout_score: float | None


def _read_all(files: list[Path]) -> pd.DataFrame:
    frames = [read_parquet(f) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def scored_data(
    spec: PipelineSpec, store: Store, wanted: list[dt.date]
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """``monitoring.source: scoring``: the rows ``scoring_<name>`` scored, with their batch predictions.

    Each day's features are the exact validated version the scores were computed from (its lineage
    names it; the scores keep its row order). Labels come from the day's *current* validated version,
    matched on the spec's key, so a day restated later with its labels gets its performance measured
    against the predictions that were made. Returns (scored rows, the labelled ones) or (None, None).
    """
    import json

    frames, labelled = [], []
    for day in wanted:
        folder = store.base / "scores" / f"date={day.isoformat()}"
        try:
            lineage = json.loads((folder / "lineage.json").read_text())
        except FileNotFoundError:
            continue
        scores = read_parquet(folder / "data.parquet")
        rows = read_parquet(store.base / lineage["data"]["validated_file"])
        predicted = [c for c in scores.columns if c == "prediction" or c.startswith("proba_")]
        frame = pd.concat([rows.reset_index(drop=True), scores[predicted].reset_index(drop=True)], axis=1)
        frames.append(frame)
        current = store.current_validated(day)
        key = [k for k in spec.key if k in frame.columns]
        if current is None or spec.target not in rows.columns:
            continue
        if current.sha256 == lineage["data"]["validated_sha256"] or not key:
            with_labels = frame
        else:  # restated since scoring: the new version's labels, by key, for the rows that were scored
            labels = read_parquet(current.path)[[*key, spec.target]]
            with_labels = frame.drop(columns=[spec.target]).merge(labels, on=key, how="inner")
        labelled.append(with_labels[with_labels[spec.target].notna()])
    if not frames:
        return None, None
    joined = pd.concat(labelled, ignore_index=True) if labelled else None
    return pd.concat(frames, ignore_index=True), joined if joined is not None and len(joined) else None


def current_data(spec: PipelineSpec, store: Store, start: dt.date, end: dt.date) -> CurrentData:
    """The rows of ``[start, end)``: logged predictions when there are any, else the validated batch.

    With ``monitoring.source: scoring``: the batch predictions of ``scoring_<name>`` (``scored_data``).
    """
    wanted = days(start, end)
    if spec.monitoring.source == "scoring":
        frame, labelled = scored_data(spec, store, wanted)
        if frame is None:
            raise NothingToDo(
                f"nothing to monitor: no batch predictions for [{start}, {end}) under "
                f"{store.base / 'scores'}; run scoring_{spec.name} for those days first"
            )
        return _checked(
            spec,
            _with_history(
                spec,
                store,
                CurrentData(
                    frame=frame,
                    source="scoring",
                    labelled=labelled,
                    days=tuple(d.isoformat() for d in wanted),
                ),
            ),
            start,
            end,
        )
    prediction_files = sorted(
        f
        for d in wanted
        for f in (store.base / "predictions" / f"date={d.isoformat()}").glob("part-*.parquet")
    )
    validated_files = [p for p in (store.validated(d) for d in wanted) if p.is_file()]
    labelled = _read_all(validated_files) if validated_files else None
    if prediction_files:
        frame, source = _read_all(prediction_files), "predictions"
    elif labelled is not None:
        frame, source = labelled, "validated"
    else:
        raise NothingToDo(
            f"nothing to monitor: no logged predictions and no validated batch for "
            f"[{start}, {end}) under {store.base}"
        )
    return _checked(
        spec,
        _with_history(
            spec,
            store,
            CurrentData(
                frame=frame, source=source, labelled=labelled, days=tuple(d.isoformat() for d in wanted)
            ),
        ),
        start,
        end,
    )


def _with_history(spec: PipelineSpec, store: Store, current: CurrentData) -> CurrentData:
    """The spec's history features on the current rows, computed from the store where the rows do not
    carry them (the validated batch, the scored rows; the serving log carries what the server used)."""
    if not spec.history:
        return current

    def added(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        if frame is None or EVENT_TIME not in frame.columns:
            return frame
        return add_history(spec, store, frame)

    return dataclasses.replace(current, frame=added(current.frame), labelled=added(current.labelled))


def _checked(spec: PipelineSpec, current: CurrentData, start: dt.date, end: dt.date) -> CurrentData:
    frame, source, labelled = current.frame, current.source, current.labelled
    if len(frame) < spec.monitoring.min_rows:
        raise NothingToDo(
            f"nothing to monitor: [{start}, {end}) has {len(frame)} {source} row(s), fewer than "
            f"monitoring.min_rows {spec.monitoring.min_rows}; a verdict on so few would be noise"
        )
    missing = [c for c in spec.monitoring.columns if c not in frame.columns]
    if missing:
        raise MonitoringInputError(
            f"the {source} data of [{start}, {end}) lacks the monitored feature(s) {', '.join(missing)}: "
            f"the serving schema or the spec changed; nothing was judged and no retrain was triggered"
        )
    log.info(
        "current data: %d %s row(s) of [%s, %s)%s",
        len(frame),
        source,
        start,
        end,
        "" if labelled is None else f"; {len(labelled)} labelled row(s) for performance",
    )
    return current


def watched_version(client, name: str):
    """The model version in production (``@production``, else ``@champion``) and its alias; None if none."""
    from mlflow.exceptions import MlflowException

    for alias in WATCHED_ALIASES:
        try:
            return client.get_model_version_by_alias(name, alias), alias
        except MlflowException:
            continue
    return None, None


def _reference_history(spec: PipelineSpec, frame: pd.DataFrame, files: list, tags: dict) -> pd.DataFrame:
    """The training window's rows with their history features, as build_features made them: the
    fingerprint's files hold the window and the days before it that the features read."""
    from mlcycle.history import for_rows
    from mlcycle.steps.features import without_warm_up

    known = [dt.date.fromisoformat(Path(str(f)).parent.name.removeprefix("date=")) for f in files]
    local = frame[EVENT_TIME].dt.tz_convert(spec.timezone).dt.date
    start, end = (dt.date.fromisoformat(tags[k]) for k in ("mlcycle.window_start", "mlcycle.window_end"))
    rows = frame[(local >= start) & (local < end)].reset_index(drop=True)
    return without_warm_up(spec, for_rows(rows, frame, spec.history, known, spec.timezone))


def reference_data(spec: PipelineSpec, settings: Settings, store: Store) -> Reference:
    """The watched model version and the exact validated rows it was trained on."""
    from mlflow import MlflowClient

    from mlcycle.tracking import connect

    connect(settings, spec)
    client = MlflowClient()
    name = spec.model.registered_name
    version, alias = watched_version(client, name)
    if version is None:
        raise NothingToDo(
            f"nothing to monitor: no model of {name} is in production yet (no @production or "
            f"@champion alias); run training_{spec.name} first"
        )
    tags = version.tags or {}
    fingerprint = tags.get("mlcycle.data_fingerprint")
    if not fingerprint:
        raise ReferenceMissing(
            f"{name} version {version.version} (@{alias}) has no mlcycle.data_fingerprint tag: "
            "its training data cannot be identified; register it through the training DAG"
        )
    try:
        files = store.files_for_fingerprint(fingerprint)
    except LineageError as exc:
        raise ReferenceMissing(
            f"the training data of {name} version {version.version} (@{alias}, window "
            f"{tags.get('mlcycle.window_start')} to {tags.get('mlcycle.window_end')}) is gone: {exc}. Restore "
            f"the partitions, or retrain and promote a model on data that exists"
        ) from None
    holdout = None
    if version.run_id:
        metrics = client.get_run(version.run_id).data.metrics
        holdout = metrics.get(f"holdout_{spec.evaluation.metric}")
    frame = _read_all(files)
    if spec.history:
        frame = _reference_history(spec, frame, files, tags)
    log.info(
        "reference: %s version %s (@%s), trained on %s to %s (fingerprint %s, %d rows); hold-out %s %s",
        name,
        version.version,
        alias,
        tags.get("mlcycle.window_start"),
        tags.get("mlcycle.window_end"),
        fingerprint,
        len(frame),
        spec.evaluation.metric,
        holdout,
    )
    return Reference(
        frame=frame,
        model_name=name,
        version=str(version.version),
        alias=alias,
        run_id=version.run_id or "",
        model_uri=f"models:/{name}/{version.version}",
        window_start=tags.get("mlcycle.window_start", ""),
        window_end=tags.get("mlcycle.window_end", ""),
        fingerprint=fingerprint,
        holdout_score=holdout,
    )
