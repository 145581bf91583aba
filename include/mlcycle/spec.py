"""The pipeline spec: everything specific to one data set, loaded from YAML.

A new data set is onboarded by writing a spec (see ``include/pipelines/bikeshare.yaml`` and the
README's spec reference); no code changes. Loading checks the whole spec and reports every problem
it finds with its path in the file, so a person can fix them in one go.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mlcycle import spec_schema
from mlcycle.derive import (
    CALENDAR_NAMES,
    CALENDAR_PARTS,
    SOURCE_ALIASES,
    Derivations,
    ambiguous_names,
    parse_derivations,
)
from mlcycle.errors import SpecError
from mlcycle.history import HistorySpec, parse_features
from mlcycle.registry import MODELS, SOURCES, families_for
from mlcycle.spec_schema import (
    PATH_KEYS,  # noqa: F401 - re-exported: the keys whose relative paths a variant resolves
    SpecFileError,
    closest_hint,  # noqa: F401 - re-exported: modeling and aliases name it from here
    parse_date,
    parse_schedule,
    section_keys,
    unknown_key_problems,
)
from mlcycle.spec_schema import DeploySection as _DeploySection
from mlcycle.spec_schema import MonitoringSection as _MonitoringSection
from mlcycle.spec_schema import ScoringSection as _ScoringSection
from mlcycle.spec_schema import ServingSection as _ServingSection

if TYPE_CHECKING:
    from mlcycle.storepath import StorePath

ColumnType = Literal["numeric", "integer", "categorical", "string", "timestamp"]
Role = Literal["feature", "target", "ignore"]

#: Column the ingest step adds to every raw partition: the row's timestamp (UTC).
EVENT_TIME = "event_time"

REGRESSION_METRICS = {"rmse": False, "mae": False, "r2": True}
CLASSIFICATION_METRICS = {"accuracy": True, "f1": True, "roc_auc": True, "log_loss": False}
CATEGORICAL_ENCODINGS = ("auto", "onehot", "native")
#: Under ``categorical_encoding: auto``, categoricals with more allowed values than this are native.
ONEHOT_MAX_VALUES = 16
#: The built-in model families per task (a spec may also name one registered since: mlcycle.registry).
MODEL_FAMILIES = {task: families_for(task) for task in ("regression", "classification")}


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    role: Role = "feature"
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None
    max_null_share: float = 0.0
    #: A partition's standard deviation of this column may not fall below this (a dead sensor reports a
    #: constant). Default for numeric features: above zero; set 0 to allow a constant day.
    min_std: float | None = None
    #: A partition must hold at least this many distinct values of this column.
    min_distinct: int | None = None
    #: Whether build_features refuses a window where this feature is constant (or below its floors):
    #: None judges by kind (measured columns yes; calendar parts and constants by declaration no).
    constant_guard: bool | None = None


@dataclass(frozen=True)
class Source:
    """Where rows come from. ``kind`` selects the reader in ``mlcycle.sources``.

    - ``file``: ``path`` (relative to the spec file, absolute, or ``s3://bucket/key`` in object
      storage, read with the store's keys) and ``format`` (csv or parquet).
    - ``postgres``: ``table`` and ``conn_id`` (an Airflow connection); ``timestamp_column`` on the table.
    - ``http``: ``url`` of a CSV or Parquet file.
    """

    kind: str  #: a key of mlcycle.registry.SOURCES (file, postgres, http, or one registered)
    options: dict[str, Any]
    base_dir: Path

    def path(self) -> StorePath:
        text = str(self.options["path"])
        if text.startswith("s3://"):
            from mlcycle.storepath import store_root

            return store_root(text)
        raw = Path(text)
        return raw if raw.is_absolute() else (self.base_dir / raw).resolve()


@dataclass(frozen=True)
class Timestamp:
    """How a row gets its timestamp.

    - ``column``: parse ``column`` (optionally with ``format``) as a UTC timestamp.
    - ``day_of_year``: ``year`` plus the day-of-year in ``day_column`` and the hour in ``hour_column``.
    """

    kind: Literal["column", "day_of_year"]
    column: str | None = None
    format: str | None = None
    year: int | None = None
    day_column: str | None = None
    hour_column: str | None = None
    #: IANA zone of naive timestamps, and of the daily partitions' boundaries (aware timestamps keep
    #: their own offset; every partition is one local calendar day).
    timezone: str = "UTC"


@dataclass(frozen=True)
class SearchParam:
    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    values: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class ModelSpec:
    family: str
    registered_name: str
    n_iter: int
    cv_folds: int
    seed: int
    space: tuple[SearchParam, ...]
    #: How categorical features reach the model: ``auto`` (one-hot up to ONEHOT_MAX_VALUES allowed
    #: values, native categorical support of gradient boosting above), ``onehot``, ``native``.
    categorical_encoding: str = "auto"
    #: Seconds after which the search stops starting new candidates (at least one always runs).
    budget_seconds: float | None = 600.0
    #: Gradient boosting stops adding trees when a held-out tenth of the training slice stops improving.
    early_stopping: bool = True
    #: The search runs on at most this many rows of the training slice, the same share of every day;
    #: the winner is then refit on all of it. ``None``: the search sees every row.
    max_rows: int | None = 200_000


@dataclass(frozen=True)
class EvaluationSpec:
    metric: str
    greater_is_better: bool
    threshold: float
    tolerance: float
    holdout_days: int


#: Default of ``validation.max_dropped_share``: any row without a timestamp fails the batch; rows
#: outside the source's bounds (``window.data_start``/``data_end``) are counted and reported.
DROPPED_SHARE_DEFAULTS = {"unparseable_timestamp": 0.0, "timestamp_out_of_range": 0.0,
                          "outside_source_bounds": 1.0}


@dataclass(frozen=True)
class Integrity:
    """How validate treats dropped rows and restated days (the spec's ``validation`` section)."""

    key: tuple[str, ...] = ()
    max_restatement_shrink: float = 0.1
    max_dropped_share: dict[str, float] = field(default_factory=lambda: dict(DROPPED_SHARE_DEFAULTS))


@dataclass(frozen=True)
class Schedule:
    """When the pipeline runs (its DAGs' timetable): a daily cron in a time zone, first to last day."""

    interval: str = "@daily"
    timezone: str = "UTC"
    start: dt.date | None = None
    end: dt.date | None = None
    catchup: bool = False


@dataclass(frozen=True)
class ServingSpec:
    """``serving:`` (optional): how the prediction server treats this pipeline's model."""

    tolerance: float = 1e-6  # largest difference allowed between the ONNX fast path and the Pipeline
    unknown_categories: Literal["reject", "accept"] = "reject"  # a category outside `values`
    max_rows: int = 10_000  # rows per request


@dataclass(frozen=True)
class MonitoringSpec:
    """``monitoring:`` (optional): what the monitor step watches and what counts as drift or decay.

    ``columns`` are the features compared with the reference (empty: every feature except those in
    ``exclude`` and those derived only from calendar parts, which differ between one day and a
    multi-week window by construction). ``method``/``threshold``: Evidently's drift test and its
    threshold for every column (empty: Evidently's defaults by column type and size).
    """

    columns: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    method: str | None = None
    threshold: float | None = None
    drift_share: float = 0.5  # share of monitored columns that must drift for the day to be "drift"
    performance_tolerance: float = 0.5  # relative decay of the gate metric against the hold-out score
    min_rows: int = 12  # fewer current rows than this: nothing to monitor
    cooldown_days: int = 7  # a drift day within this many days of the last triggered retrain joins its episode
    #: What the monitor compares: ``auto`` (the serving log, else the validated batch) or ``scoring``
    #: (the batch predictions of ``scoring_<name>``, see ``ScoringSpec``).
    source: Literal["auto", "scoring"] = "auto"


@dataclass(frozen=True)
class ScoringPostgres:
    """``scoring.postgres``: the table the predictions are also written to, through an Airflow connection."""

    conn_id: str
    table: str


@dataclass(frozen=True)
class ScoringSpec:
    """``scoring:`` (optional): the batch scoring DAG ``scoring_<name>`` (``mlcycle.steps.score``).

    ``alias``: the registry alias whose version scores (empty: ``@production``, else ``@champion``).
    ``batch_rows``: rows scored per batch (one Parquet row group each), which bounds the memory.
    ``postgres``: also write the predictions to this table (a re-run replaces the interval's rows).
    """

    alias: str | None = None
    batch_rows: int = 200_000
    postgres: ScoringPostgres | None = None


@dataclass(frozen=True)
class DeploySpec:
    """``deploy:`` (optional): ports, checks and budgets of the deploy DAG (``mlcycle.deploy``)."""

    production_port: int = 8700  # the reverse proxy: what clients call
    slot_ports: tuple[int, int] = (8701, 8702)  # the blue and green slots behind it
    staging_port: int = 8703
    workers: int = 1  # server workers per slot
    auto_approve: bool = False  # promote to production without a person's approval
    approval_timeout_minutes: int = 60  # no answer by then: the run ends, production unchanged
    ready_timeout_seconds: int = 180  # a container not ready by then is a failed deploy
    smoke_rows: int = 500  # evaluation rows compared with the registry model's predictions
    smoke_requests: int = 200  # one-row requests of the smoke test's bounded load
    latency_budget_ms: float = 250.0  # p99 of that load must stay under it
    watch_seconds: int = 120  # after the switch: how long the new slot is watched
    watch_max_error_rate: float = 0.01  # share of 5xx answers the watch allows
    watch_max_p99_ms: float = 500.0  # p99 latency the watch allows


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    description: str
    path: Path
    source: Source
    timestamp: Timestamp
    partition: Literal["daily"]
    task: Literal["regression", "classification"]
    target: str
    columns: tuple[Column, ...]
    min_rows_per_partition: int
    max_rows_per_partition: int | None
    data_start: dt.date
    data_end: dt.date | None
    window_days: int
    min_training_rows: int
    model: ModelSpec
    evaluation: EvaluationSpec
    suite_path: Path
    experiment: str
    schedule: Schedule = Schedule()
    #: Columns that identify a row (the suite checks they are unique together); empty: no key.
    key: tuple[str, ...] = (EVENT_TIME,)
    #: Derived columns, row filters and an optional transform function (``mlcycle.derive``).
    derivations: Derivations = Derivations()
    serving: ServingSpec = ServingSpec()
    deploy: DeploySpec = DeploySpec()
    integrity: Integrity = field(default_factory=lambda: Integrity())
    monitoring: MonitoringSpec = field(default_factory=lambda: MonitoringSpec())
    #: ``scoring:``; None when the spec has no such section (no ``scoring_<name>`` DAG).
    scoring: ScoringSpec | None = None
    #: ``features:``: history features (lags, rolling aggregates), computed from the store.
    history: HistorySpec = HistorySpec()

    @property
    def timezone(self) -> str:
        return self.timestamp.timezone

    @property
    def feature_columns(self) -> list[Column]:
        """The model's inputs: the row's feature columns, then the history features."""
        return self.row_feature_columns + self.history_columns

    @property
    def row_feature_columns(self) -> list[Column]:
        """The feature columns a row carries (from the source, or derived from its columns)."""
        return [c for c in self.columns if c.role == "feature"]

    @property
    def row_feature_names(self) -> list[str]:
        return [c.name for c in self.row_feature_columns]

    @property
    def history_columns(self) -> list[Column]:
        """The history features (``features:``), numbers computed from the entity's past rows."""
        return [Column(name=name, type="numeric") for name in self.history.names]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.feature_columns]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        """A column of the spec, or a history feature (a numeric column the steps compute)."""
        for c in (*self.columns, *self.history_columns):
            if c.name == name:
                return c
        raise KeyError(name)


class _Reader:
    """Walks the raw YAML mapping, collecting every problem instead of stopping at the first."""

    def __init__(self, origin: str):
        self.origin = origin
        self.problems: list[str] = []

    def need(self, data: dict, key: str, where: str, kind: type | tuple = object, default: Any = ...) -> Any:
        if key not in data or data[key] is None:
            if default is ...:
                self.problems.append(f"{where}.{key}: required")
                return None
            return default
        value = data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        numeric = any(k in (int, float) for k in kinds) and bool not in kinds
        if kind is not object and (not isinstance(value, kind) or (numeric and isinstance(value, bool))):
            names = " or ".join(k.__name__ for k in kinds)
            self.problems.append(f"{where}.{key}: expected {names}, got {value!r}")
            return None if default is ... else default
        return value

    def fail_if_any(self) -> None:
        if self.problems:
            raise_problems(self.origin, self.problems)


def raise_problems(origin: Any, problems: list[str]) -> None:
    """The one SpecError of a spec's problems, each on its own line under the spec's path."""
    listing = "\n  - ".join(problems)
    raise SpecError(f"pipeline spec {origin} has {len(problems)} problem(s):\n  - {listing}")


def resolve_spec_path(pipeline: str, pipelines_dir: Path) -> Path:
    """A spec is named either by a path to a YAML file or by its name in ``pipelines_dir``."""
    candidate = Path(pipeline)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        path = candidate
    else:
        path = pipelines_dir / f"{pipeline}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in pipelines_dir.glob("*.yaml")) if pipelines_dir.is_dir() else []
        raise SpecError(
            f"no pipeline spec {pipeline!r}: looked for {path}. "
            f"Known specs in {pipelines_dir}: {', '.join(known) or 'none'}; or pass a path to a YAML file."
        )
    return path.resolve()


def read_spec_file(path: Path) -> dict[str, Any]:
    """A spec file's mapping with ``extends: <path>`` resolved (``mlcycle.spec_schema.read_spec_file``)."""
    try:
        return spec_schema.read_spec_file(path)
    except SpecFileError as exc:
        raise SpecError(str(exc)) from exc


def load_spec(pipeline: str | Path, pipelines_dir: Path | None = None) -> PipelineSpec:
    from mlcycle.settings import DEFAULT_PIPELINES_DIR

    path = resolve_spec_path(str(pipeline), pipelines_dir or DEFAULT_PIPELINES_DIR)
    return parse_spec(read_spec_file(path), path)


def _parse_columns(r: _Reader, raw_columns: Any) -> list[Column]:
    columns: list[Column] = []
    if not isinstance(raw_columns, dict) or not raw_columns:
        r.problems.append("columns: required, a mapping of column name to {type, ...}")
        return columns
    for name, body in raw_columns.items():
        where = f"columns.{name}"
        if not isinstance(body, dict):
            r.problems.append(f"{where}: expected a mapping with at least `type`")
            continue
        ctype = r.need(body, "type", where, str)
        if ctype not in ("numeric", "integer", "categorical", "string", "timestamp"):
            r.problems.append(f"{where}.type: one of numeric, integer, categorical, string, timestamp (got {ctype!r})")
        role = r.need(body, "role", where, str, default="feature")
        if role not in ("feature", "target", "ignore"):
            r.problems.append(f"{where}.role: one of feature, target, ignore (got {role!r})")
        values = body.get("values")
        if ctype == "categorical" and not values:
            r.problems.append(f"{where}.values: a categorical column lists its allowed values")
        share = r.need(body, "max_null_share", where, (int, float), default=0.0)
        if share is not None and not 0 <= share <= 1:
            r.problems.append(f"{where}.max_null_share: between 0 and 1 (got {share})")
        low = r.need(body, "min", where, (int, float), default=None)
        high = r.need(body, "max", where, (int, float), default=None)
        if low is not None and high is not None and low > high:
            r.problems.append(f"{where}: min {low} is greater than max {high}")
        min_std = r.need(body, "min_std", where, (int, float), default=None)
        if min_std is not None and min_std < 0:
            r.problems.append(f"{where}.min_std: zero or more (got {min_std})")
        min_distinct = r.need(body, "min_distinct", where, int, default=None)
        if min_distinct is not None and min_distinct < 1:
            r.problems.append(f"{where}.min_distinct: at least 1 (got {min_distinct})")
        if min_std is not None and ctype not in ("numeric", "integer"):
            r.problems.append(f"{where}.min_std: only for numeric and integer columns")
        guard = r.need(body, "constant_guard", where, bool, default=None)
        if ctype == "timestamp" and role != "ignore":
            r.problems.append(f"{where}: a timestamp column is not a {role}; give it `role: ignore` and derive what "
                              f"the model needs from the row's time (`derive:` hour, day_of_week, ...)")
        if ctype == "timestamp" and (low is not None or high is not None or values):
            r.problems.append(f"{where}: a timestamp column takes no min, max or values")
        columns.append(Column(
            name=str(name), type=ctype, role=role, min_std=min_std, min_distinct=min_distinct,
            constant_guard=guard,
            min=low, max=high,
            values=tuple(values) if values else None,
            max_null_share=float(share or 0.0),
        ))
    return columns


def _parse_space(r: _Reader, raw_space: Any) -> list[SearchParam]:
    params: list[SearchParam] = []
    if not isinstance(raw_space, dict) or not raw_space:
        r.problems.append("model.search.space: required, a mapping of hyper-parameter to its bounds")
        return params
    for name, body in raw_space.items():
        where = f"model.search.space.{name}"
        if isinstance(body, dict) and "values" in body:
            if not isinstance(body["values"], list) or not body["values"]:
                r.problems.append(f"{where}.values: a non-empty list")
                continue
            params.append(SearchParam(name=name, values=tuple(body["values"])))
        elif isinstance(body, dict) and "low" in body and "high" in body:
            low, high = body["low"], body["high"]
            if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and low < high):
                r.problems.append(f"{where}: low < high, both numbers (got {low!r}, {high!r})")
                continue
            if body.get("log") and low <= 0:
                r.problems.append(f"{where}: a log-scaled range needs low > 0")
                continue
            params.append(SearchParam(name=name, low=low, high=high, log=bool(body.get("log")),
                                      integer=bool(body.get("integer"))))
        else:
            r.problems.append(f"{where}: give either `values: [...]` or `low`/`high` bounds")
    return params


