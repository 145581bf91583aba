"""The pipeline spec's schema: every section and key, declared once, read by both sides.

The step package (``mlcycle.spec``, which checks a spec in full before a step runs) and the DAG files
(``dags/pipeline_support/specs.py``, which read what scheduling needs at parse time) both take from
here, so they cannot drift apart:

- the sections and their keys, as pydantic models with ``extra="forbid"``: the known keys of every
  section are derived from them (:func:`unknown_key_problems`, one typo per key is tested from this
  declaration) and so is the JSON Schema editors read (``mlcycle spec-schema``);
- reading a spec file with ``extends:`` resolved (:func:`read_spec_file`);
- the ``schedule:`` section with its defaults and checks (:func:`parse_schedule`), dates and the
  once-a-day cron check.

It needs only PyYAML and pydantic (both environments have them) and imports nothing else of the
step package. Types and value checks with their messages stay in ``mlcycle.spec``; the models'
types and defaults document them and are tested against it (``tests/unit/test_spec_schema.py``).
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

#: A pipeline's name: it names folders, DAGs and the registered model.
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
#: A PostgreSQL table name, optionally schema-qualified (``scoring.postgres.table``, a drafted source).
TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


class SpecFileError(ValueError):
    """A spec file cannot be read: it names the file and what to fix. Each side re-raises it as its own."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSection(BaseModel):
    """``source:``: ``kind`` picks the reader; the other keys are the kind's (its registration lists them)."""

    model_config = ConfigDict(extra="allow")
    kind: str = Field(description="file, postgres, http, or a kind registered by an extension")
    path: str | None = Field(None, description="file: the data file, relative to the spec")
    format: Literal["csv", "parquet"] | None = Field(None, description="file, http: csv or parquet")
    table: str | None = Field(None, description="postgres: the table")
    conn_id: str | None = Field(None, description="postgres: the Airflow connection")
    timestamp_column: str | None = Field(None, description="postgres: the table's timestamp column")
    url: str | None = Field(None, description="http: the URL of a CSV or Parquet file")
    timeout_seconds: float | None = Field(None, description="http: the download's timeout")


class TimestampSection(_Section):
    kind: Literal["column", "day_of_year"]
    column: str | None = None
    format: str | None = None
    year: int | None = None
    day_column: str | None = None
    hour_column: str | None = None
    timezone: str = Field("UTC", description="IANA zone of naive timestamps and of the daily partitions")


class ColumnSection(_Section):
    type: Literal["numeric", "integer", "categorical", "string", "timestamp"]
    role: Literal["feature", "target", "ignore"] = "feature"
    min: float | None = None
    max: float | None = None
    values: list[Any] | None = Field(None, description="the allowed categories, in order")
    max_null_share: float = 0.0
    min_std: float | None = None
    min_distinct: int | None = None
    constant_guard: bool | None = None


class DroppedShareSection(_Section):
    unparseable_timestamp: float = 0.0
    timestamp_out_of_range: float = 0.0
    outside_source_bounds: float = 1.0


class ValidationSection(_Section):
    suite: str | None = Field(None, description="the GX suite's path (default ../expectations/<name>.json)")
    min_rows_per_partition: int = 1
    max_rows_per_partition: int | None = None
    max_restatement_shrink: float = 0.1
    max_dropped_share: DroppedShareSection = Field(default_factory=DroppedShareSection)


class WindowSection(_Section):
    data_start: dt.date
    data_end: dt.date | None = None
    days: int = 28
    min_training_rows: int = 100


class ScheduleSection(_Section):
    interval: str = "@daily"
    timezone: str | None = Field(None, description="IANA name; default the timestamp's, else UTC")
    start: dt.date | None = Field(
        None, description="first logical date; default data_start + days (+ the history features' lookback)"
    )
    end: dt.date | None = Field(None, description="last logical date; default data_end")
    catchup: bool = False


class SpaceParam(_Section):
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    values: list[Any] | None = None


class SearchSection(_Section):
    n_iter: int = 8
    cv_folds: int = 3
    seed: int = 42
    space: dict[str, SpaceParam]
    budget_seconds: float | None = 600.0
    early_stopping: bool = True
    max_rows: int | None = 200_000


class ModelSection(_Section):
    family: str
    registered_name: str | None = None
    categorical_encoding: Literal["auto", "onehot", "native"] = "auto"
    search: SearchSection


class EvaluationSection(_Section):
    metric: str
    holdout_days: int = 7
    threshold: float
    tolerance: float = 0.0


class ServingSection(_Section):
    tolerance: float = 1e-6
    unknown_categories: Literal["reject", "accept"] = "reject"
    max_rows: int = 10_000


class MonitoringSection(_Section):
    columns: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    method: str | None = None
    threshold: float | None = None
    drift_share: float = 0.5
    performance_tolerance: float = 0.5
    min_rows: int = 12
    cooldown_days: int = 7
    source: Literal["auto", "scoring"] = "auto"


