"""History features: lags and rolling aggregates per entity, point-in-time correct.

A spec declares them in its ``features:`` section::

    features:
      entity: [zone]             # the entity's columns; [] (the default): one global series
      every: 1d                  # the grid the features are computed on (default: a day)
      available_after: 0h        # default delay: data this recent has not arrived yet
      history:
        riders_same_hour_yesterday: {of: bikers, lag: 1d, entity: [hr]}
        riders_mean_7d:             {of: bikers, agg: mean, window: 7d}
        late_share_7d:              {of: "late == 1", agg: share, window: 7d}
        flights_7d:                 {agg: count, window: 7d, fill: 0}

**One definition, on a grid.** Every feature is a *snapshot* taken at the points of a time grid:
multiples of ``every`` in the spec's local wall-clock time (``every: 1d``: each local midnight). The
snapshot at grid point ``a`` of an entity is

- a rolling aggregate (``count``, ``sum``, ``mean``, ``min``, ``max``, ``share``: the share of the
  rows where the condition ``of`` holds, a null counting as not holding) over the entity's rows with
  ``a - window <= event_time < a - available_after``;
- a lag: the entity's last value (last non-null) with ``a - lag <= event_time < a - lag + every``:
  the grid cell ``lag`` before (with ``entity: [hr]`` and ``lag: 1d``, the same hour yesterday).

A row at time ``t`` gets the snapshot at the latest grid point at or before it. So a row sees only
rows strictly before ``t - available_after``, never its own value (the window stops at the grid
point), and the training set, the offline store's point-in-time join and the online store all carry
the same numbers.

**Why a day by default.** The online store holds each entity's latest snapshot, refreshed when a day
is materialized: after day ``D``, the snapshot at the next midnight, which is exactly what every row
of day ``D + 1`` was given in training. A finer grid (``every: 1h``) is exact in training; the
server then serves the latest snapshot it has and reports how old it is.

**Missing history is missing, not zero.** A snapshot whose window reaches into a day without a
validated partition (before ``window.data_start``, or a day that was rejected) is null, then ``fill``
when the feature sets one: a count over days the store never saw is unknown, not 0.

Windows, lags and delays are whole multiples of ``every``; a lag must reach at least one grid step
past its delay (``lag >= available_after + every``). Per feature, ``entity`` overrides the section's.
The cost is one snapshot per entity and grid point: a few thousand entities a day is cheap; an entity
per user is not what this is for.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlcycle.errors import SpecError
from mlcycle.expressions import Expression
from mlcycle.spec_schema import parse_duration

Aggregate = Literal["lag", "count", "sum", "mean", "min", "max", "share"]
AGGREGATES = ("count", "sum", "mean", "min", "max", "share")
#: The name of the snapshot time in the snapshot tables (the offline store's timestamp field).
SNAPSHOT_TIME = "snapshot_time"
EVENT_TIME = "event_time"

_DAY = dt.timedelta(days=1)


def format_duration(value: dt.timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class HistoryFeature:
    name: str
    agg: Aggregate
    #: What it reads (a column or an expression over the row's columns); None for ``count``.
    of: Expression | None
    #: The rolling window, or the lag.
    span: dt.timedelta
    available_after: dt.timedelta
    entity: tuple[str, ...]
    fill: float | None = None

    @property
    def reads(self) -> frozenset[str]:
        return self.of.names if self.of is not None else frozenset()

    def describe(self) -> str:
        what = self.of.source if self.of is not None else "rows"
        by = f" by {', '.join(self.entity)}" if self.entity else ""
        delay = f", {format_duration(self.available_after)} late" if self.available_after else ""
        if self.agg == "lag":
            return f"{what} {format_duration(self.span)} before{by}{delay}"
        return f"{self.agg} of {what} over {format_duration(self.span)}{by}{delay}"


@dataclass(frozen=True)
class HistorySpec:
    features: tuple[HistoryFeature, ...] = ()
    every: dt.timedelta = _DAY
    #: Monitoring warns when the online store's latest snapshot is older than this.
    max_age: dt.timedelta = dt.timedelta(days=2)

    def __bool__(self) -> bool:
        return bool(self.features)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def lookback(self) -> dt.timedelta:
        """How far before a snapshot its features read: the longest window or lag."""
        return max((f.span for f in self.features), default=dt.timedelta(0))

    @property
    def lookback_days(self) -> int:
        """Whole days of validated partitions to read before the first day that needs features (the
        same figure as ``spec_schema.history_lookback_days``, which the DAG side reads)."""
        return -(-self.lookback // _DAY) if self.features else 0

    @property
    def entities(self) -> list[tuple[str, ...]]:
        """The distinct entities, in order of first use: one feature view each."""
        return list(dict.fromkeys(f.entity for f in self.features))

    def view_name(self, entity: tuple[str, ...]) -> str:
        return "by_" + "_".join(entity) if entity else "global"

    def of_entity(self, entity: tuple[str, ...]) -> list[HistoryFeature]:
        return [f for f in self.features if f.entity == entity]

    @property
    def entity_columns(self) -> list[str]:
        """The columns that name an entity, of every feature view."""
        return list(dict.fromkeys(c for entity in self.entities for c in entity))

    @property
    def reads(self) -> set[str]:
        """Every column the features read, entity columns included."""
        out: set[str] = set()
        for f in self.features:
            out |= set(f.reads) | set(f.entity)
        return out


def parse_features(raw: Any, columns: Mapping[str, str], problems: list[str]) -> HistorySpec:
    """The ``features:`` section, checked against the spec's columns (name -> type); problems appended."""
    if raw is None:
        return HistorySpec()
    if not isinstance(raw, dict):
        problems.append("features: a mapping with entity, every, available_after, max_age and history")
        return HistorySpec()
    every = parse_duration(raw.get("every", "1d"), "features.every", problems) or _DAY
    if every <= dt.timedelta(0) or _DAY % every:
        problems.append(
            f"features.every: a step that divides a day, such as 15min, 1h or 1d (got {raw.get('every')!r})"
        )
        every = _DAY
    default_delay = parse_duration(raw.get("available_after", "0h"), "features.available_after", problems)
    max_age = parse_duration(raw.get("max_age", "2d"), "features.max_age", problems) or dt.timedelta(days=2)
    default_entity = _entity(raw.get("entity", []), "features.entity", columns, problems)
    section = raw.get("history") or {}
    if not isinstance(section, dict):
        problems.append("features.history: a mapping of feature name -> {of, lag} or {of, agg, window}")
        section = {}
    features: list[HistoryFeature] = []
    for name, body in section.items():
        where = f"features.history.{name}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", str(name)):
            problems.append(f"{where}: a feature name of letters, digits and underscores")
            continue
        if name in columns:
            problems.append(
                f"{where}: `{name}` is already a column of the spec; give the feature its own name"
            )
            continue
        feature = _parse_feature(
            str(name), body, where, columns, every, default_delay, default_entity, problems
        )
        if feature is not None:
            features.append(feature)
    return HistorySpec(features=tuple(features), every=every, max_age=max_age)