def _date(r: _Reader, value: Any, where: str) -> dt.date | None:
    return parse_date(value, where, r.problems)


def _parse_schedule(r: _Reader, raw: dict[str, Any], data_start: dt.date | None, data_end: dt.date | None,
                    window_days: int | None) -> Schedule:
    """The ``schedule:`` section: the one reading of it both sides share (``mlcycle.spec_schema``)."""
    fields = parse_schedule(raw, r.problems, data_start, data_end, window_days)
    return Schedule(interval=fields.interval, timezone=fields.timezone, start=fields.start, end=fields.end,
                    catchup=fields.catchup)


def _parse_key(r: _Reader, raw: dict[str, Any], names: set[str]) -> tuple[str, ...]:
    """``key``: the columns that identify a row (default: the timestamp); ``[]`` or null: no key."""
    if "key" not in raw:
        return (EVENT_TIME,)
    value = raw["key"]
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        r.problems.append(f"spec.key: a list of column names, or [] for none (got {value!r})")
        return ()
    for column in value:
        if names and column not in names and column != EVENT_TIME:
            r.problems.append(f"spec.key: {column!r} is not among the columns (nor {EVENT_TIME})")
    if len(set(value)) != len(value):
        r.problems.append(f"spec.key: a column is listed twice in {value!r}")
    return tuple(value)