class ScoringPostgresSection(_Section):
    conn_id: str
    table: str


class ScoringSection(_Section):
    alias: str | None = None
    batch_rows: int = 200_000
    postgres: ScoringPostgresSection | None = None


class HistoryFeatureSection(_Section):
    """One history feature: a lag (``of`` and ``lag``) or a rolling aggregate (``agg`` and ``window``)."""

    of: str | None = Field(None, description="the column (or expression) it reads; a condition for share")
    lag: str | None = Field(None, description="lag: the value this long before the row (24h, 7d)")
    agg: Literal["count", "sum", "mean", "min", "max", "share"] | None = Field(
        None, description="a rolling aggregate over `window` (share: the share of rows where `of` holds)"
    )
    window: str | None = Field(None, description="the rolling window ending at the row (1h, 7d)")
    available_after: str | None = Field(
        None, description="the data's delay: rows newer than this are not seen"
    )
    entity: list[str] | None = Field(None, description="the entity's columns (default: the section's entity)")
    fill: float | None = Field(None, description="the value when the history is missing (default: null)")


class FeaturesSection(_Section):
    """``features:``: history features computed from the store, point-in-time correct (mlcycle.history)."""

    entity: list[str] = Field(default_factory=list, description="the entity's columns; []: one global series")
    every: str = Field("1d", description="the grid the features are computed on (a divisor of a day)")
    available_after: str = Field("0h", description="default delay of every feature")
    max_age: str = Field("2d", description="monitoring warns when the online store is older than this")
    history: dict[str, HistoryFeatureSection] = Field(default_factory=dict, description="name -> feature")


class DeploySection(_Section):
    production_port: int = 8700
    slot_ports: list[int] = Field(default_factory=lambda: [8701, 8702])
    staging_port: int = 8703
    workers: int = 1
    auto_approve: bool = False
    approval_timeout_minutes: int = 60
    ready_timeout_seconds: int = 180
    smoke_rows: int = 500
    smoke_requests: int = 200
    latency_budget_ms: float = 250.0
    watch_seconds: int = 120
    watch_max_error_rate: float = 0.01
    watch_max_p99_ms: float = 500.0


class PipelineSpecSchema(_Section):
    """A pipeline spec (``include/pipelines/<name>.yaml``); the README's spec reference says what each key means."""

    model_config = ConfigDict(extra="forbid", title="mlcycle pipeline spec")
    name: str = Field(pattern=NAME.pattern)
    description: str | None = None
    extends: str | None = Field(None, description="path of a spec this one overrides key by key")
    task: Literal["regression", "classification"]
    target: str
    source: SourceSection
    timestamp: TimestampSection
    partition: Literal["daily"] = "daily"
    key: list[str] | str | None = None
    columns: dict[str, ColumnSection]
    derive: dict[str, str] | None = Field(None, description="new column name -> expression")
    filter: list[str] | str | None = None
    transform: str | None = Field(None, description="<path to a .py file, relative to the spec>:<function>")
    validation: ValidationSection | None = None
    window: WindowSection
    schedule: ScheduleSection | None = None
    model: ModelSection
    evaluation: EvaluationSection
    experiment: str | None = None
    serving: ServingSection | None = None
    monitoring: MonitoringSection | None = None
    deploy: DeploySection | None = None
    scoring: ScoringSection | None = None
    features: FeaturesSection | None = None


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema (what ``mlcycle spec-schema`` prints), for editors and linters."""
    schema = PipelineSpecSchema.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# --- the known keys, derived from the models ------------------------------------------------------


def _nested(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """``("model", M)`` for a field holding an M, ``("mapping", M)`` for ``dict[str, M]``, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    origin = typing.get_origin(annotation)
    if origin is dict:
        inner = _nested(typing.get_args(annotation)[1])
        return ("mapping", inner[1]) if inner and inner[0] == "model" else None
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _nested(arg)
            if found:
                return found
    return None


def section_keys(model: type[BaseModel] = PipelineSpecSchema) -> tuple[str, ...]:
    """The keys a section declares, in declaration order."""
    return tuple(model.model_fields)


def key_paths(model: type[BaseModel] = PipelineSpecSchema, prefix: str = "") -> list[str]:
    """Every key the schema declares, as a dotted path (``columns.<name>.min``, ``model.search.n_iter``)."""
    paths: list[str] = []
    for key, info in model.model_fields.items():
        path = f"{prefix}{key}"
        paths.append(path)
        nested = _nested(info.annotation)
        if nested:
            kind, inner = nested
            paths += key_paths(inner, f"{path}.<name>." if kind == "mapping" else f"{path}.")
    return paths


