"""score: every validated row of the interval gets a prediction of one registered model version.

``resolve_version`` runs once, first in a scoring run: it names the version behind the spec's
``scoring.alias`` (default ``@production``, else ``@champion``), so that every later task of the run
scores with that version even if the alias moves meanwhile (a backfill next to a training run).

``score`` reads each day of the interval from its *validated* version (hash-checked; a day whose raw
partition is not the validated version, because its batch was rejected or not validated yet, is
refused, so a quarantined batch is never scored), and writes per day::

    scores/date=YYYY-MM-DD/data.parquet    key columns, event_time, prediction, proba_<class> (classifiers),
                                           model_name, model_version, run_id; one row group per batch
    scores/date=YYYY-MM-DD/load.csv        the same rows and a `date` column, for the PostgreSQL load
    scores/date=YYYY-MM-DD/lineage.json    model version, data fingerprint, code version, run, files

The ONNX model is used where the folder has one that matches the Pipeline (``ServedModel``'s check
at load), in batches of ``scoring.batch_rows`` read row group by row group, so memory is bounded by
the batch, not the day: only the model's inputs and the key columns are read, an I/O thread reads
the next batch and writes the previous one while a batch is scored, and the graph runs on chunks of
at most ``CHUNK_ROWS`` rows shared among one session per core. Every file is written under a temporary name and renamed: the same rows and
version give the same bytes, and a killed run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlcycle import history
from mlcycle.errors import NothingToDo, RegistryError, StepError
from mlcycle.settings import Settings
from mlcycle.spec import EVENT_TIME, PipelineSpec, ScoringSpec
from mlcycle.steps._common import Interval, Result
from mlcycle.steps.features import day_history
from mlcycle.store import Store, ValidatedVersion, atomic_path, days, file_sha256, fingerprint_of, write_json
from mlcycle.storepath import parquet_source

log = logging.getLogger(__name__)

#: Aliases tried in order when the spec names none: the deploy DAG's, then the training DAG's.
DEFAULT_ALIASES = ("production", "champion")
SCORES_FILE = "data.parquet"
LOAD_FILE = "load.csv"
LINEAGE_FILE = "lineage.json"
#: ``MLCYCLE_SCORING_PATH=pipeline`` forces the scikit-learn Pipeline (the benchmark's baseline).
PATH_ENV = "MLCYCLE_SCORING_PATH"
#: Batches of at least this many rows are shared among the ONNX sessions (one per task thread).
PARALLEL_MIN_ROWS = 20_000
#: Rows per ONNX run: a batch is cut into chunks of at most this many rows, taken by the sessions in
#: turn. The graph's one-hot matrix (about 1 KiB a row for the taxi model) lives per chunk, not per
#: batch, and a session held up by a busy core delays one chunk, not half the batch.
CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class ResolvedModel(Result):
    pipeline: str
    model_name: str
    version: str
    alias: str
    model_uri: str
    model_run_id: str
    training_fingerprint: str | None


@dataclass(frozen=True)
class ScoreResult(Result):
    pipeline: str
    start: str
    end: str
    model_name: str
    version: str
    model_uri: str
    path: str  # onnx | pipeline
    path_reason: str
    rows: int
    fingerprint: str
    code_version: str
    run_id: str
    partitions: list[dict[str, Any]]
    #: ``[[name, PostgreSQL type], ...]`` of the load files, for the DAG's PostgreSQL task.
    columns: list[list[str]]
    load_files: list[str]
    seconds: float
    rows_per_second: float


def scores_dir(store: Store, day: dt.date) -> Path:
    return store.base / "scores" / f"date={day.isoformat()}"


def _connect(spec: PipelineSpec, settings: Settings):
    from mlflow import MlflowClient

    from mlcycle.tracking import connect

    connect(settings, spec)
    return MlflowClient()


def resolve_version(spec: PipelineSpec, settings: Settings) -> ResolvedModel:
    """The version the run scores with: behind ``scoring.alias``, else ``@production``, else ``@champion``."""
    from mlflow.exceptions import MlflowException

    config = spec.scoring or ScoringSpec()
    aliases = (config.alias,) if config.alias else DEFAULT_ALIASES
    client = _connect(spec, settings)
    name = spec.model.registered_name
    for alias in aliases:
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            continue
        log.info(
            "scoring %s with version %s (@%s, run %s); fixed for the whole run",
            name,
            mv.version,
            alias,
            mv.run_id,
        )
        return ResolvedModel(
            pipeline=spec.name,
            model_name=name,
            version=str(mv.version),
            alias=alias,
            model_uri=f"models:/{name}/{mv.version}",
            model_run_id=mv.run_id or "",
            training_fingerprint=(mv.tags or {}).get("mlcycle.data_fingerprint"),
        )
    raise NothingToDo(
        f"nothing to score with: {name} has no version behind "
        f"{' or '.join('@' + a for a in aliases)} yet; run training_{spec.name} first"
    )


def _validated_day(store: Store, day: dt.date) -> ValidatedVersion:
    """The day's current validated version, refused when the latest raw batch is not it (rejected)."""
    version = store.current_validated(day)
    raw = store.raw(day)
    if version is None:
        raise StepError(
            f"no validated partition for {day} under {store.validated_dir(day)}: the batch was "
            f"rejected or not validated yet. Run ingest and validate for this interval first "
            f"(rejected batches are under {store.base / 'quarantine'})"
        )
    if file_sha256(version.path) != version.sha256:
        raise StepError(
            f"the validated file {version.path} no longer holds the bytes its name says "
            f"(sha256 {version.sha256}): re-run ingest and validate for {day}"
        )
    if raw.is_file() and file_sha256(raw) != version.sha256:
        raise StepError(
            f"the latest batch of {day} ({raw}) is not its validated version: it was rejected "
            f"(see {store.base / 'quarantine' / f'date={day}'}) or not validated yet, and it is "
            f"not scored. Fix the source and re-run the interval"
        )
    return version