def _source_keys(kind: Any) -> tuple[str, ...]:
    """The keys of ``source:`` a registered kind takes; for an unknown kind, any kind's."""
    if isinstance(kind, str) and kind in SOURCES:
        return SOURCES[kind].keys
    return tuple(dict.fromkeys(k for known in SOURCES.values() for k in known.keys))


def _check_keys(r: _Reader, raw: dict[str, Any]) -> None:
    """Every key of every section must be declared by the schema (``mlcycle.spec_schema``): a typo is a
    problem with the closest known key, never silently ignored."""
    r.problems.extend(unknown_key_problems(raw, source_keys=_source_keys))


def _parse_integrity(r: _Reader, val: dict, key: tuple[str, ...]) -> Integrity:
    """How much a restatement may shrink a validated day, and how many dropped rows a window may lose.
    A restatement's rows are compared by the spec's ``key`` (rows added, removed, changed)."""
    shrink = r.need(val, "max_restatement_shrink", "validation", (int, float), default=0.1)
    if isinstance(shrink, bool) or shrink is None or not 0 <= shrink <= 1:
        r.problems.append(f"validation.max_restatement_shrink: a share between 0 and 1 (got {shrink!r})")
        shrink = 0.1
    shares = dict(DROPPED_SHARE_DEFAULTS)
    for reason, share in (r.need(val, "max_dropped_share", "validation", dict, default={}) or {}).items():
        if reason not in shares:
            continue  # an unknown reason is reported by _check_keys, with the closest known one
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            r.problems.append(f"validation.max_dropped_share.{reason}: a share between 0 and 1 (got {share!r})")
        else:
            shares[reason] = float(share)
    return Integrity(key=key, max_restatement_shrink=float(shrink), max_dropped_share=shares)


