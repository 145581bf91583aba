"""The expression language of a spec's ``derive:`` and ``filter:``, evaluated over numpy arrays.

One evaluator serves both sides of a model: ingest (``mlcycle.derive.apply``, a batch of the source's
rows) and the prediction server (the rows of one request). A scope maps each name an expression reads
to a 1-D numpy array (one value per row) or a plain constant; the value is an array of the same
length, or a constant when the expression reads no column. Nothing here imports pandas.

What the language holds (columns, numbers and strings, arithmetic, comparisons, ``and``, ``or``,
``not``, ``in [..]``, the functions of ``FUNCTIONS``, the calendar parts of ``CALENDAR_PARTS``) and
how it is bounded (``LIMITS``) is documented in ``mlcycle.derive``. The rules of the data:

- a missing value is NaN in a column of numbers and NaN (or None) in a column of text;
- a comparison with a missing value is false (``!=`` is true), as is ``in [..]`` unless the list
  holds the same kind of missing value;
- arithmetic on text with a missing value gives a missing value;
- ``x / 0``, ``x // 0`` and ``x % 0`` are NaN in the rows whose divisor is 0, never an infinity;
- a condition in arithmetic is a number, 0 or 1 (``(a > 0) + (b > 0)`` counts the conditions that
  hold), as a derived condition is stored;
- ``clip`` ignores a missing bound, ``isnull`` is true for NaN, None and NaT.
"""

from __future__ import annotations

import ast
import datetime as dt
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlcycle.errors import SpecError

CALENDAR_PARTS = ("hour", "day_of_week", "day", "month", "year", "day_of_year", "is_weekend")
#: Unambiguous spellings: ``local_<part>`` is always the calendar part, ``source_<part>`` the source's
#: column of that name (for a source whose own columns are named like calendar parts).
CALENDAR_ALIASES = {f"local_{part}": part for part in CALENDAR_PARTS}
SOURCE_ALIASES = {f"source_{part}": part for part in CALENDAR_PARTS}
CALENDAR_NAMES = (*CALENDAR_PARTS, *CALENDAR_ALIASES)

#: The bounds of an expression (see ``mlcycle.derive``'s docstring).
MAX_SOURCE_CHARS = 4000
MAX_NODES = 1000
MAX_DEPTH = 100
MAX_EXPONENT = 64
MAX_ITEMS = 10_000
MAX_INT_BITS = 4096
LIMITS = {
    "characters": MAX_SOURCE_CHARS,
    "elements": MAX_NODES,
    "nesting depth": MAX_DEPTH,
    "exponent": MAX_EXPONENT,
    "characters or items of a text or list": MAX_ITEMS,
    "bits of a whole number": MAX_INT_BITS,
}


class ExpressionLimit(SpecError):
    """An expression goes past one of the bounds of the language (at load or at evaluation)."""


# --------------------------------------------------------------------------------------------
# Missing values and the operators over arrays

_FLOATS, _TIMES, _BOOLS = (float, np.floating), (np.datetime64, np.timedelta64), (bool, np.bool_)
_NUMBERS, _SIZED, _LISTS = (int, float, np.number), (str, bytes, list, tuple), (list, tuple)
_LISTS_NODES, _MEMBERSHIP = (ast.List, ast.Tuple), (ast.In, ast.NotIn)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.ndim > 0


def _is_text_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "OUS" and value.ndim > 0


def _null_scalar(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, _FLOATS):
        return value != value  # noqa: PLR0124 - NaN is the one value unequal to itself
    if isinstance(value, _TIMES):
        return bool(np.isnat(value))
    return type(value).__name__ in ("NaTType", "NAType")


def isnull(value: Any) -> Any:
    """True where a value is missing: NaN, None, NaT (an array gives an array of booleans)."""
    if not _is_array(value):
        if isinstance(value, np.ndarray):  # 0-d
            value = value.item()
        return _null_scalar(value)
    kind = value.dtype.kind
    if kind in "fc":
        return np.isnan(value)
    if kind in "mM":
        return np.isnat(value)
    if kind == "O":
        return np.fromiter((_null_scalar(v) for v in value), dtype=bool, count=len(value))
    return np.zeros(value.shape, dtype=bool)


