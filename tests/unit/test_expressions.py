"""The numpy evaluator of the expression language against pandas, and the server's clock against ingest's.

``mlcycle.expressions`` evaluates ``derive``/``filter`` over numpy arrays, for ingest and for the
server alike. The reference here is the language over pandas Series (how ingest computed it before:
pandas' own operators, ``isin``, ``isna``, ``clip``), on the same frames: random values, nulls, zeros
as divisors, text with missing values, generated expressions. The server's clock
(``mlcycle.serving.derivation.Clock``, no pandas) is checked against ingest's timestamps and calendar
parts on every ten minutes of days when clocks change.
"""

from __future__ import annotations

import ast
import datetime as dt
import operator
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from mlcycle.derive import calendar_parts
from mlcycle.expressions import CALENDAR_NAMES, Expression, calendar_part
from mlcycle.serving.derivation import Clock, RowProblem
from mlcycle.timestamps import derive_event_time
from tests.unit.test_derive_bounds import within_limits

ROWS = 60

# --------------------------------------------------------------------------------------------
# The reference: the language over pandas Series


def _ref_divide(op, left, right):
    if np.ndim(left) == 0 and np.ndim(right) == 0:
        return (
            np.nan
            if isinstance(right, int | float) and not isinstance(right, bool) and right == 0
            else op(left, right)
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        result = op(left, right)
    divisor = right.to_numpy() if isinstance(right, pd.Series) else np.asarray(right)
    if divisor.dtype.kind not in "biufc":
        return result
    zero = np.broadcast_to(divisor == 0, np.shape(result))
    if not zero.any():
        return result
    return (
        result.mask(zero)
        if isinstance(result, pd.Series)
        else np.where(zero, np.nan, np.asarray(result, float))
    )


_REF_FUNCTIONS = {
    "abs": np.abs,
    "log": np.log,
    "log1p": np.log1p,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "round": np.round,
    "where": np.where,
    "isnull": pd.isna,
    "notnull": pd.notna,
    # a column's clip, whatever computed the column (pandas' np.clip of a plain array clipped as numpy does)
    "clip": lambda x, lo, hi: (
        pd.Series(x).clip(pd.Series(lo) if np.ndim(lo) else lo, pd.Series(hi) if np.ndim(hi) else hi)
        if np.ndim(x)
        else np.clip(x, lo, hi)
    ),
}
_REF_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Pow: operator.pow,
    ast.Div: lambda a, b: _ref_divide(operator.truediv, a, b),
    ast.FloorDiv: lambda a, b: _ref_divide(operator.floordiv, a, b),
    ast.Mod: lambda a, b: _ref_divide(operator.mod, a, b),
}
_REF_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _counted(value):
    """A condition in arithmetic is 0/1 (the documented rule; pandas' own ``+`` of two boolean Series
    is their logical or, its ``-`` a negation)."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, pd.Series | np.ndarray) and value.dtype == bool:
        return value.astype("int64")
    return value


def reference(source: str, columns: dict[str, pd.Series]):
    def ev(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return columns[node.id]
        if isinstance(node, ast.List | ast.Tuple):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.BinOp):
            left, right = _counted(ev(node.left)), _counted(ev(node.right))
            return _REF_BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp):
            operand = ev(node.operand)
            if isinstance(node.op, ast.Not):
                return ~np.asarray(operand, dtype=bool) if np.ndim(operand) else not operand
            operand = _counted(operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BoolOp):
            parts = [np.asarray(ev(v), dtype=bool) for v in node.values]
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            result = parts[0]
            for part in parts[1:]:
                result = combine(result, part)
            return result
        if isinstance(node, ast.Compare):
            left, result = ev(node.left), None
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = ev(comparator)
                if isinstance(op, ast.In | ast.NotIn):
                    hit = pd.Series(left).isin(right).to_numpy() if np.ndim(left) else left in right
                    part = hit if isinstance(op, ast.In) else ~np.asarray(hit, dtype=bool)
                else:
                    part = _REF_COMPARE[type(op)](left, right)
                result = part if result is None else np.logical_and(result, part)
                left = right
            return result
        if isinstance(node, ast.Call):
            with np.errstate(all="ignore"):
                return _REF_FUNCTIONS[node.func.id](*[ev(a) for a in node.args])
        raise AssertionError(type(node))

    return ev(ast.parse(source, mode="eval").body)


def _same(got, want) -> None:
    got_a, want_a = np.asarray(got), np.asarray(want)
    assert np.shape(got_a) == np.shape(want_a), (got, want)
    if want_a.dtype.kind in "biuf" and got_a.dtype.kind in "biuf":
        np.testing.assert_allclose(
            got_a.astype(float), want_a.astype(float), rtol=1e-12, atol=0, equal_nan=True
        )
    else:
        assert [None if pd.isna(v) else v for v in got_a.ravel().tolist()] == [
            None if pd.isna(v) else v for v in want_a.ravel().tolist()
        ], (got, want)


def _frame(seed: int) -> dict[str, pd.Series]:
    rng = np.random.default_rng(seed)
    a = pd.Series(rng.normal(0, 10, ROWS).round(1))
    b = pd.Series(rng.integers(-3, 4, ROWS))  # whole numbers, zeros among them
    c = pd.Series(rng.normal(0, 10, ROWS).round(1))
    a.iloc[::9] = 0.0
    c.iloc[::5] = np.nan
    c.iloc[1] = -0.0
    text = pd.Series(rng.choice(["AA", "DL", "UA"], ROWS), dtype=object)
    text.iloc[::7] = np.nan
    return {"a": a, "b": b, "c": c, "t": text}


def _numpy_scope(frame: dict[str, pd.Series]) -> dict[str, np.ndarray]:
    return {k: v.to_numpy() for k, v in frame.items()}


CASES = [
    "a + b * 2 - c / 3",
    "a / b",
    "a // b",
    "a % b",
    "b // 0",
    "b % 0",
    "a / 0",
    "b / b",
    "-b",
    "+a",
    "a ** 2 + b ** 3",
    "b ** 2",
    "abs(c)",
    "log(a)",
    "log1p(abs(a))",
    "exp(a / 10)",
    "sqrt(a)",
    "round(a / 3)",
    "round(a, 1)",
    "clip(a, -5, 5)",
    "clip(c, b, 5)",
    "clip(a, -5, a)",
    "clip(b, 3, -2)",
    "clip(a, c, b)",
    "where(c > 0, a, b)",
    "isnull(c)",
    "notnull(c)",
    "isnull(t)",
    "notnull(t) and b > 0",
    "a > 0 and not c < 0",
    "a > 0 or c > 0",
    "not a > 0",
    "b in [0, 1, 2]",
    "b not in [0, 1.0]",
    "c in [0.5, -0.5]",
    "t in ['AA', 'DL']",
    "t not in ['UA']",
    "t == 'AA'",
    "t != 'AA'",
    "t < 'DL'",
    "t >= 'DL'",
    "t + '-x'",
    "'x-' + t",
    "t + t",
    "t == t",
    "a < b < c",
    "0 < b <= 2",
    "(a > 0) + (b > 0)",
    "(a > 0) + (b > 0) + isnull(c)",
    "(a > 0) - (b > 0)",
    "(a > 0) * b",
    "(a > 0) * (b > 0)",
    "(a > 0 or c > 0) + 1",
    "-(a > 0)",
    "+(a > 0)",
    "b == 2.0",
    "c == c",
    "a > 15",
    "where(isnull(c), 0, c) * 2",
    "b * 3 // 2",
    "1 / 0",
    "1 // 0",
    "2 ** 10",
    "'ab' * 2",
    "isnull(1)",
    "abs(-3)",
    "a - a",
    "(b + 0.5) // 1",
    "c % 3",
]


@pytest.mark.parametrize("source", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_numpy_evaluator_equals_pandas(source, seed):
    frame = _frame(seed)
    expression = Expression.parse(source, "derive.x")
    want = reference(source, frame)
    got = expression.evaluate_arrays(_numpy_scope(frame))
    _same(got, want)
    assert type(got) is not pd.Series  # numpy in, numpy out: no pandas on this path
    # pandas Series in (the drafting tool's way): the same values, the index kept
    _same(expression.evaluate(frame), want)


def test_a_null_in_text_is_false_in_comparisons_and_null_in_arithmetic():
    scope = {"t": np.array(["AA", np.nan, None], dtype=object)}
    assert Expression.parse("t < 'B'", "x").evaluate_arrays(scope).tolist() == [True, False, False]
    assert Expression.parse("t != 'AA'", "x").evaluate_arrays(scope).tolist() == [False, True, True]
    joined = Expression.parse("t + '!'", "x").evaluate_arrays(scope).tolist()
    assert joined[0] == "AA!" and all(v != v for v in joined[1:])  # noqa: PLR0124 - NaN
    assert Expression.parse("t in [None]", "x").evaluate_arrays(scope).tolist() == [False, False, True]


def test_division_by_zero_is_null_on_one_row_as_on_many():
    for source in ("a / b", "a // b", "a % b"):
        expression = Expression.parse(source, "x")
        one = expression.evaluate_arrays({"a": np.array([5]), "b": np.array([0])})
        assert one.shape == (1,) and np.isnan(one[0])
        many = expression.evaluate_arrays({"a": np.array([5, 6]), "b": np.array([0, 4])})
        assert np.isnan(many[0]) and np.isfinite(many[1])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(within_limits, st.integers(0, 5))
def test_generated_expressions_give_the_same_values_over_numpy_and_pandas(source, seed):
    frame = {k: v for k, v in _frame(seed).items() if k != "t"}
    expression = Expression.parse(source, "derive.y")
    try:
        with np.errstate(all="ignore"):
            want = reference(source, frame)
    except (TypeError, ValueError, ArithmeticError) as exc:
        # Where pandas refuses and the language does not: `-` of a combined condition (a numpy boolean
        # array, which numpy does not negate), and a bound of `clip` that is a constant computed by
        # `where` (a 0-d array pandas cannot size).
        if "boolean negative" in str(exc) or "unsized object" in str(exc):
            return
        with pytest.raises(type(exc)):
            expression.evaluate_arrays(_numpy_scope(frame))
        return
    with np.errstate(all="ignore"):
        got = expression.evaluate_arrays(_numpy_scope(frame))
    note(f"source: {source}")
    _same(got, want)


def test_ingest_derives_the_same_columns_as_before(tmp_path):
    """derive.apply over numpy: the values and dtypes ingest stores for the event data set's rules."""
    from mlcycle import derive
    from mlcycle.derive import parse_derivations

    problems: list[str] = []
    rules = parse_derivations(
        {
            "derive": {
                "late": "arr_delay > 15",
                "dow": "day_of_week",
                "hour": "hour",
                "speed": "distance / arr_delay",
                "code": "carrier + '-' + zone",
            },
            "filter": ["cancelled == 0"],
        },
        tmp_path,
        problems,
    )
    assert problems == []
    times = pd.Series(pd.date_range("2023-03-12 04:00", periods=6, freq="1h", tz="UTC"))
    frame = pd.DataFrame(
        {
            "event_time": times,
            "arr_delay": [20.0, 3.0, np.nan, 0.0, 16.0, 1.0],
            "distance": [100.0] * 6,
            "carrier": ["AA", "DL", np.nan, "UA", "AA", "WN"],
            "zone": ["z1"] * 6,
            "cancelled": [0, 0, 1, 0, 0, 1],
        }
    )
    out, dropped = derive.apply(frame, rules, "America/New_York", "event_time")
    assert dropped == {"filter: cancelled == 0": 2}
    assert out["late"].tolist() == [1, 0, 0, 1] and out["late"].dtype == "int64"
    local = times.dt.tz_convert("America/New_York")[[0, 1, 3, 4]]
    assert out["hour"].tolist() == local.dt.hour.tolist() == [23, 0, 3, 4]  # 02:00 does not exist that day
    assert out["dow"].dtype == local.dt.dayofweek.dtype and out["dow"].tolist() == [5, 6, 6, 6]
    assert out["speed"].tolist()[:2] == [5.0, 100.0 / 3] and np.isnan(out["speed"][2])
    assert out["code"].tolist() == ["AA-z1", "DL-z1", "UA-z1", "AA-z1"]


