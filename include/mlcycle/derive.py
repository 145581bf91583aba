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


#: The bounds of an expression (see the module's docstring).
MAX_SOURCE_CHARS = 4000
MAX_NODES = 1000
MAX_DEPTH = 100
MAX_EXPONENT = 64
MAX_ITEMS = 10_000
MAX_INT_BITS = 4096
LIMITS = {"characters": MAX_SOURCE_CHARS, "elements": MAX_NODES, "nesting depth": MAX_DEPTH,
          "exponent": MAX_EXPONENT, "characters or items of a text or list": MAX_ITEMS,
          "bits of a whole number": MAX_INT_BITS}


class ExpressionLimit(SpecError):
    """An expression goes past one of the bounds of the language (at load or at evaluation)."""


def _short(source: str) -> str:
    return repr(source) if len(source) <= 80 else f"{source[:60]!r}... ({len(source)} characters)"


def _shape(tree: ast.AST, source: str, where: str) -> None:
    """Refuse a tree with too many elements or too deep a nesting (walked without recursion)."""
    count, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ExpressionLimit(f"{where}: {_short(source)} has more than {MAX_NODES} elements (the limit of "
                                  "an expression): split it into several derived columns")
        if depth > MAX_DEPTH:
            raise ExpressionLimit(f"{where}: {_short(source)} nests deeper than {MAX_DEPTH} levels (the limit of "
                                  "an expression): split it into several derived columns")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


@dataclass(frozen=True)
class Expression:
    """One parsed expression; ``names`` are the columns (or calendar parts) it reads."""

    source: str
    tree: ast.Expression
    names: frozenset[str]
    where: str = "expression"

    @classmethod
    def parse(cls, source: str, where: str) -> Expression:
        source = str(source)
        if len(source) > MAX_SOURCE_CHARS:
            raise ExpressionLimit(f"{where}: {_short(source)} is longer than {MAX_SOURCE_CHARS} characters (the "
                                  "limit of an expression): split it into several derived columns")
        if _nesting(source) > MAX_DEPTH:
            raise ExpressionLimit(f"{where}: {_short(source)} nests deeper than {MAX_DEPTH} levels (the limit of "
                                  "an expression): split it into several derived columns")
        try:
            tree = ast.parse(source, mode="eval")
        except SyntaxError as exc:
            raise SpecError(f"{where}: cannot parse {_short(source)}: {exc.msg}") from exc
        except (RecursionError, MemoryError) as exc:  # nesting the parser itself refuses
            raise ExpressionLimit(f"{where}: {_short(source)} nests too deeply to parse (at most {MAX_DEPTH} "
                                  "levels)") from exc
        _shape(tree, source, where)
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
        expression = cls(source=source, tree=tree, names=frozenset(names), where=where)
        try:  # the constant parts, computed now: a limit they breach fails the load
            expression.evaluate(_Unknown.SCOPE)
        except ExpressionLimit:
            raise
        except Exception:  # noqa: BLE001, S110 - a type mismatch among constants is the data's to show
            pass
        return expression

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        """The expression's value over ``values`` (columns by name); ExpressionLimit past a bound."""
        try:
            return _eval(self.tree.body, values, 1)
        except ExpressionLimit as exc:
            raise ExpressionLimit(f"{self.where}: {_short(self.source)} {exc}") from None


_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Name, ast.Constant,
            ast.Load, ast.List, ast.Tuple, ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.In, ast.NotIn,
            *_BINARY, *_COMPARE)


class _Unknown:
    """The value of a column while a spec loads: what it reads is unknown, the constants are not."""

    SCOPE: Mapping[str, Any]


_UNKNOWN = _Unknown()


class _UnknownScope(dict):
    def __missing__(self, key: str) -> _Unknown:
        return _UNKNOWN


_Unknown.SCOPE = _UnknownScope()


def _text_like(value: Any) -> bool:
    """Text or a list: what ``*`` would repeat rather than multiply."""
    if isinstance(value, (str, bytes, list, tuple)):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype))


def _check_size(value: Any) -> Any:
    if isinstance(value, (str, bytes, list, tuple)) and len(value) > MAX_ITEMS:
        raise ExpressionLimit(f"makes a text or list of {len(value)} characters or items (at most {MAX_ITEMS})")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionLimit(f"makes a whole number of {value.bit_length()} bits (at most {MAX_INT_BITS})")
    return value


def _power(base: Any, exponent: Any) -> Any:
    if np.ndim(exponent) == 0 and not isinstance(exponent, _Unknown):
        try:
            too_big = abs(float(exponent)) > MAX_EXPONENT
        except OverflowError:
            too_big = True
        except (TypeError, ValueError):
            too_big = False
        if too_big:
            raise ExpressionLimit(f"raises to the power {exponent!r} (an exponent is at most {MAX_EXPONENT} in "
                                  "absolute value)")
        if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 \
                and base.bit_length() * exponent > MAX_INT_BITS:
            raise ExpressionLimit(f"makes a whole number of about {base.bit_length() * exponent} bits "
                                  f"(at most {MAX_INT_BITS})")
    if not _known(base, exponent):
        return _UNKNOWN
    return operator.pow(base, exponent)


