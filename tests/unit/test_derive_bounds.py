"""The expression language is bounded: no spec can exhaust the machine, and x / 0 is null.

Limits are checked when the spec loads (a spec error with the key path) and again at every
evaluation; a generated test walks the grammar on both sides of the limits.
"""

from __future__ import annotations

import ast
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlcycle import derive
from mlcycle.derive import Expression, ExpressionLimit
from mlcycle.errors import SpecError
from mlcycle.spec import load_spec
from tests.datasets import make_events_dataset, write_spec_variant

ROWS = 50
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # long generated reprs


def _columns() -> dict[str, pd.Series]:
    rng = np.random.default_rng(0)
    values = {name: pd.Series(rng.normal(0, 10, ROWS).round(1)) for name in ("a", "b", "c")}
    values["b"].iloc[::7] = 0.0  # divisors of zero
    values["c"].iloc[::5] = np.nan
    return values


@pytest.fixture(scope="module")
def events_spec(tmp_path_factory):
    return make_events_dataset(tmp_path_factory.mktemp("events"), days=2)


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("10 ** 10 ** 10", "raises to the power 10000000000 (an exponent is at most 64"),
        ("'a' * 10 ** 10", "repeats text or a list to 10000000000 characters or items (at most 10000)"),
        ("[1] * 10 ** 9", "repeats text or a list to 1000000000 characters or items (at most 10000)"),
        ("arr_delay + " * 100_000 + "1", "is longer than 4000 characters (the limit of an expression)"),
        ("-" * 150 + "arr_delay", "nests deeper than 100 levels"),
        ("arr_delay ** 1000", "raises to the power 1000"),
        ("'late' * arr_delay", "repeats text or a list by a column"),
        ("((2 ** 64) ** 64) ** 64", "makes a whole number of about 4160 bits (at most 4096)"),
    ],
)
def test_past_the_limits_a_spec_does_not_load_and_names_the_key(events_spec, tmp_path, source, says):
    bad = write_spec_variant(events_spec, tmp_path / "bad.yaml", derive={"late": source})
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    text = str(err.value)
    assert "derive.late: " in text and says in text, text
    assert len(text) < 2000  # a 100,000-term source is quoted shortened, not whole


def test_a_filter_past_the_limits_names_its_position(events_spec, tmp_path):
    bad = write_spec_variant(
        events_spec, tmp_path / "bad.yaml", filter=["cancelled == 0", "[0] * 10 ** 9 == []"]
    )
    with pytest.raises(SpecError, match=r"filter\[1\]: .*repeats text or a list to 1000000000"):
        load_spec(bad)


def test_the_limits_are_checked_again_at_each_evaluation():
    """An Expression that never went through parse (or whose limits changed) is still bounded."""
    for source, says in (
        ("a ** 100", "raises to the power 100"),
        ("'x' * 20000", "repeats text"),
        ("'x' * a", "by a column"),
    ):
        unchecked = Expression(
            source=source, tree=ast.parse(source, mode="eval"), names=frozenset({"a"}), where="derive.y"
        )
        with pytest.raises(ExpressionLimit, match=rf"derive\.y: .*{says}"):
            unchecked.evaluate({"a": pd.Series([1.0, 2.0])})


@pytest.mark.parametrize("source", ["a // b", "a / b", "a % b", "a / 0", "a // 0.0", "a % 0"])
def test_division_by_zero_is_null(source):
    a, b = pd.Series([6, 7, 8]), pd.Series([0, 2, 0])
    result = Expression.parse(source, "derive.y").evaluate({"a": a, "b": b})
    divisor = b if "b" in source else pd.Series([0, 0, 0])
    assert np.isnan(result[divisor.to_numpy() == 0]).all()
    assert not np.isinf(np.asarray(result, dtype=float)).any()
    assert np.isfinite(result[divisor.to_numpy() != 0]).all()


def test_division_by_zero_of_constants_is_null():
    assert np.isnan(Expression.parse("1 // 0", "derive.y").evaluate({}))
    assert np.isnan(Expression.parse("1 % 0", "derive.y").evaluate({}))


def test_text_and_lists_repeat_within_the_limit():
    assert Expression.parse("'ab' * 3", "d").evaluate({}) == "ababab"
    assert Expression.parse("[0] * 3", "d").evaluate({}) == [0, 0, 0]


# --- the grammar, generated ------------------------------------------------------------------

_leaf = st.one_of(
    st.sampled_from(["a", "b", "c"]),
    st.integers(-1000, 1000).map(str),
    st.floats(-1e3, 1e3, allow_nan=False).map(lambda f: repr(round(f, 3))),
)


def _grow(kids):
    return st.one_of(
        st.tuples(kids, st.sampled_from(["+", "-", "*", "/", "//", "%"]), kids).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(
            st.sampled_from(["a", "b", "c"]), st.integers(-derive.MAX_EXPONENT, derive.MAX_EXPONENT)
        ).map(lambda t: f"({t[0]} ** {t[1]})"),
        st.tuples(kids, st.sampled_from(["<", "<=", ">", "==", "!="]), kids).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(st.sampled_from(["abs", "sqrt", "log1p", "exp", "round", "isnull"]), kids).map(
            lambda t: f"{t[0]}({t[1]})"
        ),
        st.tuples(kids, kids, kids).map(lambda t: f"where({t[0]} > 0, {t[1]}, {t[2]})"),
        st.tuples(kids, kids).map(lambda t: f"clip({t[0]}, -5, {t[1]})"),
        kids.map(lambda k: f"-({k})"),
        st.tuples(kids, kids).map(lambda t: f"(({t[0]}) > 0 and not ({t[1]}) < 0)"),
    )


def _depth(source: str) -> int:
    deepest, stack = 0, [(ast.parse(source, mode="eval"), 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


within_limits = st.recursive(_leaf, _grow, max_leaves=25).filter(lambda s: _depth(s) <= derive.MAX_DEPTH)
_BREACHES = st.one_of(
    st.integers(derive.MAX_EXPONENT + 1, 10**12).map(lambda n: f"a ** {n}"),
    st.integers(2, 12).map(lambda n: f"2 ** 10 ** {n}"),
    st.integers(derive.MAX_ITEMS + 1, 10**12).map(lambda n: f"'abc' * {n}"),
    st.integers(derive.MAX_ITEMS + 1, 10**12).map(lambda n: f"[a] * {n} == []"),
    st.sampled_from(["'x' * a", "[1, 2] * b"]),
    st.integers(derive.MAX_NODES, 3 * derive.MAX_NODES).map(lambda n: " + ".join(["a"] * n)),
    st.integers(derive.MAX_DEPTH + 1, 400).map(lambda n: "abs(" * n + "a" + ")" * n),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(within_limits)
def test_expressions_within_the_limits_load_and_evaluate_in_bounded_memory(source):
    expression = Expression.parse(source, "derive.y")
    columns = _columns()
    tracemalloc.start()
    try:
        with np.errstate(all="ignore"):
            value = expression.evaluate(columns)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.size(value) in (1, ROWS)  # a scalar or one value per row, never more
    assert peak < 5_000_000, f"{source} took {peak} bytes for {ROWS} rows"


@settings(max_examples=120, deadline=None)
@given(within_limits, _BREACHES, st.sampled_from(["{k} + ({b})", "where({k} > 0, {b}, 1)", "({b}) - {k}"]))
def test_expressions_past_the_limits_are_refused_at_load(inner, breach, shape):
    source = shape.format(k=inner, b=breach)
    with pytest.raises(ExpressionLimit, match=r"derive\.y: "):
        Expression.parse(source, "derive.y")