# --------------------------------------------------------------------------------------------
# The server's clock against ingest's timestamps


def _ts(**fields) -> SimpleNamespace:
    base = {
        "kind": "column",
        "column": "ts",
        "format": "%Y-%m-%d %H:%M:%S",
        "year": None,
        "day_column": None,
        "hour_column": None,
        "timezone": "UTC",
    }
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("America/New_York", "2023-03-12"),
        ("America/New_York", "2023-11-05"),
        ("Europe/Paris", "2023-03-26"),
        ("Europe/Paris", "2023-10-29"),
        ("Australia/Lord_Howe", "2023-04-02"),
        ("Australia/Lord_Howe", "2023-10-01"),
        ("UTC", "2023-03-12"),
    ],
)
def test_the_servers_clock_reads_each_time_as_ingest_does(zone, day):
    """Every ten minutes of a day when clocks change (gaps of an hour and of half an hour, repeated
    times): the same UTC instant and the same calendar parts as ingest's."""
    start = dt.datetime.fromisoformat(day)
    texts = [(start + dt.timedelta(minutes=10 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(6 * 24)]
    ts = _ts(timezone=zone)
    frame = pd.DataFrame({"ts": texts})
    utc = derive_event_time(frame, ts).values
    parts = calendar_parts(utc, zone)
    clock = Clock(vars(ts))
    times = [clock.times({"ts": t}) for t in texts]
    want_utc = utc.dt.tz_localize(None).to_numpy().astype("datetime64[us]")
    assert (np.array([u for _, u in times], dtype="datetime64[us]") == want_utc).all()
    local = [lt for lt, _ in times]
    for name in CALENDAR_NAMES:
        assert calendar_part(local, name).tolist() == parts[name].tolist(), name


def test_the_clock_reads_offsets_formats_and_days_of_the_year_as_ingest_does():
    cases = [
        (
            _ts(format="%Y-%m-%dT%H:%M:%SZ", timezone="Europe/Paris"),
            ["2023-03-26T01:30:00Z", "2023-07-01T23:59:59Z"],
        ),
        (
            _ts(format="%Y-%m-%d %H:%M:%S%z", timezone="America/New_York"),
            ["2023-03-12 02:30:00+0100", "2023-11-05 01:30:00-0400", "2023-11-05 01:30:00-05:00"],
        ),
        (_ts(format=None, timezone="America/New_York"), ["2023-03-12T02:30:00", "2023-11-05T01:30:00"]),
        (_ts(format="%d/%m/%Y %H:%M", timezone="Europe/Paris"), ["1/3/2023 2:05", "26/03/2023 02:30"]),
        (_ts(format="%Y-%m-%d %H:%M:%S.%f", timezone="UTC"), ["2023-03-12 02:30:00.250"]),
    ]
    for ts, texts in cases:
        frame = pd.DataFrame({"ts": texts})
        utc = derive_event_time(frame, ts).values
        clock = Clock(vars(ts))
        got = [clock.times({"ts": t}) for t in texts]
        assert [u for _, u in got] == [t.to_pydatetime().replace(tzinfo=None) for t in utc], (
            ts.format,
            texts,
        )
        assert [lt.hour for lt, _ in got] == calendar_parts(utc, ts.timezone)["hour"].tolist()
    doy = _ts(
        kind="day_of_year",
        column=None,
        format=None,
        year=2011,
        day_column="day",
        hour_column="hr",
        timezone="America/New_York",
    )
    frame = pd.DataFrame({"day": [1, 72, 72, 310, 366], "hr": [0, 2, 3, 1, 23]})
    utc = derive_event_time(frame, doy).values
    clock = Clock(vars(doy))
    got = [clock.times(r) for r in frame.to_dict("records")]
    assert [u for _, u in got] == [t.to_pydatetime().replace(tzinfo=None) for t in utc]


@pytest.mark.parametrize("text", ["2023-03-12", "12/03/2023 10:00:00", "2023-02-30 10:00:00", "", None, "x"])
def test_a_time_ingest_cannot_read_is_a_row_problem(text):
    frame = pd.DataFrame({"ts": [text]})
    assert derive_event_time(frame, _ts()).unparseable.tolist() == [True]
    with pytest.raises(RowProblem) as err:
        Clock(vars(_ts())).times({"ts": text})
    assert err.value.kind == "unparseable_timestamp" and err.value.field == "ts"


@pytest.mark.parametrize("fmt", ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"])
def test_the_clocks_iso_shortcut_reads_what_the_fields_read(fmt):
    """A format laid out as ISO 8601 is read by ``datetime.fromisoformat`` first (a few times faster);
    it must give the time the fields give, or fail where they fail, with the same message."""
    start = dt.datetime(2023, 3, 12)
    texts = [(start + dt.timedelta(minutes=37 * i)).strftime(fmt) for i in range(200)]
    texts += [t.replace("-0", "-", 1) for t in texts[:20]] + [t.replace(" ", "  ") for t in texts[:20]]
    texts += [t.replace(" ", "\t") for t in texts[:20]] + [t[:k] for t in texts[:3] for k in range(len(t))]
    texts += ["2023-03-12 24:00:00", "2023-03-12 23:59:60", "2023-02-30 10:00:00", "2023-03-12 1:2:3"]
    fast, fields = Clock(vars(_ts(format=fmt))), Clock(vars(_ts(format=fmt)))
    fields._iso = False  # the reference: every field read and checked one by one

    def read(clock: Clock, text: str):
        try:
            return clock.times({"ts": text})
        except RowProblem as exc:
            return str(exc)

    assert fast._iso
    assert [read(fast, t) for t in texts] == [read(fields, t) for t in texts]


def test_a_parsed_expression_pickles_and_copies():
    """A spec's expressions travel (pickled, deep-copied) without the closures they evaluate with."""
    import copy
    import pickle

    expression = Expression.parse("where(a > 1, a / b, -1)", "derive.y")
    scope = {"a": np.array([0.0, 2.0, 3.0]), "b": np.array([1.0, 0.0, 2.0])}
    want = expression.evaluate_arrays(scope)
    for twin in (pickle.loads(pickle.dumps(expression)), copy.deepcopy(expression)):  # noqa: S301 (its own bytes)
        assert twin.source == expression.source and twin.names == expression.names
        np.testing.assert_array_equal(twin.evaluate_arrays(scope), want)
