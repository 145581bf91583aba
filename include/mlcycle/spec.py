"""The pipeline spec: everything specific to one data set, loaded from YAML.

A new data set is onboarded by writing a spec (see ``include/pipelines/bikeshare.yaml`` and the
README's spec reference); no code changes. Loading checks the whole spec and reports every problem
it finds with its path in the file, so a person can fix them in one go.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from mlcycle.errors import SpecError

ColumnType = Literal["numeric", "integer", "categorical", "string"]
Role = Literal["feature", "target", "ignore"]

#: Column the ingest step adds to every raw partition: the row's timestamp (UTC).
EVENT_TIME = "event_time"

REGRESSION_METRICS = {"rmse": False, "mae": False, "r2": True}
CLASSIFICATION_METRICS = {"accuracy": True, "f1": True, "roc_auc": True, "log_loss": False}
MODEL_FAMILIES = {
    "regression": ("hist_gradient_boosting", "random_forest", "ridge"),
    "classification": ("hist_gradient_boosting", "random_forest", "logistic_regression"),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    role: Role = "feature"
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None
    max_null_share: float = 0.0


@dataclass(frozen=True)
class Source:
    """Where rows come from. ``kind`` selects the reader in ``mlcycle.sources``.

    - ``file``: ``path`` (relative to the spec file) and ``format`` (csv or parquet).
    - ``postgres``: ``table`` and ``conn_id`` (an Airflow connection); ``timestamp_column`` on the table.
    - ``http``: ``url`` of a CSV or Parquet file.
    """

    kind: Literal["file", "postgres", "http"]
    options: dict[str, Any]
    base_dir: Path

    def path(self) -> Path:
        raw = Path(str(self.options["path"]))
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


@dataclass(frozen=True)
class EvaluationSpec:
    metric: str
    greater_is_better: bool
    threshold: float
    tolerance: float
    holdout_days: int


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

    @property
    def feature_columns(self) -> list[Column]:
        return [c for c in self.columns if c.role == "feature"]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.feature_columns]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
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
        if kind is not object and not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            self.problems.append(f"{where}.{key}: expected {names}, got {value!r}")
            return None if default is ... else default
        return value

    def fail_if_any(self) -> None:
        if self.problems:
            listing = "\n  - ".join(self.problems)
            raise SpecError(f"pipeline spec {self.origin} has {len(self.problems)} problem(s):\n  - {listing}")


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


def load_spec(pipeline: str | Path, pipelines_dir: Path | None = None) -> PipelineSpec:
    from mlcycle.settings import DEFAULT_PIPELINES_DIR

    path = resolve_spec_path(str(pipeline), pipelines_dir or DEFAULT_PIPELINES_DIR)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read pipeline spec {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"pipeline spec {path} must be a YAML mapping at the top level")
    return parse_spec(raw, path)


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
        if ctype not in ("numeric", "integer", "categorical", "string"):
            r.problems.append(f"{where}.type: one of numeric, integer, categorical, string (got {ctype!r})")
        role = r.need(body, "role", where, str, default="feature")
        if role not in ("feature", "target", "ignore"):
            r.problems.append(f"{where}.role: one of feature, target, ignore (got {role!r})")
        values = body.get("values")
        if ctype == "categorical" and not values:
            r.problems.append(f"{where}.values: a categorical column lists its allowed values")
        share = r.need(body, "max_null_share", where, (int, float), default=0.0)
        if share is not None and not 0 <= share <= 1:
            r.problems.append(f"{where}.max_null_share: between 0 and 1 (got {share})")
        columns.append(Column(
            name=str(name), type=ctype, role=role,
            min=body.get("min"), max=body.get("max"),
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
    if value is None:
        return None
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        r.problems.append(f"{where}: an ISO date like 2011-01-01 (got {value!r})")
        return None


def parse_spec(raw: dict[str, Any], path: Path) -> PipelineSpec:
    r = _Reader(str(path))
    name = r.need(raw, "name", "spec", str)
    task = r.need(raw, "task", "spec", str)
    if task not in ("regression", "classification"):
        r.problems.append(f"spec.task: regression or classification (got {task!r})")

    src = r.need(raw, "source", "spec", dict) or {}
    kind = r.need(src, "kind", "source", str)
    if kind not in ("file", "postgres", "http"):
        r.problems.append(f"source.kind: one of file, postgres, http (got {kind!r})")
    if kind == "file":
        r.need(src, "path", "source", str)
    if kind == "postgres":
        r.need(src, "table", "source", str)
        r.need(src, "conn_id", "source", str)
        r.need(src, "timestamp_column", "source", str)
    if kind == "http":
        r.need(src, "url", "source", str)
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
    timestamp = Timestamp(kind=ts_kind, column=ts.get("column"), format=ts.get("format"), year=ts.get("year"),
                          day_column=ts.get("day_column"), hour_column=ts.get("hour_column"))

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
    min_training_rows = r.need(window, "min_training_rows", "window", int, default=100)

    m = r.need(raw, "model", "spec", dict) or {}
    family = r.need(m, "family", "model", str)
    if task in MODEL_FAMILIES and family not in MODEL_FAMILIES[task]:
        r.problems.append(f"model.family: for {task}, one of {', '.join(MODEL_FAMILIES[task])} (got {family!r})")
    search = r.need(m, "search", "model", dict) or {}
    n_iter = r.need(search, "n_iter", "model.search", int, default=8)
    if n_iter is not None and not 1 <= n_iter <= 200:
        r.problems.append(f"model.search.n_iter: between 1 and 200 (got {n_iter})")
    model = ModelSpec(
        family=family,
        registered_name=r.need(m, "registered_name", "model", str, default=name),
        n_iter=n_iter,
        cv_folds=r.need(search, "cv_folds", "model.search", int, default=3),
        seed=r.need(search, "seed", "model.search", int, default=42),
        space=tuple(_parse_space(r, search.get("space"))),
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
    evaluation = EvaluationSpec(
        metric=metric, greater_is_better=known.get(metric, False),
        threshold=float(threshold or 0.0), tolerance=float(tolerance or 0.0),
        holdout_days=r.need(e, "holdout_days", "evaluation", int, default=7),
    )
    if window_days and evaluation.holdout_days and evaluation.holdout_days >= window_days:
        r.problems.append("evaluation.holdout_days: must be smaller than window.days")

    suite_rel = (val or {}).get("suite") or f"../expectations/{name}.json"
    suite_path = Path(suite_rel) if Path(suite_rel).is_absolute() else (path.parent / suite_rel).resolve()
    r.fail_if_any()
    return PipelineSpec(
        name=name, description=str(raw.get("description", "")).strip(), path=path,
        source=source, timestamp=timestamp, partition=partition, task=task, target=target,
        columns=tuple(columns), min_rows_per_partition=min_rows, max_rows_per_partition=max_rows,
        data_start=data_start, data_end=data_end, window_days=window_days,
        min_training_rows=min_training_rows, model=model, evaluation=evaluation,
        suite_path=suite_path, experiment=str(raw.get("experiment") or name),
    )