def notnull(value: Any) -> Any:
    missing = isnull(value)
    return ~missing if _is_array(missing) else not missing


def _masked(op: Callable[[Any, Any], Any], left: Any, right: Any, fill: Any) -> Any:
    """``op`` element by element on arrays of text, ``fill`` where either side is missing (the
    operator itself is not asked: Python's ``<`` refuses NaN against text)."""
    missing = np.zeros(np.broadcast_shapes(np.shape(left), np.shape(right)), dtype=bool)
    for side in (left, right):
        missing = missing | isnull(side) if _is_array(side) or _null_scalar(side) else missing
    if not missing.any():
        return op(left, right)
    keep = ~missing
    pick = lambda v: np.broadcast_to(v, missing.shape)[keep] if _is_array(v) else v  # noqa: E731
    part = op(pick(left), pick(right))
    if isinstance(fill, bool):
        out = np.full(missing.shape, fill, dtype=bool)
    else:
        out = np.full(missing.shape, fill, dtype=object)
    out[keep] = part
    return out


def _compare(op: Callable[[Any, Any], Any], left: Any, right: Any) -> Any:
    # _is_text_array of each side, written out: this runs for every comparison of every request
    if (isinstance(left, np.ndarray) and left.dtype.kind in "OUS" and left.ndim) or (
        isinstance(right, np.ndarray) and right.dtype.kind in "OUS" and right.ndim
    ):
        return _masked(op, left, right, op is operator.ne)
    return op(left, right)


def _arith(op: Callable[[Any, Any], Any], left: Any, right: Any) -> Any:
    if (isinstance(left, np.ndarray) and left.dtype.kind in "OUS" and left.ndim) or (
        isinstance(right, np.ndarray) and right.dtype.kind in "OUS" and right.ndim
    ):
        return _masked(op, left, right, np.nan)
    return op(left, right)


def _isin(left: Any, items: list[Any]) -> Any:
    """``left in items``: a column's values found in the list; a missing value is found only when the
    list holds the same kind (NaN for NaN, None for None)."""
    if not _is_array(left):
        return left in items
    has_nan = any(isinstance(v, _FLOATS) and v != v for v in items)  # noqa: PLR0124
    kind = left.dtype.kind
    if kind in "iufb":
        numbers = [v for v in items if isinstance(v, _NUMBERS) and not isinstance(v, bool) and v == v]  # noqa: PLR0124
        hit = np.isin(left, np.asarray(numbers, dtype=np.float64)) if numbers else np.zeros(len(left), bool)
        if has_nan and kind in "fc":
            hit = hit | np.isnan(left)
        return hit
    known = set()
    for v in items:
        try:
            known.add(v)
        except TypeError:  # an unhashable item (a nested list) matches nothing a column holds
            continue

    def found(v: Any) -> bool:
        if isinstance(v, float) and v != v:  # noqa: PLR0124
            return has_nan
        try:
            return v in known
        except TypeError:
            return False

    return np.fromiter((found(v) for v in left), dtype=bool, count=len(left))


def _bound(value: Any) -> Any:
    """A bound of ``clip``, None when it is missing (a null constant, or a column of nulls only)."""
    missing = isnull(value)
    return None if bool(np.all(missing)) else value


def _clip(value: Any, lower: Any, upper: Any) -> Any:
    """``clip(x, lo, hi)`` as pandas clips a column: two constant bounds are taken in order (low, high);
    a missing bound does not clip; both bounds are compared with ``x`` itself (not with ``x`` clipped by
    the other), and a missing ``x`` stays missing."""
    if not _is_array(value):
        return np.clip(value, lower, upper)
    lower, upper = _bound(lower), _bound(upper)
    if lower is not None and upper is not None and np.ndim(lower) == 0 and np.ndim(upper) == 0:
        lower, upper = min(lower, upper), max(lower, upper)
    missing = isnull(value)
    result = value
    for bound, beyond, fill in ((lower, operator.ge, -np.inf), (upper, operator.le, np.inf)):
        if bound is None:
            continue
        limit = np.where(isnull(bound), fill, bound) if _is_array(bound) else bound
        keep = missing | beyond(value, limit)
        if not keep.all():  # untouched, a column keeps its type (as pandas keeps it)
            result = np.where(keep, result, bound)
    return result