def _entity(value: Any, where: str, columns: Mapping[str, str], problems: list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}: a list of column names (got {value!r})")
        return ()
    for column in value:
        if column not in columns:
            problems.append(f"{where}: {column!r} is not among the columns")
        elif columns[column] not in ("categorical", "string", "integer"):
            problems.append(
                f"{where}: {column!r} is {columns[column]}; an entity is named by categorical, "
                "string or integer columns"
            )
    return tuple(value)


def _parse_feature(
    name: str,
    body: Any,
    where: str,
    columns: Mapping[str, str],
    every: dt.timedelta,
    default_delay: dt.timedelta | None,
    default_entity: tuple[str, ...],
    problems: list[str],
) -> HistoryFeature | None:
    if not isinstance(body, dict):
        problems.append(
            f"{where}: a mapping such as {{of: riders, lag: 24h}} or {{of: riders, agg: mean, window: 24h}}"
        )
        return None
    before = len(problems)
    lag, agg, window = body.get("lag"), body.get("agg"), body.get("window")
    if lag is not None and (agg is not None or window is not None):
        problems.append(
            f"{where}: either `lag` (a past value) or `agg` with `window` (a rolling aggregate), not both"
        )
        return None
    if lag is None and (agg is None or window is None):
        problems.append(
            f"{where}: needs `lag` (such as 24h), or `agg` ({', '.join(AGGREGATES)}) with `window`"
        )
        return None
    if agg is not None and agg not in AGGREGATES:
        problems.append(f"{where}.agg: one of {', '.join(AGGREGATES)} (got {agg!r})")
        return None
    kind: Aggregate = "lag" if lag is not None else agg
    span = parse_duration(
        lag if lag is not None else window, f"{where}.{'lag' if lag is not None else 'window'}", problems
    )
    delay = default_delay
    if "available_after" in body and body["available_after"] is not None:
        delay = parse_duration(body["available_after"], f"{where}.available_after", problems)
    entity = (
        default_entity
        if body.get("entity") is None
        else _entity(body["entity"], f"{where}.entity", columns, problems)
    )
    of = None
    if body.get("of") is None:
        if kind != "count":
            problems.append(f"{where}.of: required (the column or expression the {kind} reads)")
    else:
        try:
            of = Expression.parse(str(body["of"]), f"{where}.of")
        except SpecError as exc:
            problems.append(str(exc))
        else:
            for ref in sorted(of.names - set(columns)):
                problems.append(f"{where}.of: {ref!r} is not among the columns")
    fill = body.get("fill")
    if fill is not None and (isinstance(fill, bool) or not isinstance(fill, (int, float))):
        problems.append(f"{where}.fill: a number, or null for a missing value (got {fill!r})")
    if span is not None and delay is not None:
        for label, value in (("window" if kind != "lag" else "lag", span), ("available_after", delay)):
            if value % every:
                problems.append(
                    f"{where}.{label}: a whole multiple of features.every "
                    f"({format_duration(every)}; got {format_duration(value)})"
                )
        if kind == "lag" and span < delay + every:
            problems.append(
                f"{where}.lag: at least available_after + every ({format_duration(delay + every)}): "
                f"a lag of {format_duration(span)} would read rows that have not arrived yet"
            )
        if kind != "lag" and span <= delay:
            problems.append(
                f"{where}.window: longer than available_after ({format_duration(delay)}): "
                "the window would hold no row that has arrived"
            )
    if len(problems) > before or span is None or delay is None:
        return None
    return HistoryFeature(
        name=name,
        agg=kind,
        of=of,
        span=span,
        available_after=delay,
        entity=entity,
        fill=None if fill is None else float(fill),
    )


