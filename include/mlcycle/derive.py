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

A ``transform`` function is plain Python kept under ``include/`` and reviewed like code. Its
signature is ``def f(frame: pandas.DataFrame) -> pandas.DataFrame``: it receives the rows after
``derive`` and ``filter`` (with ``event_time`` in UTC) and returns the rows to keep, with any columns
added. It must not change ``event_time``.

The ingest step applies all three to every batch, before it is partitioned and validated, so that
the suite checks derived columns like any other and training, evaluation and monitoring read the
same columns from the store.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcycle.errors import SourceError, SpecError

log = logging.getLogger(__name__)

CALENDAR_PARTS = ("hour", "day_of_week", "day", "month", "year", "day_of_year", "is_weekend")
#: Unambiguous spellings: ``local_<part>`` is always the calendar part, ``source_<part>`` the source's
#: column of that name (for a source whose own columns are named like calendar parts).
CALENDAR_ALIASES = {f"local_{part}": part for part in CALENDAR_PARTS}
SOURCE_ALIASES = {f"source_{part}": part for part in CALENDAR_PARTS}
CALENDAR_NAMES = (*CALENDAR_PARTS, *CALENDAR_ALIASES)


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

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": np.abs, "log": np.log, "log1p": np.log1p, "exp": np.exp, "sqrt": np.sqrt, "round": np.round,
    "clip": np.clip, "where": np.where, "isnull": pd.isna, "notnull": pd.notna,
}


@dataclass(frozen=True)
class Expression:
    """One parsed expression; ``names`` are the columns (or calendar parts) it reads."""

    source: str
    tree: ast.Expression
    names: frozenset[str]

    @classmethod
    def parse(cls, source: str, where: str) -> Expression:
        try:
            tree = ast.parse(str(source), mode="eval")
        except SyntaxError as exc:
            raise SpecError(f"{where}: cannot parse {source!r}: {exc.msg}") from exc
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
                    raise SpecError(f"{where}: {source!r} calls something other than "
                                    f"{', '.join(sorted(_FUNCTIONS))} (positional arguments only)")
            elif not isinstance(node, _ALLOWED):
                raise SpecError(f"{where}: {source!r} uses {type(node).__name__}, which expressions do "
                                "not allow (columns, numbers, strings, arithmetic, comparisons, and/or/not, "
                                "in [...] and the listed functions)")
        names -= set(_FUNCTIONS)
        return cls(source=str(source), tree=tree, names=frozenset(names))

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        return _eval(self.tree.body, values)


_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Name, ast.Constant,
            ast.Load, ast.List, ast.Tuple, ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.In, ast.NotIn,
            *_BINARY, *_COMPARE)


def _eval(node: ast.AST, values: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, values) for e in node.elts]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, values), _eval(node.right, values))
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values)
        if isinstance(node.op, ast.Not):
            return ~np.asarray(operand, dtype=bool) if np.ndim(operand) else not operand
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BoolOp):
        parts = [np.asarray(_eval(v, values), dtype=bool) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        result = parts[0]
        for part in parts[1:]:
            result = combine(result, part)
        return result
    if isinstance(node, ast.Compare):
        left, result = _eval(node.left, values), None
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, values)
            if isinstance(op, (ast.In, ast.NotIn)):
                hit = pd.Series(left).isin(right).to_numpy() if np.ndim(left) else left in right
                part = hit if isinstance(op, ast.In) else ~np.asarray(hit, dtype=bool)
            else:
                part = _COMPARE[type(op)](left, right)
            result = part if result is None else np.logical_and(result, part)
            left = right
        return result
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](*[_eval(a, values) for a in node.args])  # type: ignore[union-attr]
    raise SpecError(f"unsupported expression element {type(node).__name__}")


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


def _as_column(value: Any, index: pd.Index) -> pd.Series:
    series = value if isinstance(value, pd.Series) else pd.Series(np.broadcast_to(value, len(index)), index=index)
    if series.dtype == bool:
        series = series.astype("int64")  # a derived label or flag: 0/1, like the source's own flags
    return series.reset_index(drop=True).set_axis(index)


def apply(frame: pd.DataFrame, rules: Derivations, timezone: str, time_column: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Derived columns, then filters, then the transform; returns the rows and the drop count by rule."""
    if rules.empty:
        return frame, {}
    frame = frame.copy()
    needed = {n for _, e in rules.derive for n in e.names} | {n for e in rules.filters for n in e.names}
    calendar = calendar_parts(frame[time_column], timezone) if needed & set(CALENDAR_NAMES) else {}

    def scope() -> dict[str, Any]:
        own = {alias: frame[c] for alias, c in SOURCE_ALIASES.items() if c in frame.columns}
        return {**calendar, **own, **{c: frame[c] for c in frame.columns}}

    for name, expression in rules.derive:
        try:
            frame[name] = _as_column(expression.evaluate(scope()), frame.index)
        except KeyError as exc:
            raise SourceError(f"derive.{name}: {expression.source!r} reads {exc.args[0]!r}, which the batch "
                              f"does not have (columns: {', '.join(frame.columns)})") from exc
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise SourceError(f"derive.{name}: {expression.source!r} failed on the batch: {exc}") from exc
    dropped: dict[str, int] = {}
    for expression in rules.filters:
        try:
            keep = np.asarray(expression.evaluate(scope()), dtype=bool)
        except KeyError as exc:
            raise SourceError(f"filter {expression.source!r} reads {exc.args[0]!r}, which the batch does not "
                              f"have (columns: {', '.join(frame.columns)})") from exc
        if np.ndim(keep) == 0:
            keep = np.full(len(frame), bool(keep))
        removed = int((~keep).sum())
        dropped[f"filter: {expression.source}"] = removed
        frame = frame.loc[keep]
        calendar = {k: v.loc[keep] for k, v in calendar.items()}
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