def _round(value: Any, decimals: Any = 0) -> Any:
    return np.round(value, decimals)


BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": np.abs,
    "log": np.log,
    "log1p": np.log1p,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "round": _round,
    "clip": _clip,
    "where": np.where,
    "isnull": isnull,
    "notnull": notnull,
}


# --------------------------------------------------------------------------------------------
# Parsing, with the bounds


def _short(source: str) -> str:
    return repr(source) if len(source) <= 80 else f"{source[:60]!r}... ({len(source)} characters)"


def _shape(tree: ast.AST, source: str, where: str) -> None:
    """Refuse a tree with too many elements or too deep a nesting (walked without recursion)."""
    count, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ExpressionLimit(
                f"{where}: {_short(source)} has more than {MAX_NODES} elements (the limit of "
                "an expression): split it into several derived columns"
            )
        if depth > MAX_DEPTH:
            raise ExpressionLimit(
                f"{where}: {_short(source)} nests deeper than {MAX_DEPTH} levels (the limit of "
                "an expression): split it into several derived columns"
            )
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


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


@dataclass(frozen=True)
class Expression:
    """One parsed expression; ``names`` are the columns (or calendar parts) it reads."""

    source: str
    tree: ast.Expression
    names: frozenset[str]
    where: str = "expression"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_run", _compile(self.tree.body, 1))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its closures (they do not pickle): compiled again on the way back."""
        return {k: v for k, v in self.__dict__.items() if k != "_run"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        self.__post_init__()

    @classmethod
    def parse(cls, source: str, where: str) -> Expression:
        source = str(source)
        if len(source) > MAX_SOURCE_CHARS:
            raise ExpressionLimit(
                f"{where}: {_short(source)} is longer than {MAX_SOURCE_CHARS} characters (the "
                "limit of an expression): split it into several derived columns"
            )
        if _nesting(source) > MAX_DEPTH:
            raise ExpressionLimit(
                f"{where}: {_short(source)} nests deeper than {MAX_DEPTH} levels (the limit of "
                "an expression): split it into several derived columns"
            )
        try:
            tree = ast.parse(source, mode="eval")
        except SyntaxError as exc:
            raise SpecError(f"{where}: cannot parse {_short(source)}: {exc.msg}") from exc
        except (RecursionError, MemoryError) as exc:  # nesting the parser itself refuses
            raise ExpressionLimit(
                f"{where}: {_short(source)} nests too deeply to parse (at most {MAX_DEPTH} levels)"
            ) from exc
        _shape(tree, source, where)
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                    raise SpecError(
                        f"{where}: {source!r} calls something other than "
                        f"{', '.join(sorted(FUNCTIONS))} (positional arguments only)"
                    )
            elif not isinstance(node, _ALLOWED):
                raise SpecError(
                    f"{where}: {source!r} uses {type(node).__name__}, which expressions do "
                    "not allow (columns, numbers, strings, arithmetic, comparisons, and/or/not, "
                    "in [...] and the listed functions)"
                )
        names -= set(FUNCTIONS)
        expression = cls(source=source, tree=tree, names=frozenset(names), where=where)
        try:  # the constant parts, computed now: a limit they breach fails the load
            expression.evaluate(_Unknown.SCOPE)
        except ExpressionLimit:
            raise
        except Exception:  # noqa: BLE001, S110 - a type mismatch among constants is the data's to show
            pass
        return expression

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        """The expression's value over ``values`` (columns by name: 1-D arrays, or anything with a
        ``to_numpy()`` such as a pandas Series, whose index the result then keeps); ExpressionLimit
        past a bound."""
        like = next((v for v in values.values() if _series_like(v)), None) if type(values) is dict else None
        if like is None:
            return self.evaluate_arrays(values)
        result = self.evaluate_arrays(
            {k: (v.to_numpy() if _series_like(v) else v) for k, v in values.items()}
        )
        if _is_array(result) and len(result) == len(like):
            return type(like)(result, index=like.index)
        return result

    def evaluate_arrays(self, values: Mapping[str, Any]) -> Any:
        """The expression's value over columns that are numpy arrays already (the hot path)."""
        try:
            return self._run(values)
        except ExpressionLimit as exc:
            raise ExpressionLimit(f"{self.where}: {_short(self.source)} {exc}") from None


def _series_like(value: Any) -> bool:
    return hasattr(value, "to_numpy") and hasattr(value, "index")


_ALLOWED = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Name,
    ast.Constant,
    ast.Load,
    ast.List,
    ast.Tuple,
    ast.And,
    ast.Or,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.In,
    ast.NotIn,
    *BINARY,
    *COMPARE,
)