# --- the computation ----------------------------------------------------------------------------


def grid_index(times: pd.Series | pd.DatetimeIndex, every: dt.timedelta, timezone: str) -> np.ndarray:
    """The grid point at or before each time, as a whole number of ``every`` steps since the epoch,
    counted in the spec's local wall-clock time (a day step starts at local midnight)."""
    return np.floor_divide(_local_ns(times, timezone), _ns(every))


def grid_time(points: np.ndarray, every: dt.timedelta, timezone: str) -> pd.DatetimeIndex:
    """The instants (UTC) of grid points: local wall-clock times; one that a daylight-saving change
    skips moves forward, one it repeats is its first occurrence."""
    local = pd.DatetimeIndex(np.asarray(points, dtype=np.int64) * _ns(every))
    return local.tz_localize(
        timezone, ambiguous=np.ones(len(local), dtype=bool), nonexistent="shift_forward"
    ).tz_convert("UTC")


def day_points(day: dt.date, every: dt.timedelta) -> tuple[int, int]:
    """The grid points of local day ``day``: its midnight and the next midnight (excluded)."""
    midnight = (day - dt.date(1970, 1, 1)).days * _ns(_DAY)
    return midnight // _ns(every), (midnight + _ns(_DAY)) // _ns(every)


def _ns(value: dt.timedelta) -> int:
    return int(value.total_seconds()) * 1_000_000_000


def _local_ns(times: Any, timezone: str) -> np.ndarray:
    values = pd.DatetimeIndex(times)
    if values.tz is None:
        raise ValueError("history features need time-zone aware event times")
    if timezone == "UTC":  # wall-clock time is the instant: no conversion of millions of rows
        return values.as_unit("ns").asi8
    return values.tz_convert(timezone).tz_localize(None).as_unit("ns").asi8