def parse_spec(raw: dict[str, Any], path: Path) -> PipelineSpec:
    r = _Reader(str(path))
    _check_keys(r, raw)
    name = r.need(raw, "name", "spec", str)
    if isinstance(name, str) and not spec_schema.NAME.match(name):
        r.problems.append(f"spec.name: a plain identifier, letters, digits and underscores, starting with a "
                          f"letter (got {name!r}): it names folders, DAGs and the registered model")
    task = r.need(raw, "task", "spec", str)
    if task not in ("regression", "classification"):
        r.problems.append(f"spec.task: regression or classification (got {task!r})")

    src = r.need(raw, "source", "spec", dict) or {}
    kind = r.need(src, "kind", "source", str)
    if kind not in SOURCES:
        r.problems.append(f"source.kind: one of {', '.join(SOURCES)} (got {kind!r})")
    for key in SOURCES[kind].required if kind in SOURCES else ():
        r.need(src, key, "source", str)
    source = Source(kind=kind, options={k: v for k, v in src.items() if k != "kind"}, base_dir=path.parent)

    ts = r.need(raw, "timestamp", "spec", dict) or {}
    ts_kind = r.need(ts, "kind", "timestamp", str)
    if ts_kind == "column":
        r.need(ts, "column", "timestamp", str)
    elif ts_kind == "day_of_year":
        r.need(ts, "year", "timestamp", int)
        r.need(ts, "day_column", "timestamp", str)
    else:
        r.problems.append(f"timestamp.kind: column or day_of_year (got {ts_kind!r})")
    ts_zone = r.need(ts, "timezone", "timestamp", str, default="UTC")
    try:
        ZoneInfo(str(ts_zone))
    except (ZoneInfoNotFoundError, ValueError):
        r.problems.append(f"timestamp.timezone: an IANA time zone name like America/New_York (got {ts_zone!r})")
    if kind == "postgres" and ts_zone != "UTC":
        r.problems.append("timestamp.timezone: a postgres source is extracted by UTC day; use UTC (or a file source)")
    timestamp = Timestamp(kind=ts_kind, column=ts.get("column"), format=ts.get("format"), year=ts.get("year"),
                          day_column=ts.get("day_column"), hour_column=ts.get("hour_column"), timezone=str(ts_zone))

    partition = r.need(raw, "partition", "spec", str, default="daily")
    if partition != "daily":
        r.problems.append(f"spec.partition: only `daily` is supported (got {partition!r})")

    columns = _parse_columns(r, raw.get("columns"))
    target = r.need(raw, "target", "spec", str)
    names = {c.name for c in columns}
    if target and columns and target not in names:
        r.problems.append(f"spec.target: {target!r} is not among the columns")
    columns = [Column(**{**c.__dict__, "role": "target"}) if c.name == target else c for c in columns]
    if columns and not any(c.role == "feature" for c in columns):
        r.problems.append("columns: at least one column must have role `feature`")
    for ref in (timestamp.column, timestamp.day_column, timestamp.hour_column):
        if ref and columns and ref not in names:
            r.problems.append(f"timestamp: column {ref!r} is not among the columns")

    val = r.need(raw, "validation", "spec", dict, default={})
    min_rows = r.need(val, "min_rows_per_partition", "validation", int, default=1)
    max_rows = r.need(val, "max_rows_per_partition", "validation", int, default=None)

    window = r.need(raw, "window", "spec", dict) or {}
    data_start = _date(r, r.need(window, "data_start", "window"), "window.data_start")
    data_end = _date(r, window.get("data_end"), "window.data_end")
    window_days = r.need(window, "days", "window", int, default=28)
    if window_days is not None and not 1 <= window_days <= 3660:
        r.problems.append(f"window.days: between 1 and 3660 (got {window_days})")
        window_days = None
    min_training_rows = r.need(window, "min_training_rows", "window", int, default=100)
    if min_training_rows is not None and min_training_rows < 1:
        r.problems.append(f"window.min_training_rows: at least 1 (got {min_training_rows})")
    if data_start and data_end and data_end < data_start:
        r.problems.append(f"window: data_end {data_end} is before data_start {data_start}")

    m = r.need(raw, "model", "spec", dict) or {}
    family = r.need(m, "family", "model", str)
    if task in MODEL_FAMILIES and family not in families_for(task):
        r.problems.append(f"model.family: for {task}, one of {', '.join(families_for(task))} (got {family!r})")
    search = r.need(m, "search", "model", dict) or {}
    n_iter = r.need(search, "n_iter", "model.search", int, default=8)
    if n_iter is not None and not 1 <= n_iter <= 200:
        r.problems.append(f"model.search.n_iter: between 1 and 200 (got {n_iter})")
    encoding = r.need(m, "categorical_encoding", "model", str, default="auto")
    if encoding not in CATEGORICAL_ENCODINGS:
        r.problems.append(f"model.categorical_encoding: one of {', '.join(CATEGORICAL_ENCODINGS)} (got {encoding!r})")
    if encoding == "native" and not (family in MODELS and MODELS[family].native_categoricals):
        r.problems.append(f"model.categorical_encoding: native needs hist_gradient_boosting (family is {family!r})")
    budget = r.need(search, "budget_seconds", "model.search", (int, float), default=600.0)
    if isinstance(budget, bool) or (budget is not None and budget <= 0):
        r.problems.append(f"model.search.budget_seconds: a positive number of seconds (got {budget!r})")
    search_rows = search.get("max_rows", 200_000)
    if search_rows is not None and (isinstance(search_rows, bool) or not isinstance(search_rows, int)
                                    or search_rows < 1_000):
        r.problems.append(f"model.search.max_rows: a whole number of rows, at least 1000, or null for every row "
                          f"(got {search_rows!r})")
        search_rows = None
    model = ModelSpec(
        family=family,
        registered_name=r.need(m, "registered_name", "model", str, default=name),
        n_iter=n_iter,
        cv_folds=r.need(search, "cv_folds", "model.search", int, default=3),
        seed=r.need(search, "seed", "model.search", int, default=42),
        space=tuple(_parse_space(r, search.get("space"))),
        categorical_encoding=encoding,
        budget_seconds=float(budget) if isinstance(budget, (int, float)) and not isinstance(budget, bool) else None,
        early_stopping=bool(r.need(search, "early_stopping", "model.search", bool, default=True)),
        max_rows=search_rows,
    )

    e = r.need(raw, "evaluation", "spec", dict) or {}
    metric = r.need(e, "metric", "evaluation", str)
    known = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
    if metric not in known:
        r.problems.append(f"evaluation.metric: for {task}, one of {', '.join(known)} (got {metric!r})")
    threshold = r.need(e, "threshold", "evaluation", (int, float))
    tolerance = r.need(e, "tolerance", "evaluation", (int, float), default=0.0)
    if isinstance(threshold, (int, float)) and not math.isfinite(threshold):
        r.problems.append("evaluation.threshold: a finite number")
    if isinstance(tolerance, (int, float)) and not 0 <= tolerance <= 1:
        r.problems.append(f"evaluation.tolerance: a share between 0 and 1 (got {tolerance})")
    holdout_days = r.need(e, "holdout_days", "evaluation", int, default=7)
    if holdout_days is not None and holdout_days < 1:
        r.problems.append(f"evaluation.holdout_days: at least 1 (got {holdout_days})")
    evaluation = EvaluationSpec(
        metric=metric, greater_is_better=known.get(metric, False),
        threshold=float(threshold or 0.0), tolerance=float(tolerance or 0.0),
        holdout_days=holdout_days or 1,
    )
    if window_days and evaluation.holdout_days and evaluation.holdout_days >= window_days:
        r.problems.append("evaluation.holdout_days: must be smaller than window.days")

    schedule = _parse_schedule(r, raw, data_start, data_end, window_days)
    key = _parse_key(r, raw, names)
    integrity = _parse_integrity(r, val, key)
    derivations = parse_derivations(raw, path.parent, r.problems)
    known = set(names) | {EVENT_TIME, *CALENDAR_NAMES}
    derived = {column for column, _ in derivations.derive}
    known |= {alias for alias, part in SOURCE_ALIASES.items() if part in set(names) - derived}
    r.problems.extend(ambiguous_names(derivations, set(names) - derived))
    for column, expression in derivations.derive:
        if names and column not in names:
            r.problems.append(f"derive.{column}: declare the derived column under `columns` too (its type, "
                              "role and allowed values are checked like any other)")
        for ref in sorted(expression.names - known):
            r.problems.append(f"derive.{column}: {ref!r} is neither a column nor a calendar part "
                              f"({', '.join(CALENDAR_PARTS)})")
    for i, expression in enumerate(derivations.filters):
        for ref in sorted(expression.names - known):
            r.problems.append(f"filter[{i}]: {ref!r} is neither a column nor a calendar part")
    suite_rel = (val or {}).get("suite") or f"../expectations/{name}.json"
    suite_path = Path(suite_rel) if Path(suite_rel).is_absolute() else (path.parent / suite_rel).resolve()
    serving = _parse_serving(r, raw.get("serving"))
    history = parse_features(raw.get("features"), {c.name: c.type for c in columns}, r.problems)
    monitoring = _parse_monitoring(r, raw.get("monitoring"), columns, target, derivations, history.names)
    deploy = _parse_deploy(r, raw.get("deploy"))
    scoring = _parse_scoring(r, raw.get("scoring"))
    if monitoring.source == "scoring" and scoring is None:
        r.problems.append("monitoring.source: scoring needs a `scoring:` section (the batch predictions it watches)")
    r.fail_if_any()
    return PipelineSpec(
        name=name, description=str(raw.get("description", "")).strip(), path=path,
        source=source, timestamp=timestamp, partition=partition, task=task, target=target,
        columns=tuple(columns), min_rows_per_partition=min_rows, max_rows_per_partition=max_rows,
        data_start=data_start, data_end=data_end, window_days=window_days,
        min_training_rows=min_training_rows, model=model, evaluation=evaluation,
        suite_path=suite_path, experiment=str(raw.get("experiment") or name), schedule=schedule,
        key=key, derivations=derivations, serving=serving, integrity=integrity, monitoring=monitoring,
        deploy=deploy, scoring=scoring, history=history,
    )