def closest_hint(name: Any, known) -> str:
    """``; did you mean `x`?`` for the closest of ``known``, else `` (known: ...)``."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f"; did you mean `{close[0]}`?" if close else f" (known: {', '.join(sorted(map(str, known)))})"


def unknown_key_problems(
    raw: Any, model: type[BaseModel] = PipelineSpecSchema, where: str = "spec", source_keys=None
) -> list[str]:
    """Every key of ``raw`` that its section does not declare, with the closest known key.

    A typo (``mn`` for ``min``) would otherwise be ignored without a word. A key set to null is
    allowed (a variant unsets an inherited key with it). ``source_keys`` (``source.kind`` as written ->
    the keys that kind takes) checks
    the ``source:`` section by kind; without it (the DAG side) that section is left to the steps,
    which know the kinds that extensions register.
    """
    if not isinstance(raw, dict):
        return []
    problems: list[str] = []
    if model is SourceSection:
        if source_keys is not None:
            known = source_keys(raw.get("kind"))
            problems += [
                f"{where}.{k}: unknown key{closest_hint(k, known)}"
                for k, v in raw.items()
                if k not in known and v is not None
            ]
        return problems
    fields = model.model_fields
    for key, value in raw.items():
        if key not in fields:
            if value is not None:
                problems.append(f"{where}.{key}: unknown key{closest_hint(key, fields)}")
            continue
        nested = _nested(fields[key].annotation)
        if nested is None or value is None:
            continue
        kind, inner = nested
        inner_where = where if where != "spec" else ""
        path = f"{inner_where}.{key}" if inner_where else str(key)
        if kind == "model":
            problems += unknown_key_problems(value, inner, path, source_keys)
        elif isinstance(value, dict):
            for name, body in value.items():
                problems += unknown_key_problems(body, inner, f"{path}.{name}", source_keys)
    return problems


# --- reading a spec file ----------------------------------------------------------------------------

#: Keys of a spec that hold paths relative to the spec file: made absolute when a variant extends it
#: (a URI such as ``s3://bucket/key`` is left as it is).
PATH_KEYS = (("source", "path"), ("validation", "suite"))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_spec_file(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A spec file's mapping with ``extends: <path>`` resolved: the base (its relative paths resolved
    against its own folder), deep-merged with the file's own keys, which win."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise SpecFileError(f"pipeline spec {_seen[0]}: `extends` goes round in a circle: {chain}")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecFileError(f"cannot read pipeline spec {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecFileError(f"pipeline spec {path} must be a YAML mapping at the top level")
    for section, key in PATH_KEYS:
        value = raw[section].get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str) and not Path(value).is_absolute() and "://" not in value:
            raw[section] = {**raw[section], key: str((path.parent / value).resolve())}
    base_ref = raw.pop("extends", None)
    if base_ref is None:
        return raw
    if not isinstance(base_ref, str):
        raise SpecFileError(f"pipeline spec {path}: `extends` is the path of another spec (got {base_ref!r})")
    base_path = Path(base_ref) if Path(base_ref).is_absolute() else path.parent / base_ref
    if not base_path.is_file():
        raise SpecFileError(
            f"pipeline spec {path}: `extends: {base_ref}` names no file ({base_path.resolve()})"
        )
    return deep_merge(read_spec_file(base_path, (*_seen, path)), raw)


# --- dates and the schedule -------------------------------------------------------------------------

_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_date(value: Any, where: str, problems: list[str]) -> dt.date | None:
    """A date as YAML gives it (unquoted ``2011-01-31``) or as a ``YYYY-MM-DD`` string; else a problem."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _ISO_DAY.fullmatch(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    problems.append(f"{where}: an ISO date like 2011-01-01 (got {value!r})")
    return None


def is_daily_cron(expression: str) -> bool:
    """``@daily``/``@midnight`` or a five-field cron that fires once a day (fixed minute and hour)."""
    if expression in ("@daily", "@midnight"):
        return True
    fields = expression.split()
    return (
        len(fields) == 5
        and all(f.isdigit() and len(f) <= 2 for f in fields[:2])
        and int(fields[0]) < 60
        and int(fields[1]) < 24
        and fields[2:] == ["*", "*", "*"]
    )


def known_timezone(name: Any) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(name, str):
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


class ScheduleFields(typing.NamedTuple):
    interval: str
    timezone: str
    start: dt.date | None
    end: dt.date | None
    catchup: bool


def window_bounds(raw: dict[str, Any], problems: list[str]) -> tuple[dt.date | None, dt.date | None, int]:
    """``window.data_start``, ``window.data_end`` and ``window.days`` (default 28), each checked."""
    window = raw.get("window") if isinstance(raw.get("window"), dict) else {}
    data_start = parse_date(window.get("data_start"), "window.data_start", problems)
    data_end = parse_date(window.get("data_end"), "window.data_end", problems)
    days = window.get("days")
    default = WindowSection.model_fields["days"].default
    if days is None:
        days = default
    elif isinstance(days, bool) or not isinstance(days, int) or days < 1:
        problems.append(f"window.days: a whole number of days, at least 1 (got {days!r})")
        days = default
    return data_start, data_end, days