class _Unknown:
    """The value of a column while a spec loads: what it reads is unknown, the constants are not."""

    SCOPE: Mapping[str, Any]


_UNKNOWN = _Unknown()
#: The values ``_known`` has to look into (anything else is known): tested first, inline, on the hot path.
_OPAQUE = (_Unknown, list)


class _UnknownScope(dict):
    def __missing__(self, key: str) -> _Unknown:
        return _UNKNOWN


_Unknown.SCOPE = _UnknownScope()


# --------------------------------------------------------------------------------------------
# Evaluation


def _text_like(value: Any) -> bool:
    """Text or a list: what ``*`` would repeat rather than multiply."""
    if isinstance(value, _SIZED):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and dtype.kind in "OUS"


def _check_size(value: Any) -> Any:
    if isinstance(value, _SIZED) and len(value) > MAX_ITEMS:
        raise ExpressionLimit(
            f"makes a text or list of {len(value)} characters or items (at most {MAX_ITEMS})"
        )
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
            raise ExpressionLimit(
                f"raises to the power {exponent!r} (an exponent is at most {MAX_EXPONENT} in absolute value)"
            )
        if (
            isinstance(base, int)
            and isinstance(exponent, int)
            and exponent > 0
            and base.bit_length() * exponent > MAX_INT_BITS
        ):
            raise ExpressionLimit(
                f"makes a whole number of about {base.bit_length() * exponent} bits (at most {MAX_INT_BITS})"
            )
    if not _known(base, exponent):
        return _UNKNOWN
    return _arith(operator.pow, base, exponent)


def _multiply(left: Any, right: Any) -> Any:
    for text, count in ((left, right), (right, left)):
        if _text_like(text) and not _text_like(count):
            if np.ndim(text) and not isinstance(text, _LISTS):  # a column of text: the data's problem
                raise TypeError("`*` multiplies numbers; this column holds text")
            if isinstance(count, _Unknown) or np.ndim(count):
                raise ExpressionLimit(
                    "repeats text or a list by a column (`*` repeats only by a known count)"
                )
            size = len(text) * count if isinstance(count, int) else None
            if size is not None and size > MAX_ITEMS:
                raise ExpressionLimit(
                    f"repeats text or a list to {size} characters or items (at most {MAX_ITEMS})"
                )
    if not _known(left, right):
        return _UNKNOWN
    return _arith(operator.mul, left, right)


def _divide(op: Callable[[Any, Any], Any], left: Any, right: Any) -> Any:
    """``/``, ``//`` and ``%``, null where the divisor is 0 (the documented rule), never an infinity."""
    if not _known(left, right):
        return _UNKNOWN
    if np.ndim(left) == 0 and np.ndim(right) == 0:
        if isinstance(right, _NUMBERS) and not isinstance(right, bool) and right == 0:
            return np.nan
        return op(left, right)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = _arith(op, left, right)
    divisor = np.asarray(right)
    if divisor.dtype.kind not in "biufc":
        return result
    zero = np.broadcast_to(divisor == 0, np.shape(result))
    if not zero.any():
        return result
    if np.asarray(result).dtype.kind == "O":
        out = np.array(result, dtype=object)
        out[zero] = np.nan
        return out
    return np.where(zero, np.nan, np.asarray(result, dtype=float))