def _parse_serving(r: _Reader, raw: Any) -> ServingSpec:
    if raw is None:
        return ServingSpec()
    if not isinstance(raw, dict):
        r.problems.append(f"serving: a mapping with {', '.join(f'`{k}`' for k in section_keys(_ServingSection))}")
        return ServingSpec()
    tolerance = r.need(raw, "tolerance", "serving", (int, float), default=1e-6)
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        r.problems.append(f"serving.tolerance: a finite number >= 0 (got {tolerance})")
    unknown = r.need(raw, "unknown_categories", "serving", str, default="reject")
    if unknown not in ("reject", "accept"):
        r.problems.append(f"serving.unknown_categories: reject or accept (got {unknown!r})")
    max_rows = r.need(raw, "max_rows", "serving", int, default=10_000)
    if max_rows is not None and max_rows < 1:
        r.problems.append(f"serving.max_rows: at least 1 (got {max_rows})")
    return ServingSpec(tolerance=float(tolerance or 0.0), unknown_categories=unknown, max_rows=max_rows or 1)


MONITORING_KEYS = section_keys(_MonitoringSection)
#: Evidently's column drift tests (``evidently.legacy.calculations.stattests``) a spec may name.
DRIFT_METHODS = ("ks", "chisquare", "z", "wasserstein", "psi", "kl_div", "jensenshannon", "anderson",
                 "cramer_von_mises", "energy_distance", "epps_singleton", "fisher_exact", "g_test",
                 "hellinger", "mannw", "t_test", "empirical_mmd", "TVD")