def _model(resolved_uri: str, settings: Settings):
    from mlcycle.serving.fetch import resolve_model
    from mlcycle.serving.model import ServedModel

    folder = resolve_model(resolved_uri, settings.home / "serving", settings.tracking_uri)
    force = os.environ.get(PATH_ENV, "").strip().lower() or None
    if force not in (None, "pipeline", "onnx"):
        raise StepError(f"{PATH_ENV}={force!r}: use pipeline, onnx or leave it empty")
    model = ServedModel(folder, force_path="pipeline" if force == "pipeline" else None)
    if force == "onnx" and model.session is None:
        raise StepError(f"{PATH_ENV}=onnx, but the ONNX path is not usable: {model.path_reason}")
    model.sessions = []
    if model.session is not None:
        # One single-threaded session per task thread, each on its share of a batch (onnxruntime
        # releases the GIL): measured 10-15% faster on two cores than one session with two threads.
        from mlcycle.threads import thread_count

        model.sessions = [model.session] + [_session(folder) for _ in range(thread_count() - 1)]
        model.pool = ThreadPoolExecutor(len(model.sessions)) if len(model.sessions) > 1 else None
    return model


def _session(folder: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(folder / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def _run_onnx(model, frame: pd.DataFrame) -> list[np.ndarray]:
    """The ONNX outputs of ``frame``, run in chunks of rows shared among the sessions (in order)."""
    n, sessions = len(frame), model.sessions or [model.session]
    shared = model.pool is not None and n >= PARALLEL_MIN_ROWS
    size = min(CHUNK_ROWS, -(-n // len(sessions))) if shared else min(CHUNK_ROWS, n)
    jobs = [(sessions[i % len(sessions)], frame.iloc[a : a + size]) for i, a in enumerate(range(0, n, size))]
    if len(jobs) == 1:
        return model.session.run(None, _onnx_inputs(model, frame))

    def run(job: tuple[Any, pd.DataFrame]) -> list[np.ndarray]:
        # onnxruntime releases the GIL in run() and allows concurrent runs of one session
        return job[0].run(None, _onnx_inputs(model, job[1]))

    outs = list(model.pool.map(run, jobs) if shared else map(run, jobs))
    return [np.concatenate([np.asarray(o[i]) for o in outs]) for i in range(len(outs[0]))]


def _onnx_inputs(model, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    feeds = {}
    for name, dtype in model._encoders:  # (feature, the dtype the graph declares), in schema order
        column = frame[name]
        if dtype is object:
            feeds[name] = column.astype(str).to_numpy(dtype=object).reshape(-1, 1)
        elif dtype in (np.float64, np.float32):
            feeds[name] = column.to_numpy(dtype=dtype, na_value=np.nan).reshape(-1, 1)
        else:
            feeds[name] = column.to_numpy(dtype=dtype).reshape(-1, 1)
    return feeds


def _predict(model, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (and class probabilities) of one batch, on the model's chosen path."""
    if frame.empty:
        classes = model.classes or []
        return (
            np.empty(0, dtype=object if classes and isinstance(classes[0], str) else np.float64),
            np.empty((0, len(classes))) if model.classification else None,
        )
    if model.session is not None:
        out = _run_onnx(model, frame)
        if model.classification:
            labels = np.asarray(out[0]).reshape(-1)
            if model.classes and isinstance(model.classes[0], str):
                labels = labels.astype(str)
            return labels, np.asarray(out[1], dtype=np.float64)
        return np.asarray(out[0], dtype=np.float64).reshape(-1), None
    features = frame[model.names]
    if model.classification:
        return np.asarray(model.pipeline.predict(features)), np.asarray(
            model.pipeline.predict_proba(features)
        )
    return np.asarray(model.pipeline.predict(features), dtype=np.float64).reshape(-1), None


def _key_columns(spec: PipelineSpec) -> list[str]:
    return [*(k for k in spec.key if k != EVENT_TIME), EVENT_TIME]


def _constant(value: str, n: int) -> pa.Array:
    """``n`` copies of one string, built from buffers (no Python list of ``n`` objects)."""
    data = value.encode()
    offsets = np.arange(n + 1, dtype=np.int32) * len(data)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data * n))


def _features(model, batch: pa.RecordBatch, snapshots: history.Snapshots | None = None) -> pd.DataFrame:
    """The batch's model inputs; with ``snapshots``, its history features looked up by entity and time."""
    if snapshots is None:
        return batch.select([n for n in model.names if n in batch.schema.names]).to_pandas()
    keys = [*snapshots.spec.entity_columns, EVENT_TIME]
    columns = list(dict.fromkeys([*(n for n in model.names if n in batch.schema.names), *keys]))
    return snapshots.lookup(batch.select(columns).to_pandas())[model.names]


def _batch_table(
    spec: PipelineSpec,
    model,
    batch: pa.RecordBatch,
    settings: Settings,
    version: str,
    features: pd.DataFrame | None = None,
) -> pa.Table:
    """One batch's predictions; the key columns are taken from the batch as they are (Arrow, no pandas).

    ``features``: the batch's model inputs as a frame, when the reader made it already.
    """
    predictions, probabilities = _predict(model, _features(model, batch) if features is None else features)
    out: dict[str, Any] = {name: batch.column(name) for name in _key_columns(spec)}
    out["prediction"] = predictions
    if probabilities is not None:
        for i, label in enumerate(model.classes or []):
            out[f"proba_{label}"] = probabilities[:, i]
    n = batch.num_rows
    out["model_name"] = _constant(spec.model.registered_name, n)
    out["model_version"] = _constant(version, n)
    out["run_id"] = _constant(settings.run_id, n)
    return pa.table(out)


def _dates(day: dt.date, n: int) -> pa.Array:
    return pa.array(np.full(n, (day - dt.date(1970, 1, 1)).days, dtype=np.int32)).cast(pa.date32())


_PG_TYPES = {
    "double": "double precision",
    "float": "double precision",
    "int64": "bigint",
    "int32": "integer",
    "bool": "boolean",
    "string": "text",
    "large_string": "text",
    "date32[day]": "date",
}


def _pg_columns(schema: pa.Schema) -> list[list[str]]:
    def pg(t: pa.DataType) -> str:
        if pa.types.is_timestamp(t):
            return "timestamp with time zone" if t.tz else "timestamp"
        return _PG_TYPES.get(str(t), "text")

    return [["date", "date"], *([f.name, pg(f.type)] for f in schema)]


def _loads_postgres(spec: PipelineSpec) -> bool:
    return spec.scoring is not None and spec.scoring.postgres is not None


def _scoring_key(resolved: ResolvedModel, settings: Settings) -> dict[str, str]:
    """What a day's scores are a function of, besides its validated rows."""
    return {
        "model_version": resolved.version,
        "model_run_id": resolved.model_run_id,
        "code_version": settings.code_version,
        "path_requested": os.environ.get(PATH_ENV, "").strip() or "auto",
    }


def _already_scored(
    spec: PipelineSpec,
    store: Store,
    day: dt.date,
    version: ValidatedVersion,
    resolved: ResolvedModel,
    settings: Settings,
) -> dict[str, Any] | None:
    """The day's lineage record when its scores came from these very rows, model and code (and are intact).

    A re-run of an interval then changes nothing, not even the run id in the rows: the partition, its
    load file and its lineage stay as the first run wrote them (validate skips a day validated with
    the same bytes in the same way).
    """
    folder = scores_dir(store, day)
    try:
        record = json.loads((folder / LINEAGE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    same = (
        record.get("data", {}).get("validated_sha256") == version.sha256
        and record.get("key") == _scoring_key(resolved, settings)
        and ((folder / LOAD_FILE).is_file() or not _loads_postgres(spec))
        and (folder / SCORES_FILE).is_file()
        and file_sha256(folder / SCORES_FILE) == record.get("sha256")
    )
    return record if same else None


def _score_day(
    spec: PipelineSpec,
    settings: Settings,
    store: Store,
    model,
    resolved: ResolvedModel,
    day: dt.date,
    version: ValidatedVersion,
    batch_rows: int,
) -> tuple[dict[str, Any], pa.Schema]:
    folder = scores_dir(store, day)
    target, load = folder / SCORES_FILE, folder / LOAD_FILE
    source = pq.ParquetFile(parquet_source(version.path))
    total, done, began = source.metadata.num_rows, 0, time.perf_counter()
    wanted = {*model.names, *_key_columns(spec), *spec.history.entity_columns}
    # History features are not in the validated file: looked up per batch from the day's snapshots.
    snapshots = day_history(spec, store, day) if spec.history else None
    columns = [c for c in source.schema_arrow.names if c in wanted]  # only what is scored or kept
    batches = (
        source.iter_batches(batch_size=batch_rows, columns=columns)
        if total
        else iter([pa.RecordBatch.from_pylist([], schema=source.schema_arrow).select(columns)])
    )
    out: dict[str, Any] = {"schema": None, "writer": None, "csv": None}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(target))
        # The load file only when the spec names a table: the DAG's load_postgres copies it in.
        tmp_csv = stack.enter_context(atomic_path(load)) if _loads_postgres(spec) else None

        def read() -> tuple[pa.RecordBatch, pd.DataFrame] | None:
            batch = next(batches, None)
            return None if batch is None else (batch, _features(model, batch, snapshots))

        def write(table: pa.Table) -> None:
            if out["writer"] is None:
                out["schema"] = table.schema
                out["writer"] = stack.enter_context(
                    pq.ParquetWriter(tmp, table.schema, compression="zstd", write_statistics=True)
                )
                if tmp_csv is not None:
                    csv_schema = pa.schema([pa.field("date", pa.date32()), *table.schema])
                    out["csv"] = stack.enter_context(pacsv.CSVWriter(str(tmp_csv), csv_schema))
            out["writer"].write_table(table, row_group_size=batch_rows)
            if out["csv"] is not None:
                out["csv"].write_table(table.add_column(0, "date", _dates(day, table.num_rows)))

        # Reading (and converting) the next batch and writing the previous one overlap the scoring of
        # this one: one I/O thread does both, in order, so at most three batches are held at a time.
        io = ThreadPoolExecutor(1, thread_name_prefix="score-io")
        reading, writing = io.submit(read), None
        try:
            while (item := reading.result()) is not None:
                reading = io.submit(read)
                batch, features = item
                table = _batch_table(spec, model, batch, settings, resolved.version, features)
                if writing is not None:
                    writing.result()
                writing = io.submit(write, table)
                done += table.num_rows
                elapsed = time.perf_counter() - began
                log.info(
                    "scoring progress %s: %d/%d rows (%.0f rows/s, %s path)",
                    day,
                    done,
                    total,
                    done / elapsed if elapsed else 0.0,
                    model.path,
                )
            if writing is not None:
                writing.result()
        finally:
            io.shutdown(wait=True, cancel_futures=True)  # no write still running when the stack closes
    schema = out["schema"]
    # (the stack closes the writers before it renames their files into place, or removes them on error)
    fingerprint = fingerprint_of([version])
    record = {
        "pipeline": spec.name,
        "date": day.isoformat(),
        "rows": done,
        "model": {
            "name": resolved.model_name,
            "version": resolved.version,
            "alias": resolved.alias,
            "uri": resolved.model_uri,
            "run_id": resolved.model_run_id,
            "training_fingerprint": resolved.training_fingerprint,
            "path": model.path,
        },
        "data": {
            "fingerprint": fingerprint,
            "validated_sha256": version.sha256,
            "validated_file": str(version.path.relative_to(store.base)),
        },
        "code_version": settings.code_version,
        "key": _scoring_key(resolved, settings),
        "dag_id": settings.dag_id,
        "run_id": settings.run_id,
        "file": str(target.relative_to(store.base)),
        "sha256": file_sha256(target),
    }
    write_json(record, folder / LINEAGE_FILE)
    return record, schema


def score(
    spec: PipelineSpec, settings: Settings, interval: Interval, version: str | None = None, alias: str = ""
) -> ScoreResult:
    """Score each day of ``interval`` with model ``version`` (None: resolve the alias now).

    ``alias`` is what ``version`` was resolved from at the start of the run (recorded as lineage).
    """
    began = time.perf_counter()
    config = spec.scoring or ScoringSpec()
    store = Store(settings.store, spec.name)
    store.remove_stale_temporaries()
    wanted = [
        d
        for d in days(interval.start, interval.end)
        if d >= spec.data_start and (spec.data_end is None or d <= spec.data_end)
    ]
    if not wanted:
        raise NothingToDo(
            f"[{interval.start}, {interval.end}) holds no day of data of {spec.name} "
            f"({spec.data_start} to {spec.data_end or 'open'})"
        )
    versions = [_validated_day(store, d) for d in wanted]  # every day checked before any is scored
    if version:
        client = _connect(spec, settings)
        try:
            mv = client.get_model_version(spec.model.registered_name, version)
        except Exception as exc:
            raise RegistryError(
                f"{spec.model.registered_name} has no version {version!r} in the registry "
                f"at {settings.tracking_uri}: {exc}"
            ) from exc
        resolved = ResolvedModel(
            pipeline=spec.name,
            model_name=spec.model.registered_name,
            version=str(mv.version),
            alias=alias,
            model_uri=f"models:/{spec.model.registered_name}/{mv.version}",
            model_run_id=mv.run_id or "",
            training_fingerprint=(mv.tags or {}).get("mlcycle.data_fingerprint"),
        )
    else:
        resolved = resolve_version(spec, settings)
    kept = {
        d: _already_scored(spec, store, d, v, resolved, settings)
        for d, v in zip(wanted, versions, strict=True)
    }
    model = _model(resolved.model_uri, settings) if not all(kept.values()) else None
    partitions, schema, paths = [], None, set()
    for day, validated in zip(wanted, versions, strict=True):
        if kept[day] is not None:
            record, day_schema = (
                kept[day],
                pq.read_schema(parquet_source(scores_dir(store, day) / SCORES_FILE)),
            )
            log.info(
                "%s was scored before from the same validated rows with %s version %s and the same code "
                "(run %s): kept as it is",
                day,
                resolved.model_name,
                resolved.version,
                record["run_id"],
            )
        else:
            record, day_schema = _score_day(
                spec, settings, store, model, resolved, day, validated, config.batch_rows
            )
        schema = day_schema
        paths.add(record["model"]["path"])
        partitions.append(
            {
                "date": day.isoformat(),
                "rows": record["rows"],
                "file": record["file"],
                "sha256": record["sha256"],
                "fingerprint": record["data"]["fingerprint"],
            }
        )
    fingerprint = fingerprint_of(versions)
    store.record_lineage(fingerprint, versions)
    rows = sum(p["rows"] for p in partitions)
    seconds = time.perf_counter() - began
    log.info(
        "scored %d row(s) of [%s, %s) with %s version %s (%s path) in %.1f s; data fingerprint %s",
        rows,
        interval.start,
        interval.end,
        resolved.model_name,
        resolved.version,
        model.path if model is not None else "kept",
        seconds,
        fingerprint,
    )
    return ScoreResult(
        pipeline=spec.name,
        start=interval.start.isoformat(),
        end=interval.end.isoformat(),
        model_name=resolved.model_name,
        version=resolved.version,
        model_uri=resolved.model_uri,
        path=model.path if model is not None else "/".join(sorted(paths)),
        path_reason=model.path_reason if model is not None else "every day was scored before: kept",
        rows=rows,
        fingerprint=fingerprint,
        code_version=settings.code_version,
        run_id=settings.run_id,
        partitions=partitions,
        columns=_pg_columns(schema) if schema is not None else [["date", "date"]],
        load_files=[str(scores_dir(store, d) / LOAD_FILE) for d in wanted],
        seconds=round(seconds, 3),
        rows_per_second=round(rows / seconds, 1) if seconds else 0.0,
    )