_SPECIAL: dict[type, Callable[[Any, Any], Any]] = {
    ast.Pow: _power,
    ast.Mult: _multiply,
    ast.Div: lambda a, b: _divide(operator.truediv, a, b),
    ast.FloorDiv: lambda a, b: _divide(operator.floordiv, a, b),
    ast.Mod: lambda a, b: _divide(operator.mod, a, b),
}


def _number(value: Any) -> Any:
    """A condition used as a number is 0/1, like a derived flag: ``(a > 0) + (b > 0)`` counts the
    conditions that hold (0, 1 or 2), ``-(a > 0)`` is 0 or -1."""
    if isinstance(value, _BOOLS):
        return int(value)
    if value.__class__ is np.ndarray and value.dtype == bool:
        return value.astype(np.int64)
    return value


def _known(*values: Any) -> bool:
    for v in values:
        if v.__class__ is _Unknown or (v.__class__ is list and not _known(*v)):
            return False
    return True


#: What evaluating a compiled expression takes and gives: the scope, the value.
Run = Callable[[Mapping[str, Any]], Any]


def _compile(node: ast.AST, depth: int) -> Run:
    """The tree as nested closures, each node's dispatch decided once (a request's row pays only for
    the operators): the one evaluator of the language, for a batch and for one row alike. A tree that
    breaks a rule of the language (too deep, an unknown element) compiles to a closure that raises
    when evaluated, as a tree walked at each evaluation would."""
    if depth > MAX_DEPTH + 1:
        return _raising(ExpressionLimit(f"nests deeper than {MAX_DEPTH} levels"))
    depth += 1
    kind = type(node)
    if kind is ast.Name:
        return operator.itemgetter(node.id)
    if kind is ast.Constant:
        constant = node.value
        try:
            _check_size(constant)
        except ExpressionLimit:  # raised at each evaluation, as the limit says
            return lambda values: _check_size(constant)
        return lambda values: constant
    if kind in _LISTS_NODES:
        items = tuple(_compile(e, depth) for e in node.elts)
        # a list's length is known even when its items are not
        return lambda values: [item(values) for item in items]
    if kind is ast.BinOp:
        return _compile_binary(node, depth)
    if kind is ast.UnaryOp:
        return _compile_unary(node, depth)
    if kind is ast.BoolOp:
        return _compile_bool(node, depth)
    if kind is ast.Compare:
        return _compile_compare(node, depth)
    if kind is ast.Call:
        return _compile_call(node, depth)
    return _raising(SpecError(f"unsupported expression element {kind.__name__}"))


def _raising(error: Exception) -> Run:
    def run(values: Mapping[str, Any]) -> Any:
        raise error

    return run


def _compile_binary(node: ast.BinOp, depth: int) -> Run:
    left, right, op_kind = _compile(node.left, depth), _compile(node.right, depth), type(node.op)
    special = _SPECIAL.get(op_kind)
    if special is not None:
        return lambda values: _check_size(special(_number(left(values)), _number(right(values))))
    plain = BINARY.get(op_kind)

    def run(values: Mapping[str, Any]) -> Any:
        a, b = _number(left(values)), _number(right(values))
        if (a.__class__ in _OPAQUE or b.__class__ in _OPAQUE) and not _known(a, b):
            return _UNKNOWN
        return _check_size(_arith(BINARY[op_kind] if plain is None else plain, a, b))

    return run


def _compile_unary(node: ast.UnaryOp, depth: int) -> Run:
    inner, op_kind = _compile(node.operand, depth), type(node.op)

    def run(values: Mapping[str, Any]) -> Any:
        operand = inner(values)
        if not _known(operand):
            return _UNKNOWN
        if op_kind is ast.Not:
            return ~np.asarray(operand, dtype=bool) if np.ndim(operand) else not operand
        operand = _number(operand)
        return -operand if op_kind is ast.USub else operand

    return run