@dataclass
class _Cells:
    """One entity group's rows, summed per (entity, grid cell) over cells ``[first, first + width)``."""

    codes: pd.DataFrame  # the entities' column values, one row per entity code
    first: int
    width: int
    known: np.ndarray  # bool per cell: the cell lies in a day the store holds


def _entity_codes(frame: pd.DataFrame, entity: tuple[str, ...]) -> tuple[np.ndarray, pd.DataFrame]:
    """Each row's entity as a code 0..k-1 (hashing each column once), and the k entities in code order."""
    if not entity:
        return np.zeros(len(frame), dtype=np.int64), pd.DataFrame(index=range(1))
    codes, uniques = pd.factorize(frame[entity[0]], use_na_sentinel=False)
    if len(entity) == 1:
        return codes.astype(np.int64), pd.DataFrame({entity[0]: uniques})
    for column in entity[1:]:  # combine column by column: codes of (previous columns, this column)
        part, _ = pd.factorize(frame[column], use_na_sentinel=False)
        codes, _ = pd.factorize(codes * (int(part.max(initial=0)) + 1) + part)
    first = pd.Series(np.arange(len(codes))).groupby(codes).min().to_numpy()  # each entity's first row
    return codes.astype(np.int64), frame[list(entity)].iloc[first].reset_index(drop=True)


def _known_cells(known_days: Iterable[dt.date], first: int, width: int, every: dt.timedelta) -> np.ndarray:
    """Per cell: whether its local day is one the store holds a validated partition of."""
    epoch = dt.date(1970, 1, 1)
    known = np.array(sorted((d - epoch).days for d in known_days), dtype=np.int64)
    day_of_cell = np.floor_divide((first + np.arange(width, dtype=np.int64)) * _ns(every), _ns(_DAY))
    return np.isin(day_of_cell, known)


def _values(frame: pd.DataFrame, feature: HistoryFeature) -> np.ndarray:
    if feature.of is None:
        return np.ones(len(frame), dtype=np.float64)
    from mlcycle.derive import column_array

    scope = {name: column_array(frame[name]) for name in feature.of.names}
    result = feature.of.evaluate_arrays(scope)
    values = np.broadcast_to(np.asarray(result), (len(frame),))
    if feature.agg == "share":  # a condition: true is 1; false, and null, 0 (as in `derive`)
        return np.where(pd.isna(values), 0.0, values.astype(bool)).astype(np.float64)
    if values.dtype == bool:
        return values.astype(np.float64)
    if values.dtype == object:
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    return values.astype(np.float64)


def _per_cell(
    flat: np.ndarray, values: np.ndarray, order: np.ndarray | None, size: int, agg: Aggregate
) -> dict[str, np.ndarray]:
    """Per (entity, cell), ``flat`` being ``entity * width + cell``: what the aggregate needs."""
    present = ~np.isnan(values)
    out: dict[str, np.ndarray] = {}
    if agg == "count":
        out["n"] = np.bincount(flat, minlength=size).astype(np.float64)
    elif agg in ("sum", "mean", "share"):
        out["s"] = np.bincount(flat[present], weights=values[present], minlength=size)
        out["n"] = np.bincount(flat[present], minlength=size).astype(np.float64)
    else:
        series = pd.Series(values[order][present[order]], index=flat[order][present[order]])
        grouped = series.groupby(level=0, sort=False)
        picked = {"min": grouped.min, "max": grouped.max, "lag": grouped.last}[agg]()
        dense = np.full(size, np.nan)
        dense[picked.index.to_numpy()] = picked.to_numpy()
        out["v"] = dense
    return out


def _window_sum(
    per_cell: np.ndarray, entities: int, width: int, start: np.ndarray, stop: np.ndarray
) -> np.ndarray:
    """Sum of ``per_cell`` (entities x width) over cells ``[start, stop)`` for each snapshot column."""
    cumulative = np.zeros((entities, width + 1))
    np.cumsum(per_cell.reshape(entities, width), axis=1, out=cumulative[:, 1:])
    return cumulative[:, stop] - cumulative[:, start]


