"""Derived columns and row filters, declared in the spec and applied in one place.

A spec turns the source's rows into the rows a pipeline works on without code::

    derive:                      # new or replaced columns, computed in order
      late: arr_delay > 15                      # a derived target (a boolean becomes 0/1)
      dow: day_of_week                          # a calendar part of the row's local time
      speed: distance / (air_time / 60)
    filter:                      # rows kept: each condition must hold
      - cancelled == 0
    transform: ../transforms/flights.py:add_route   # optional: a Python function for the rest

Expressions use the columns, numbers and strings, ``+ - * / // % **``, comparisons, ``and``,
``or``, ``not``, ``in [..]``, and the functions ``abs``, ``log``, ``log1p``, ``exp``, ``sqrt``,
``round``, ``clip(x, lo, hi)``, ``where(cond, a, b)``, ``isnull``, ``notnull``. Calendar parts of
the row's timestamp, in the spec's time zone: ``hour``, ``day_of_week`` (Monday 0), ``day``,
``month``, ``year``, ``day_of_year``, ``is_weekend``. Nothing else is reachable (no attributes, no
imports): an expression is data, not code.

Division by zero gives null: ``x / 0``, ``x // 0`` and ``x % 0`` are null (NaN) in the rows whose
divisor is 0, never an infinity, like a missing value in the data.

An expression is bounded, so that no spec can exhaust the machine (``LIMITS``): at most
``MAX_SOURCE_CHARS`` characters, ``MAX_NODES`` elements and ``MAX_DEPTH`` levels of nesting; an
exponent of at most ``MAX_EXPONENT`` in absolute value; text and lists repeated (``'a' * 3``) only by
a known count and to at most ``MAX_ITEMS`` characters or items, never by a column; whole numbers of at
most ``MAX_INT_BITS`` bits. The limits are checked when the spec loads (the parts made of constants
are computed then, so ``10 ** 10 ** 10`` or ``'a' * 10 ** 10`` is a spec error with its key path)
and again at every evaluation.

A ``transform`` function is plain Python kept under ``include/`` and reviewed like code. Its
signature is ``def f(frame: pandas.DataFrame) -> pandas.DataFrame``: it receives the rows after
``derive`` and ``filter`` (with ``event_time`` in UTC) and returns the rows to keep, with any columns
added. It must not change ``event_time``.

The ingest step applies all three to every batch, before it is partitioned and validated, so that
the suite checks derived columns like any other and training, evaluation and monitoring read the
same columns from the store. The expressions run in ``mlcycle.expressions``, over the batch's columns
as numpy arrays: the same evaluator the prediction server runs over a request's source rows, so that a
model is served the features it was trained on.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcycle.errors import SourceError, SpecError
from mlcycle.expressions import (  # noqa: F401 - the language's names, used from here by the spec and tests
    CALENDAR_ALIASES,
    CALENDAR_NAMES,
    CALENDAR_PARTS,
    LIMITS,
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_INT_BITS,
    MAX_ITEMS,
    MAX_NODES,
    MAX_SOURCE_CHARS,
    SOURCE_ALIASES,
    Expression,
    ExpressionLimit,
)

log = logging.getLogger(__name__)


def ambiguous_names(rules: Derivations, source_columns: set[str]) -> list[str]:
    """One problem per expression that reads a bare name which is both a source column and a calendar
    part (``month`` of the source, or the month of the row's local time), with the two spellings that
    say which one is meant."""
    clashes = source_columns & set(CALENDAR_PARTS)
    read = [(f"derive.{name}", e) for name, e in rules.derive] + [(f"filter[{i}]", e)
                                                                 for i, e in enumerate(rules.filters)]
    return [f"{where}: {expression.source!r} reads `{name}`, which is both a source column (columns.{name}) "
            f"and a calendar part of the row's local time; write `local_{name}` for the calendar part or "
            f"`source_{name}` for the source column"
            for where, expression in read for name in sorted(expression.names & clashes)]


@dataclass(frozen=True)
class Derivations:
    """The spec's ``derive``, ``filter`` and ``transform`` sections, parsed and checked."""

    derive: tuple[tuple[str, Expression], ...] = ()
    filters: tuple[Expression, ...] = ()
    transform: str | None = None
    base_dir: Path = Path(".")

    @property
    def empty(self) -> bool:
        return not (self.derive or self.filters or self.transform)


def parse_derivations(raw: Mapping[str, Any], base_dir: Path, problems: list[str]) -> Derivations:
    """Parse the three sections, appending each problem (with its path) to ``problems``."""
    derive: list[tuple[str, Expression]] = []
    section = raw.get("derive") or {}
    if not isinstance(section, Mapping):
        problems.append(f"derive: a mapping of new column name to expression (got {section!r})")
        section = {}
    for name, source in section.items():
        try:
            derive.append((str(name), Expression.parse(str(source), f"derive.{name}")))
        except SpecError as exc:
            problems.append(str(exc))
    filters: list[Expression] = []
    raw_filters = raw.get("filter") or []
    if isinstance(raw_filters, str):
        raw_filters = [raw_filters]
    if not isinstance(raw_filters, list):
        problems.append(f"filter: a list of conditions (got {raw_filters!r})")
        raw_filters = []
    for i, source in enumerate(raw_filters):
        try:
            filters.append(Expression.parse(str(source), f"filter[{i}]"))
        except SpecError as exc:
            problems.append(str(exc))
    transform = raw.get("transform")
    if transform is not None and (not isinstance(transform, str) or ":" not in transform):
        problems.append(f"transform: '<path to a .py file, relative to the spec>:<function>' (got {transform!r})")
        transform = None
    return Derivations(derive=tuple(derive), filters=tuple(filters), transform=transform, base_dir=base_dir)


def calendar_parts(event_time: pd.Series, timezone: str) -> dict[str, Any]:
    """The calendar parts of UTC timestamps, read in ``timezone`` (the spec's local time)."""
    local = event_time.dt.tz_convert(timezone)
    dow = local.dt.dayofweek
    parts = {"hour": local.dt.hour, "day_of_week": dow, "day": local.dt.day, "month": local.dt.month,
             "year": local.dt.year, "day_of_year": local.dt.dayofyear, "is_weekend": (dow >= 5).astype("int64")}
    return {**parts, **{alias: parts[part] for alias, part in CALENDAR_ALIASES.items()}}


def column_array(series: pd.Series) -> np.ndarray:
    """A column as the expression language reads it: a 1-D numpy array, NaN for a missing value.

    Numbers with a pandas null (``Int64``, ``Float64``) become float64 with NaN, text becomes an object
    array, a time with a zone becomes ``datetime64`` in UTC."""
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    if isinstance(dtype, np.dtype):
        return series.to_numpy()
    if pd.api.types.is_bool_dtype(dtype) and not series.isna().any():
        return series.to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        if series.isna().any():
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        return series.to_numpy(dtype=np.int64 if pd.api.types.is_integer_dtype(dtype) else np.float64)
    return series.to_numpy(dtype=object, na_value=np.nan)


class _Scope(dict):
    """The names an expression reads over a frame, converted on first use: the frame's columns, then
    ``source_<part>`` (a source column named like a calendar part), then the calendar parts."""

    def __init__(self, frame: pd.DataFrame, calendar: Mapping[str, np.ndarray]):
        super().__init__()
        self.frame, self.calendar = frame, calendar

    def __missing__(self, key: str) -> np.ndarray:
        columns = self.frame.columns
        if key in columns:
            value = column_array(self.frame[key])
        elif key in SOURCE_ALIASES and SOURCE_ALIASES[key] in columns:
            value = self[SOURCE_ALIASES[key]]
        elif key in self.calendar:
            value = self.calendar[key]
        else:
            raise KeyError(key)
        self[key] = value
        return value


def _as_values(value: Any, rows: int) -> np.ndarray:
    values = np.broadcast_to(value, rows) if np.ndim(value) == 0 else np.asarray(value)
    if values.dtype == bool:
        values = values.astype("int64")  # a derived label or flag: 0/1, like the source's own flags
    return values


def apply(frame: pd.DataFrame, rules: Derivations, timezone: str, time_column: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Derived columns, then filters, then the transform; returns the rows and the drop count by rule.

    The expressions run over the frame's columns as numpy arrays (mlcycle.expressions), the same
    evaluator the prediction server runs over a request's rows."""
    if rules.empty:
        return frame, {}
    frame = frame.copy()
    needed = {n for _, e in rules.derive for n in e.names} | {n for e in rules.filters for n in e.names}
    calendar = {name: part.to_numpy() for name, part in calendar_parts(frame[time_column], timezone).items()} \
        if needed & set(CALENDAR_NAMES) else {}
    scope = _Scope(frame, calendar)
    for name, expression in rules.derive:
        try:
            values = _as_values(expression.evaluate_arrays(scope), len(frame))
        except KeyError as exc:
            raise SourceError(f"derive.{name}: {expression.source!r} reads {exc.args[0]!r}, which the batch "
                              f"does not have (columns: {', '.join(frame.columns)})") from exc
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise SourceError(f"derive.{name}: {expression.source!r} failed on the batch: {exc}") from exc
        frame[name] = pd.Series(values, index=frame.index, copy=True)
        scope.clear()  # a replaced column, or an alias of it, is read again from the frame
    dropped: dict[str, int] = {}
    for expression in rules.filters:
        try:
            keep = np.asarray(expression.evaluate_arrays(scope), dtype=bool)
        except KeyError as exc:
            raise SourceError(f"filter {expression.source!r} reads {exc.args[0]!r}, which the batch does not "
                              f"have (columns: {', '.join(frame.columns)})") from exc
        if np.ndim(keep) == 0:
            keep = np.full(len(frame), bool(keep))
        removed = int((~keep).sum())
        dropped[f"filter: {expression.source}"] = removed
        frame = frame.loc[keep]
        calendar = {k: v[keep] for k, v in calendar.items()}
        scope = _Scope(frame, calendar)
    if rules.transform:
        before = len(frame)
        frame = load_transform(rules.transform, rules.base_dir)(frame.reset_index(drop=True))
        if not isinstance(frame, pd.DataFrame) or time_column not in frame:
            raise SourceError(f"transform {rules.transform} must return a DataFrame that keeps `{time_column}`")
        dropped[f"transform: {rules.transform}"] = before - len(frame)
    for reason, count in dropped.items():
        if count:
            log.info("%s dropped %d row(s)", reason, count)
    return frame.reset_index(drop=True), dropped


def load_transform(reference: str, base_dir: Path) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """``path/to/file.py:function`` (relative to the spec's folder) as a callable."""
    file_part, _, function = reference.rpartition(":")
    path = Path(file_part) if Path(file_part).is_absolute() else (base_dir / file_part).resolve()
    if not path.is_file():
        raise SpecError(f"transform: {path} does not exist (from {reference!r}, relative to the spec's folder)")
    module_spec = importlib.util.spec_from_file_location(f"mlcycle_transform_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise SpecError(f"transform: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise SpecError(f"transform: {path} has no function {function!r}")
    return fn