def _multiply(left: Any, right: Any) -> Any:
    for text, count in ((left, right), (right, left)):
        if _text_like(text) and not _text_like(count):
            if np.ndim(text) and not isinstance(text, (list, tuple)):  # a column of text: the data's problem
                raise TypeError("`*` multiplies numbers; this column holds text")
            if isinstance(count, _Unknown) or np.ndim(count):
                raise ExpressionLimit("repeats text or a list by a column (`*` repeats only by a known count)")
            size = len(text) * count if isinstance(count, int) else None
            if size is not None and size > MAX_ITEMS:
                raise ExpressionLimit(f"repeats text or a list to {size} characters or items (at most {MAX_ITEMS})")
    if not _known(left, right):
        return _UNKNOWN
    return operator.mul(left, right)


def _divide(op: Callable[[Any, Any], Any], left: Any, right: Any) -> Any:
    """``/``, ``//`` and ``%``, null where the divisor is 0 (the documented rule), never an infinity."""
    if not _known(left, right):
        return _UNKNOWN
    if np.ndim(left) == 0 and np.ndim(right) == 0:
        if isinstance(right, (int, float, np.number)) and not isinstance(right, bool) and right == 0:
            return np.nan
        return op(left, right)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = op(left, right)
    divisor = right.to_numpy() if isinstance(right, pd.Series) else np.asarray(right)
    if divisor.dtype.kind not in "biufc":
        return result
    zero = np.broadcast_to(divisor == 0, np.shape(result))
    if not zero.any():
        return result
    if isinstance(result, pd.Series):
        return result.mask(zero)
    return np.where(zero, np.nan, np.asarray(result, dtype=float))


_SPECIAL: dict[type, Callable[[Any, Any], Any]] = {
    ast.Pow: _power, ast.Mult: _multiply,
    ast.Div: lambda a, b: _divide(operator.truediv, a, b),
    ast.FloorDiv: lambda a, b: _divide(operator.floordiv, a, b),
    ast.Mod: lambda a, b: _divide(operator.mod, a, b),
}


def _number(value: Any) -> Any:
    """A condition used as a number is 0/1, like a derived flag."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if pd.api.types.is_bool_dtype(getattr(value, "dtype", None) or object):
        return value.astype("int64") if np.ndim(value) else int(value)
    return value


def _known(*values: Any) -> bool:
    return not any(isinstance(v, _Unknown) or isinstance(v, list) and not _known(*v) for v in values)


def _nesting(source: str) -> int:
    """The deepest nesting of brackets, read before the parser (which has its own, lower-level limits)."""
    depth = deepest = 0
    for char in source:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _eval(node: ast.AST, values: Mapping[str, Any], depth: int) -> Any:
    if depth > MAX_DEPTH + 1:
        raise ExpressionLimit(f"nests deeper than {MAX_DEPTH} levels")
    depth += 1
    if isinstance(node, ast.Constant):
        return _check_size(node.value)
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, values, depth) for e in node.elts]  # its length is known even when its items are not
    if isinstance(node, ast.BinOp):
        left, right = _number(_eval(node.left, values, depth)), _number(_eval(node.right, values, depth))
        special = _SPECIAL.get(type(node.op))
        if special is not None:
            return _check_size(special(left, right))
        if not _known(left, right):
            return _UNKNOWN
        return _check_size(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, values, depth)
        if not _known(operand):
            return _UNKNOWN
        if isinstance(node.op, ast.Not):
            return ~np.asarray(operand, dtype=bool) if np.ndim(operand) else not operand
        operand = _number(operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BoolOp):
        raw = [_eval(v, values, depth) for v in node.values]
        if not _known(*raw):
            return _UNKNOWN
        parts = [np.asarray(v, dtype=bool) for v in raw]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        result = parts[0]
        for part in parts[1:]:
            result = combine(result, part)
        return result
    if isinstance(node, ast.Compare):
        left, result = _eval(node.left, values, depth), None
        unknown = not _known(left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, values, depth)
            if unknown or not _known(right):
                unknown, left = True, right
                continue
            if isinstance(op, (ast.In, ast.NotIn)):
                hit = pd.Series(left).isin(right).to_numpy() if np.ndim(left) else left in right
                part = hit if isinstance(op, ast.In) else ~np.asarray(hit, dtype=bool)
            else:
                part = _COMPARE[type(op)](left, right)
            result = part if result is None else np.logical_and(result, part)
            left = right
        return _UNKNOWN if unknown else result
    if isinstance(node, ast.Call):
        args = [_eval(a, values, depth) for a in node.args]
        if not _known(*args):
            return _UNKNOWN
        with np.errstate(all="ignore"):
            return _check_size(_FUNCTIONS[node.func.id](*args))  # type: ignore[union-attr]
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
        except (TypeError, ValueError, ArithmeticError) as exc:
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