def _compile_bool(node: ast.BoolOp, depth: int) -> Run:
    inners = tuple(_compile(v, depth) for v in node.values)
    combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or

    def run(values: Mapping[str, Any]) -> Any:
        raw = [inner(values) for inner in inners]
        if not _known(*raw):
            return _UNKNOWN
        parts = [np.asarray(v, dtype=bool) for v in raw]
        result = parts[0]
        for part in parts[1:]:
            result = combine(result, part)
        return result

    return run


def _compare_one(op: ast.cmpop, left: Any, right: Any) -> Any:
    if isinstance(op, _MEMBERSHIP):
        hit = _isin(left, right)
        return hit if isinstance(op, ast.In) else ~np.asarray(hit, dtype=bool)
    return _compare(COMPARE[type(op)], left, right)


def _compile_compare(node: ast.Compare, depth: int) -> Run:
    first = _compile(node.left, depth)
    chain = tuple((op, _compile(c, depth)) for op, c in zip(node.ops, node.comparators, strict=True))
    if len(chain) == 1 and type(chain[0][0]) in COMPARE:  # ``a > 0``: the common case, one operator
        compare, second = COMPARE[type(chain[0][0])], chain[0][1]

        def one(values: Mapping[str, Any]) -> Any:
            left = first(values)
            right = second(values)
            if (left.__class__ in _OPAQUE or right.__class__ in _OPAQUE) and not _known(left, right):
                return _UNKNOWN
            return _compare(compare, left, right)

        return one

    def run(values: Mapping[str, Any]) -> Any:
        left, result = first(values), None
        unknown = not _known(left)
        for op, comparator in chain:
            right = comparator(values)
            if unknown or not _known(right):
                unknown, left = True, right
                continue
            part = _compare_one(op, left, right)
            result = part if result is None else np.logical_and(result, part)
            left = right
        return _UNKNOWN if unknown else result

    return run


def _compile_call(node: ast.Call, depth: int) -> Run:
    args = tuple(_compile(a, depth) for a in node.args)
    name = node.func.id if isinstance(node.func, ast.Name) else None
    function = FUNCTIONS.get(name) if name is not None else None

    def run(values: Mapping[str, Any]) -> Any:
        given = [arg(values) for arg in args]
        if not _known(*given):
            return _UNKNOWN
        with np.errstate(all="ignore"):
            return _check_size((function or FUNCTIONS[name])(*given))  # type: ignore[index]

    return run


# --------------------------------------------------------------------------------------------
# Calendar parts of local times, without pandas (the server's rows)


_PART_OF: dict[str, Callable[[dt.datetime], int]] = {
    "hour": lambda t: t.hour,
    "day_of_week": lambda t: t.weekday(),
    "day": lambda t: t.day,
    "month": lambda t: t.month,
    "year": lambda t: t.year,
    "day_of_year": lambda t: t.timetuple().tm_yday,
    "is_weekend": lambda t: int(t.weekday() >= 5),
}


def calendar_part(local: list[dt.datetime], part: str) -> np.ndarray:
    """One calendar part (``hour``, ``day_of_week``... or its ``local_`` spelling) of local wall-clock
    times (``datetime`` objects already in the spec's zone), as an int64 array."""
    of = _PART_OF[CALENDAR_ALIASES.get(part, part)]
    if len(local) == 1:
        return np.array([of(local[0])], dtype=np.int64)
    return np.fromiter(map(of, local), dtype=np.int64, count=len(local))


def calendar_of(local: list[dt.datetime]) -> dict[str, np.ndarray]:
    """Every calendar part of local wall-clock times, with the ``local_<part>`` aliases."""
    parts = {part: calendar_part(local, part) for part in CALENDAR_PARTS}
    return {**parts, **{alias: parts[part] for alias, part in CALENDAR_ALIASES.items()}}