def _window_extreme(
    values: np.ndarray, entities: int, width: int, cells: int, stop: np.ndarray, agg: str
) -> np.ndarray:
    """min or max over the ``cells`` cells before ``stop`` (exclusive), ignoring empty cells."""
    table = pd.DataFrame(values.reshape(entities, width).T)
    rolled = getattr(table.rolling(cells, min_periods=1), agg)().to_numpy().T  # over (j - cells, j]
    return rolled[:, stop - 1]


def snapshots(
    frame: pd.DataFrame,
    spec: HistorySpec,
    entity: tuple[str, ...],
    first: int,
    last: int,
    known_days: Iterable[dt.date],
    timezone: str,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The snapshots of one entity group's features at grid points ``first..last`` (inclusive).

    ``frame`` holds the validated rows (``event_time`` aware) of every day from the lookback before
    ``first`` on; ``known_days`` the days the store holds. Returns the entities (one row per code, in
    code order) and, per feature, an array entities x (last - first + 1)."""
    features = spec.of_entity(entity)
    lookback = max(int(f.span // spec.every) for f in features)
    lo = first - lookback  # the first cell any snapshot reads
    width = last - lo + 1
    codes, entities = _entity_codes(frame, entity)
    n_entities = max(len(entities), 1) if not entity else len(entities)
    cells = (
        grid_index(frame[EVENT_TIME], spec.every, timezone) - lo
        if len(frame)
        else np.zeros(0, dtype=np.int64)
    )
    inside = (cells >= 0) & (cells < width)
    known = _known_cells(known_days, lo, width, spec.every)
    unknown = (~known).astype(np.float64)
    points = np.arange(first, last + 1) - lo  # snapshot grid points, relative to lo
    ordered = any(f.agg in ("lag", "min", "max") for f in features) and len(frame)
    times = _local_ns(frame[EVENT_TIME], timezone) if ordered else np.zeros(len(frame), dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for feature in features:
        step = int(feature.span // spec.every)
        delay = int(feature.available_after // spec.every)
        if feature.agg == "lag":
            start, stop = points - step, points - step + 1
        else:
            start, stop = points - step, points - delay
        values = _values(frame, feature)[inside]
        flat = codes[inside] * width + cells[inside]
        # the rows in time order, for the last value and the extremes of a cell (rows of a store day are
        # in time order already: the sort is then a check)
        order = np.argsort(times[inside], kind="stable") if feature.agg in ("lag", "min", "max") else None
        size = n_entities * width
        parts = _per_cell(flat, values, order, size, feature.agg)
        gaps = _window_sum(np.tile(unknown, n_entities), n_entities, width, start, stop) > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            if feature.agg == "count":
                result = _window_sum(parts["n"], n_entities, width, start, stop)
            elif feature.agg == "sum":
                result = _window_sum(parts["s"], n_entities, width, start, stop)
            elif feature.agg in ("mean", "share"):
                total = _window_sum(parts["s"], n_entities, width, start, stop)
                count = _window_sum(parts["n"], n_entities, width, start, stop)
                result = np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)
            elif feature.agg == "lag":
                result = parts["v"].reshape(n_entities, width)[:, start]
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    result = _window_extreme(parts["v"], n_entities, width, step - delay, stop, feature.agg)
        result = np.where(gaps, np.nan, result)
        if feature.fill is not None:
            result = np.where(np.isnan(result), feature.fill, result)
        out[feature.name] = result.astype(np.float64)
    return entities, out


def snapshot_table(
    frame: pd.DataFrame,
    spec: HistorySpec,
    entity: tuple[str, ...],
    day: dt.date,
    known_days: Iterable[dt.date],
    timezone: str,
) -> pd.DataFrame:
    """The snapshots that local day ``day`` completes: at every grid point after its midnight up to the
    next midnight included (the next day's first snapshot reads nothing newer than ``day``), for every
    entity of ``frame``. The rows of the offline store: entity columns, ``snapshot_time`` (UTC), one
    column per feature."""
    midnight, next_midnight = day_points(day, spec.every)
    first, last = midnight + 1, next_midnight
    entities, values = snapshots(frame, spec, entity, first, last, known_days, timezone)
    points = np.arange(first, last + 1)
    n_entities, n_points = len(entities) if entity else 1, len(points)
    table = (
        entities.loc[np.repeat(np.arange(n_entities), n_points)].reset_index(drop=True)
        if entity
        else pd.DataFrame(index=range(n_points))
    )
    table[SNAPSHOT_TIME] = grid_time(np.tile(points, n_entities), spec.every, timezone)
    for name, array in values.items():
        table[name] = array.reshape(-1)
    return table


def _index(frame: pd.DataFrame, entity: tuple[str, ...]) -> pd.Index:
    if len(entity) > 1:
        return pd.MultiIndex.from_frame(frame[list(entity)].astype(object))
    return pd.Index(frame[entity[0]])


@dataclass(frozen=True)
class Snapshots:
    """Every feature's snapshots at grid points ``first..last`` for every entity the rows named: what
    a row of that span gets (:meth:`lookup`)."""

    spec: HistorySpec
    timezone: str
    first: int
    last: int
    #: per entity group: the entities' index, and per feature an array entities x points
    groups: dict[tuple[str, ...], tuple[pd.Index | None, dict[str, np.ndarray]]]

    @classmethod
    def compute(
        cls,
        frame: pd.DataFrame,
        spec: HistorySpec,
        first: int,
        last: int,
        known_days: Iterable[dt.date],
        timezone: str,
    ) -> Snapshots:
        known_days = list(known_days)
        groups = {}
        for entity in spec.entities:
            entities, values = snapshots(frame, spec, entity, first, last, known_days, timezone)
            groups[entity] = (_index(entities, entity) if entity else None, values)
        return cls(spec=spec, timezone=timezone, first=first, last=last, groups=groups)

    @classmethod
    def of_day(
        cls,
        frame: pd.DataFrame,
        spec: HistorySpec,
        day: dt.date,
        known_days: Iterable[dt.date],
        timezone: str,
    ) -> Snapshots:
        """The snapshots the rows of local day ``day`` get (``frame``: the day and its lookback)."""
        midnight, next_midnight = day_points(day, spec.every)
        return cls.compute(frame, spec, midnight, next_midnight - 1, known_days, timezone)

    def lookup(self, rows: pd.DataFrame) -> pd.DataFrame:
        """``rows`` with every history feature added (a copy; :meth:`add_to` adds them in place)."""
        return self.add_to(rows.copy())

    def add_to(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Every history feature added to ``rows`` itself: each row gets its entity's snapshot at the
        grid point at or before its ``event_time`` (an entity without history: null, or the ``fill``)."""
        points = (
            grid_index(rows[EVENT_TIME], self.spec.every, self.timezone) if len(rows) else np.zeros(0, int)
        )
        outside = (points < self.first) | (points > self.last)
        if outside.any():
            raise ValueError(
                f"{int(outside.sum())} row(s) fall outside the snapshots computed "
                f"({grid_time(np.array([self.first, self.last]), self.spec.every, self.timezone)})"
            )
        for entity, (index, values) in self.groups.items():
            codes = index.get_indexer(_index(rows, entity)) if entity else np.zeros(len(rows), dtype=np.int64)
            seen = codes >= 0
            for name, array in values.items():
                column = np.full(len(rows), np.nan)
                column[seen] = array[codes[seen], points[seen] - self.first]
                fill = next(f.fill for f in self.spec.features if f.name == name)
                if fill is not None:
                    column[~seen] = fill
                rows[name] = column
        return rows


def for_rows(
    rows: pd.DataFrame,
    frame: pd.DataFrame,
    spec: HistorySpec,
    known_days: Iterable[dt.date],
    timezone: str,
    inplace: bool = False,
) -> pd.DataFrame:
    """``rows`` with every history feature added, computed from ``frame`` (the rows and their lookback);
    ``inplace``: added to ``rows`` itself (no copy of a large table)."""
    if not len(rows):
        out = rows.copy()
        for name in spec.names:
            out[name] = pd.Series(dtype=np.float64)
        return out
    points = grid_index(rows[EVENT_TIME], spec.every, timezone)
    snapshots = Snapshots.compute(frame, spec, int(points.min()), int(points.max()), known_days, timezone)
    return snapshots.add_to(rows) if inplace else snapshots.lookup(rows)