#: Drift tests that only take numeric columns.
NUMERIC_DRIFT_METHODS = ("ks", "wasserstein", "anderson", "cramer_von_mises", "energy_distance", "epps_singleton",
                         "mannw", "t_test", "empirical_mmd")


def _parse_monitoring(r: _Reader, raw: Any, columns: list[Column], target: Any,
                      derivations: Derivations, history: list[str]) -> MonitoringSpec:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        r.problems.append(f"monitoring: a mapping with {', '.join(MONITORING_KEYS)}")
        return MonitoringSpec()
    features = [c.name for c in columns if c.role == "feature"] + list(history)
    listed: dict[str, tuple[str, ...]] = {}
    for key in ("columns", "exclude"):
        value = raw.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            r.problems.append(f"monitoring.{key}: a list of feature names (got {value!r})")
            value = []
        for name in value:
            if name not in features:
                close = difflib.get_close_matches(name, features, n=1)
                hint = f"; did you mean `{close[0]}`?" if close else f" (features: {', '.join(features)})"
                r.problems.append(f"monitoring.{key}: {name!r} is not a feature{hint}")
        listed[key] = tuple(value)
    method = r.need(raw, "method", "monitoring", str, default=None)
    if method is not None and method not in DRIFT_METHODS:
        close = difflib.get_close_matches(method, DRIFT_METHODS, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else f" (known: {', '.join(DRIFT_METHODS)})"
        r.problems.append(f"monitoring.method: unknown drift test {method!r}{hint}")
    threshold = r.need(raw, "threshold", "monitoring", (int, float), default=None)
    if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
        r.problems.append(f"monitoring.threshold: a positive number (got {threshold})")
    if threshold is not None and method is None:
        r.problems.append("monitoring.threshold: set `method` too (the defaults differ by column type)")
    share = r.need(raw, "drift_share", "monitoring", (int, float), default=0.5)
    if share is not None and not 0 <= share < 1:
        r.problems.append(f"monitoring.drift_share: a share in [0, 1) (got {share})")
    tolerance = r.need(raw, "performance_tolerance", "monitoring", (int, float), default=0.5)
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        r.problems.append(f"monitoring.performance_tolerance: a relative decay >= 0 (got {tolerance})")
    min_rows = r.need(raw, "min_rows", "monitoring", int, default=12)
    if min_rows is not None and min_rows < 2:
        r.problems.append(f"monitoring.min_rows: at least 2 (got {min_rows})")
    cooldown = r.need(raw, "cooldown_days", "monitoring", int, default=7)
    if cooldown is not None and cooldown < 0:
        r.problems.append(f"monitoring.cooldown_days: zero or more (got {cooldown})")
    chosen = listed["columns"] or tuple(
        f for f in features if f not in listed["exclude"] and f not in _calendar_columns(derivations))
    if features and not chosen:
        r.problems.append("monitoring: no feature left to monitor (check `columns` and `exclude`)")
    categorical = [c.name for c in columns if c.name in chosen and c.type in ("categorical", "string")]
    if method in NUMERIC_DRIFT_METHODS and categorical:
        r.problems.append(f"monitoring.method: {method} compares numbers, but {', '.join(categorical)} "
                          "is categorical; list numeric `columns`, or leave `method` empty")
    return MonitoringSpec(columns=chosen, exclude=listed["exclude"], method=method,
                          threshold=float(threshold) if threshold is not None else None,
                          drift_share=float(share if share is not None else 0.5),
                          performance_tolerance=float(tolerance if tolerance is not None else 0.5),
                          min_rows=min_rows or 12, cooldown_days=cooldown if cooldown is not None else 7,
                          source=_monitoring_source(r, raw))


def _monitoring_source(r: _Reader, raw: dict) -> Any:
    source = r.need(raw, "source", "monitoring", str, default="auto")
    if source not in ("auto", "scoring"):
        r.problems.append(f"monitoring.source: auto or scoring (got {source!r})")
        return "auto"
    return source


SCORING_KEYS = section_keys(_ScoringSection)


def _parse_scoring(r: _Reader, raw: Any) -> ScoringSpec | None:
    """``scoring:``: absent means no scoring DAG; ``scoring: {}`` one with every default."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        r.problems.append(f"scoring: a mapping with {', '.join(SCORING_KEYS)} (or {{}} for the defaults)")
        return None
    alias = r.need(raw, "alias", "scoring", str, default=None)
    if alias is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,62}", alias):
        r.problems.append(f"scoring.alias: a registry alias such as champion or production (got {alias!r})")
    batch_rows = r.need(raw, "batch_rows", "scoring", int, default=200_000)
    if batch_rows is not None and batch_rows < 1:
        r.problems.append(f"scoring.batch_rows: at least 1 (got {batch_rows})")
    postgres = None
    pg = raw.get("postgres")
    if pg is not None:
        if not isinstance(pg, dict):
            r.problems.append("scoring.postgres: a mapping with conn_id and table")
        else:
            conn_id = r.need(pg, "conn_id", "scoring.postgres", str)
            table = r.need(pg, "table", "scoring.postgres", str)
            if table is not None and not spec_schema.TABLE.match(table):
                r.problems.append(f"scoring.postgres.table: a table name, optionally schema-qualified "
                                  f"(letters, digits, underscores; got {table!r})")
            if conn_id and table:
                postgres = ScoringPostgres(conn_id=conn_id, table=table)
    return ScoringSpec(alias=alias, batch_rows=batch_rows or 200_000, postgres=postgres)


def _calendar_columns(derivations: Derivations) -> set[str]:
    """Derived columns that read nothing but calendar parts (a weekday, a month)."""
    return {column for column, expression in derivations.derive
            if expression.names and expression.names <= set(CALENDAR_NAMES)}


DEPLOY_KEYS = section_keys(_DeploySection)


def _parse_deploy(r: _Reader, raw: Any) -> DeploySpec:
    if raw is None:
        return DeploySpec()
    if not isinstance(raw, dict):
        r.problems.append(f"deploy: a mapping with {', '.join(DEPLOY_KEYS)}")
        return DeploySpec()
    default = DeploySpec()
    values: dict[str, Any] = {}
    for f in fields(DeploySpec):
        value = getattr(default, f.name)
        if f.name == "slot_ports":
            ports = r.need(raw, "slot_ports", "deploy", list, default=list(value))
            if not (len(ports) == 2 and all(isinstance(p, int) and not isinstance(p, bool) for p in ports)):
                r.problems.append(f"deploy.slot_ports: two port numbers, blue and green (got {ports!r})")
                ports = list(value)
            values[f.name] = tuple(ports)
        elif isinstance(value, bool):
            values[f.name] = r.need(raw, f.name, "deploy", bool, default=value)
        elif isinstance(value, float):
            values[f.name] = float(r.need(raw, f.name, "deploy", (int, float), default=value))
        else:
            values[f.name] = r.need(raw, f.name, "deploy", int, default=value)
    spec = DeploySpec(**values)
    ports = [spec.production_port, *spec.slot_ports, spec.staging_port]
    if any(not 1 <= p <= 65535 for p in ports) or len(set(ports)) != len(ports):
        r.problems.append(f"deploy: production_port, slot_ports and staging_port must be four different ports "
                          f"(got {ports})")
    for name in ("workers", "approval_timeout_minutes", "ready_timeout_seconds", "smoke_rows", "smoke_requests",
                 "watch_seconds"):
        if getattr(spec, name) < (0 if name == "watch_seconds" else 1):
            r.problems.append(f"deploy.{name}: at least {0 if name == 'watch_seconds' else 1} "
                              f"(got {getattr(spec, name)})")
    if not 0 <= spec.watch_max_error_rate <= 1:
        r.problems.append(f"deploy.watch_max_error_rate: a share between 0 and 1 (got {spec.watch_max_error_rate})")
    for name in ("latency_budget_ms", "watch_max_p99_ms"):
        if not (math.isfinite(getattr(spec, name)) and getattr(spec, name) > 0):
            r.problems.append(f"deploy.{name}: a number of milliseconds > 0 (got {getattr(spec, name)})")
    return spec