def clipped_window(
    end: dt.date, days: int, data_start: dt.date, data_end: dt.date | None
) -> tuple[dt.date, dt.date]:
    """The days a run ending ``end`` trains on, ``[start, stop)``: the ``days`` before ``end``,
    clipped to the data's bounds. The steps and the DAG side's extract both use it."""
    stop = min(end, data_end + dt.timedelta(days=1)) if data_end is not None else end
    return max(end - dt.timedelta(days=days), data_start), stop


_DURATION = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|d)\s*$")
_DURATION_UNIT = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any, where: str, problems: list[str]) -> dt.timedelta | None:
    """``30min``, ``1h``, ``7d`` (or a whole number of seconds); else a problem naming ``where``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return dt.timedelta(seconds=value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        problems.append(f"{where}: a duration such as 30min, 1h or 7d (got {value!r})")
        return None
    return dt.timedelta(seconds=int(match.group(1)) * _DURATION_UNIT[match.group(2)])


def history_lookback_days(raw: dict[str, Any]) -> int:
    """Whole days before the training window that the ``features:`` section's longest window or lag
    reads (0 without one; a malformed value counts as none: the full check is the step package's)."""
    section = raw.get("features") if isinstance(raw.get("features"), dict) else {}
    history = section.get("history") if isinstance(section.get("history"), dict) else {}
    longest = dt.timedelta(0)
    for body in history.values():
        if isinstance(body, dict):
            span = parse_duration(body.get("lag") or body.get("window"), "", [])
            longest = max(longest, span or dt.timedelta(0))
    return -(-longest // dt.timedelta(days=1))


def data_window(
    end: dt.date, days: int, data_start: dt.date, data_end: dt.date | None, lookback_days: int
) -> tuple[dt.date, dt.date]:
    """The days ingest and validate bring into the store for a run ending ``end``: its training window
    (:func:`clipped_window`) and the ``lookback_days`` before it that history features read."""
    start, stop = clipped_window(end, days, data_start, data_end)
    return max(start - dt.timedelta(days=lookback_days), data_start), stop


def parse_schedule(
    raw: dict[str, Any],
    problems: list[str],
    data_start: dt.date | None,
    data_end: dt.date | None,
    window_days: int | None,
) -> ScheduleFields:
    """The ``schedule:`` section with its defaults (start: ``data_start + window_days``; end:
    ``data_end``), appending every problem to ``problems`` with its path in the file."""
    defaults = ScheduleSection()
    section = raw.get("schedule")
    if section is None:
        section = {}
    if not isinstance(section, dict):
        problems.append(
            f"schedule: a mapping with {', '.join(section_keys(ScheduleSection))} (got {section!r})"
        )
        section = {}
    interval = section.get("interval", defaults.interval)
    if not isinstance(interval, str) or not is_daily_cron(interval):
        problems.append(
            f"schedule.interval: @daily or a cron that runs once a day, like '0 6 * * *' "
            f"(partitions are daily; got {interval!r})"
        )
        interval = defaults.interval
    ts = raw.get("timestamp") if isinstance(raw.get("timestamp"), dict) else {}
    timezone = section.get("timezone", ts.get("timezone") or "UTC")
    if not known_timezone(timezone):
        problems.append(f"schedule.timezone: an IANA time zone name like Europe/Paris (got {timezone!r})")
    start = parse_date(section.get("start"), "schedule.start", problems)
    if start is None and data_start is not None and "start" not in section:
        days = window_days or WindowSection.model_fields["days"].default
        # the first day with a full window, and with the history its features read before it
        start = data_start + dt.timedelta(days=days + history_lookback_days(raw))
        if data_end is not None and "end" not in section:
            start = min(start, data_end)  # a data set shorter than its window: its last day at least
    end = parse_date(section.get("end"), "schedule.end", problems) if "end" in section else data_end
    if start and end and end < start:
        problems.append(f"schedule: end {end} is before start {start}")
    if data_start and start and start < data_start:
        problems.append(f"schedule.start: {start} is before window.data_start {data_start}: no data")
    if data_end and end and end > data_end:
        problems.append(f"schedule.end: {end} is after window.data_end {data_end}: no data to train on")
    catchup = section.get("catchup", defaults.catchup)
    if not isinstance(catchup, bool):
        problems.append(f"schedule.catchup: true or false (got {catchup!r})")
        catchup = defaults.catchup
    return ScheduleFields(interval=interval, timezone=str(timezone), start=start, end=end, catchup=catchup)
