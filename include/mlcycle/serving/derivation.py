"""A request's source rows to the model's features: the spec's derive and filter rules, as ingest runs them.

A model trained on derived columns (``dow: day_of_week``, ``speed: distance / air_time``) is served
rows as the source writes them: the server reads each row's timestamp the way ingest does
(``mlcycle.timestamps``: the spec's column and format, ISO 8601 when the spec gives no format; a
naive time in the spec's zone; a repeated local time read as its first occurrence; a time that does
not exist moved forward to the next whole local hour, as pandas moves it), computes the calendar
parts of its local time, and evaluates the rules with the evaluator ingest uses
(``mlcycle.expressions``), over the request's rows as numpy arrays.

- A derived feature the request sends is checked: it must equal what the server computes (a float
  within a relative 1e-9), else 422 naming the column, the sent and the computed value. A request
  that sends a derived feature without the source columns it is computed from (an older client)
  is served the value it sent.
- A row that a ``filter`` rule drops is refused (422 naming the rule): training never saw such a row.
  A rule is checked when the row carries the columns it reads.
- A computed feature is held to the feature's type, range and allowed values like a sent one.
- A derived column that replaces a source column of the same name (``distance: distance * 1.6``) is
  read from the request as the source's value.

No pandas on this path: a one-row request spends microseconds here.
"""

from __future__ import annotations

import datetime as dt
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, NotRequired
from zoneinfo import ZoneInfo

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from mlcycle.expressions import Expression, ExpressionLimit, calendar_part
from mlcycle.serving.schema import ServingSchema, _feature_field, read_as, source_columns

UTC = dt.UTC
#: How many distinct timestamps the clock remembers (a few hundred kB at most).
CLOCK_CACHE = 4096
#: The instants a pandas timestamp holds (ingest drops a row outside them as out of range).
_EARLIEST, _LATEST = dt.datetime(1677, 9, 22), dt.datetime(2262, 4, 11)
_DIRECTIVES = {
    "Y": r"(?P<Y>\d{4})",
    "m": r"(?P<m>\d{1,2})",
    "d": r"(?P<d>\d{1,2})",
    "H": r"(?P<H>\d{1,2})",
    "M": r"(?P<M>\d{1,2})",
    "S": r"(?P<S>\d{1,2})",
    "f": r"(?P<f>\d{1,9})",
    "z": r"(?P<z>Z|[+-]\d{2}:?\d{2})",
    "%": "%",
}
#: Formats whose every text that matches also reads with ``datetime.fromisoformat`` (C, a few times
#: faster than the fields one by one) to the same time, or fails it (then read field by field).
_ISO_LAYOUTS = frozenset(
    ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d")
)
#: The fields a format's regular expression may capture, in the order ``Clock._parse`` reads them.
_FIELDS = ("Y", "m", "d", "H", "M", "S", "f", "z")


class RowProblem(ValueError):
    """One row cannot be read: ``kind`` is the reason, ``field`` the column."""

    def __init__(self, kind: str, field: str | None, message: str):
        super().__init__(message)
        self.kind, self.field = kind, field


def _compile(fmt: str) -> re.Pattern[str] | None:
    """A regular expression for a format made only of %Y %m %d %H %M %S %f %z (what timestamps are
    mostly written with); None for any other, read with ``datetime.strptime``."""
    parts, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%":
            if i + 1 >= len(fmt) or fmt[i + 1] not in _DIRECTIVES:
                return None
            parts.append(_DIRECTIVES[fmt[i + 1]])
            i += 2
        else:
            parts.append(r"\s+" if fmt[i].isspace() else re.escape(fmt[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")


def _offset(text: str) -> dt.tzinfo:
    """The zone of a ``%z`` field: ``Z`` or ``+hh:mm`` / ``-hhmm``."""
    if text == "Z":
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


class Clock:
    """Each row's local wall-clock time and UTC instant, from the spec's ``timestamp`` section."""

    def __init__(self, timestamp: dict[str, Any]):
        self.kind = timestamp.get("kind") or "column"
        self.zone_name = timestamp.get("timezone") or "UTC"
        self.zone = ZoneInfo(self.zone_name)
        self.is_utc = self.zone_name == "UTC"
        self.column = timestamp.get("column")
        self.format = timestamp.get("format")
        self.pattern = _compile(self.format) if self.format else None
        if self.pattern is not None:  # each field's position in match.groups(), or the None appended to it
            index, absent = self.pattern.groupindex, self.pattern.groups
            self._fields = operator.itemgetter(*(index.get(f, absent + 1) - 1 for f in _FIELDS))
        self._iso = self.pattern is not None and self.format in _ISO_LAYOUTS
        self.year = timestamp.get("year")
        self.day_column, self.hour_column = timestamp.get("day_column"), timestamp.get("hour_column")
        self.columns = tuple(c for c in (self.column, self.day_column, self.hour_column) if c)
        self._cache: dict[Any, tuple[dt.datetime, dt.datetime]] = {}

    def describe(self) -> str:
        if self.kind == "column":
            return f"`{self.column}` ({'format ' + self.format if self.format else 'ISO 8601'})"
        return f"the day of {self.year} in `{self.day_column}`" + (
            f" and the hour in `{self.hour_column}`" if self.hour_column else ""
        )

    # -- reading a value

    def _parse(self, text: str) -> dt.datetime:
        if self.format is None:
            return dt.datetime.fromisoformat(text.strip())
        if self.pattern is None:
            return dt.datetime.strptime(text, self.format)  # noqa: DTZ007 - naive or aware, as the format says
        match = self.pattern.match(text)
        if match is None:
            raise ValueError(f"does not match the format {self.format!r}")
        if self._iso:
            try:
                return dt.datetime.fromisoformat(text)
            except ValueError:  # 1-digit fields, several spaces, hour 24: the fields say which
                pass
        year, month, day, hour, minute, second, fraction, zone = self._fields((*match.groups(), None))
        return dt.datetime(
            int(year or 1900),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction + "000000")[:6]) if fraction else 0,
            tzinfo=_offset(zone) if zone else None,
        )

    def _naive(self, row: dict[str, Any]) -> dt.datetime:
        if self.kind == "column":
            value = row.get(self.column)
            if value is None:
                raise RowProblem(
                    "unparseable_timestamp",
                    self.column,
                    f"`{self.column}` is null: the row has no timestamp (ingest drops such a row)",
                )
            try:
                return self._parse(value)
            except (ValueError, TypeError) as exc:
                raise RowProblem(
                    "unparseable_timestamp",
                    self.column,
                    f"`{self.column}` {value!r} is not a timestamp in {self.describe()}: {exc}",
                ) from None
        day, hour = row.get(self.day_column), row.get(self.hour_column) if self.hour_column else 0
        for name, value in ((self.day_column, day), (self.hour_column, hour)):
            if value is None and name:
                raise RowProblem(
                    "unparseable_timestamp",
                    name,
                    f"`{name}` is null: the row has no timestamp (ingest drops such a row)",
                )
        try:
            return dt.datetime(int(self.year), 1, 1) + dt.timedelta(days=day - 1, hours=hour)
        except (OverflowError, ValueError, TypeError):
            raise RowProblem(
                "timestamp_out_of_range",
                self.day_column,
                f"day {day!r}, hour {hour!r} of {self.year} is beyond what a timestamp holds",
            ) from None

    def _localize(self, naive: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        """(local wall time, UTC) of a naive local time, with ingest's rules for the changes of clocks."""
        if self.is_utc:
            return naive, naive
        # PEP 495: fold 0 reads a time with the offset before a change of clocks, fold 1 with the one
        # after. Equal offsets: an ordinary time. Fold 0's larger: a repeated time (clocks went back),
        # read as its first occurrence. Fold 0's smaller: a time that does not exist (clocks went forward).
        before = self.zone.utcoffset(naive)
        after = self.zone.utcoffset(naive.replace(fold=1))
        if before >= after:
            return naive, naive - before
        # Moved forward as ingest (pandas' ``nonexistent="shift_forward"``) moves it: to the next whole
        # local hour, read with the offset after the change (02:30 becomes 03:00 where clocks jump from
        # 02:00 to 03:00; where they jump by half an hour too, as pandas does).
        shifted = naive.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
        return shifted, shifted - self.zone.utcoffset(shifted)

    def times(self, row: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
        """(local wall time, UTC instant) of one row, both naive; RowProblem when it has none.

        The answers for the last ``CLOCK_CACHE`` distinct timestamps are kept: traffic repeats them
        (many events share a minute), and reading one costs more than the rest of the derivation."""
        key = row.get(self.column) if self.kind == "column" else tuple(row.get(c) for c in self.columns)
        known = self._cache.get(key)
        if known is not None:
            return known
        answer = self._read(row)
        if len(self._cache) >= CLOCK_CACHE:
            self._cache.clear()
        if key.__hash__ is not None:
            self._cache[key] = answer
        return answer

    def _read(self, row: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
        naive = self._naive(row)
        if naive.tzinfo is not None:  # an offset in the text: that instant, seen in the spec's zone
            instant = naive.astimezone(UTC)
            local, utc = instant.astimezone(self.zone).replace(tzinfo=None), instant.replace(tzinfo=None)
        else:
            local, utc = self._localize(naive)
        if not _EARLIEST <= utc <= _LATEST:
            raise RowProblem(
                "timestamp_out_of_range",
                self.columns[0],
                f"{utc.isoformat()} UTC is beyond what a timestamp holds (1677 to 2262)",
            )
        return local, utc


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    name: str
    expression: Expression
    reads: tuple[tuple[str, str, str], ...]  # (name in the expression, kind, column or part)


@dataclass(frozen=True)
class _Plan:
    """What to do with rows that carry one set of columns."""

    compute: tuple[_Step, ...]
    sent: frozenset[str]  # derived columns read from the request (not computable from what it holds)
    filters: tuple[_Step, ...]
    compare: tuple[str, ...]  # computed features the rows also sent
    missing: tuple[tuple[str, tuple[str, ...]], ...]  # (feature, the source columns it needs)
    needs_time: bool
    features: tuple[str, ...]  # the computed columns that are features


class RowDerivation:
    """The spec's rules over validated request rows (plain dicts), for a version 2 schema."""

    def __init__(self, schema: ServingSchema):
        self.schema = schema
        self.clock = Clock(schema.timestamp or {"kind": "column", "column": None})
        features = schema.request_features  # history features are fetched after the rules ran
        names = [f.name for f in features] + [i.name for i in schema.inputs]
        rules = [(name, Expression.parse(source, f"derive.{name}")) for name, source in schema.derive]
        self.source = source_columns([(n, e.names) for n, e in rules], names, list(self.clock.columns))
        self.source &= {i.name for i in schema.inputs} | {f.name for f in features} | set(self.clock.columns)
        self.dtypes = {f.name: f.dtype for f in features} | {i.name: i.dtype for i in schema.inputs}
        self.steps, before = [], set()
        for name, expression in rules:
            self.steps.append(_Step(name, expression, self._reads(expression, self.source | before)))
            before.add(name)
        self.filters = []
        for i, rule in enumerate(schema.filters):
            expression = Expression.parse(rule, f"filter[{i}]")
            self.filters.append(
                _Step(f"filter[{i}]", expression, self._reads(expression, self.source | before))
            )
        self.features = {f.name for f in features}
        self.derived = set(schema.derived_features)
        self.relevant = tuple(sorted(self.source | set(self.derived)))
        derived_features = [f for f in features if f.name in {s.name for s in self.steps}]
        fields = {f.name: NotRequired[_feature_field(f, schema)[0]] for f in derived_features}
        typed = with_config(ConfigDict(extra="ignore"))(TypedDict("ComputedFeatures", fields))  # type: ignore[operator]
        self.check = TypeAdapter(list[typed])
        self.validator = self.check.validator  # called directly: the adapter's wrapper costs a call a request
        self.plans: dict[tuple[bool, ...], _Plan] = {}

    @staticmethod
    def _reads(expression: Expression, columns: set[str]) -> tuple[tuple[str, str, str], ...]:
        return tuple((n, *read_as(n, columns)) for n in sorted(expression.names))

    # -- planning, once per set of columns present

    def _plan(self, present: set[str]) -> _Plan:
        available = self.source & present
        time_ok = all(c in present for c in self.clock.columns) and bool(self.clock.columns)
        compute, sent, missing = [], set(), []
        needs_time = False

        def readable(step: _Step) -> list[str]:
            lacking = []
            for _, kind, column in step.reads:
                if kind == "column" and column not in available:
                    lacking.append(column)
                elif kind in ("calendar", "time") and not time_ok:
                    lacking.extend(c for c in self.clock.columns if c not in present)
                elif kind == "unknown":
                    lacking.append(column)
            return lacking

        for step in self.steps:
            lacking = readable(step)
            if not lacking:
                compute.append(step)
                needs_time |= any(kind in ("calendar", "time") for _, kind, _ in step.reads)
                available.add(step.name)
            elif step.name in present:
                sent.add(step.name)
                available.add(step.name)
            elif step.name in self.features:
                missing.append((step.name, tuple(dict.fromkeys(lacking))))
        filters = []
        for step in self.filters:
            if not readable(step):
                filters.append(step)
                needs_time |= any(kind in ("calendar", "time") for _, kind, _ in step.reads)
        compare = tuple(s.name for s in compute if s.name in present and s.name in self.derived)
        features = tuple(s.name for s in compute if s.name in self.features)
        return _Plan(
            tuple(compute), frozenset(sent), tuple(filters), compare, tuple(missing), needs_time, features
        )

    # -- the rows

    def _column(self, rows: list[dict[str, Any]], name: str) -> np.ndarray:
        values = [r[name] for r in rows]
        dtype = self.dtypes.get(name, "string")
        if dtype == "double" or (dtype == "long" and None in values):
            return np.array([math.nan if v is None else v for v in values], dtype=np.float64)
        if dtype == "long":
            return np.array(values, dtype=np.int64)
        out = np.empty(len(values), dtype=object)
        out[:] = [math.nan if v is None else v for v in values]
        return out

    def apply(
        self, rows: list[dict[str, Any]], prefix: tuple = (), single: bool = False
    ) -> list[dict[str, Any]]:
        """Compute every feature the rows do not hold, in place; the problems, one per bad field or row
        (``loc``, ``field``, ``type``, ``msg``), empty when the rows are good."""
        relevant = self.relevant
        if len(rows) == 1:
            groups = {tuple(map(rows[0].__contains__, relevant)): [0]}
        else:
            groups: dict[tuple[bool, ...], list[int]] = {}
            for i, row in enumerate(rows):
                groups.setdefault(tuple(map(row.__contains__, relevant)), []).append(i)
        errors: list[dict[str, Any]] = []
        for key, index in groups.items():
            plan = self.plans.get(key)
            if plan is None:
                plan = self.plans[key] = self._plan(
                    {n for n, here in zip(relevant, key, strict=True) if here}
                )
            self._group(plan, rows, index, prefix, single, errors)
        return errors

    def _group(
        self,
        plan: _Plan,
        rows: list[dict[str, Any]],
        index: list[int],
        prefix: tuple,
        single: bool,
        errors: list[dict[str, Any]],
    ) -> None:
        def loc(i: int, name: str | None = None) -> list[Any]:
            return [*prefix, *(() if single else (i,)), *((name,) if name else ())]

        for feature, lacking in plan.missing:
            for i in index:
                errors.append(
                    {
                        "loc": loc(i, feature),
                        "field": feature,
                        "type": "missing",
                        "msg": f"`{feature}` is computed from {', '.join(f'`{c}`' for c in lacking)}: "
                        f"send {'them' if len(lacking) > 1 else 'it'} (or `{feature}` itself)",
                    }
                )
        if plan.missing or not (plan.compute or plan.filters):
            return
        subset = [rows[i] for i in index] if len(index) != len(rows) else rows
        local = utc = None
        if plan.needs_time:
            local, utc, bad = [], [], []
            for i, row in zip(index, subset, strict=True):
                try:
                    a, b = self.clock.times(row)
                except RowProblem as exc:
                    errors.append(
                        {
                            "loc": loc(i, exc.field),
                            "field": exc.field,
                            "type": exc.kind,
                            "msg": str(exc),
                            "input": row.get(exc.field),
                        }
                    )
                    bad.append(i)
                    continue
                local.append(a)
                utc.append(b)
            if bad:
                return
        columns: dict[str, np.ndarray] = {}
        calendar: dict[str, np.ndarray] = {}

        def scope(step: _Step) -> dict[str, Any]:
            values = {}
            for name, kind, column in step.reads:
                if kind == "column":
                    value = columns.get(column)
                    if value is None:
                        value = columns[column] = self._column(subset, column)
                elif kind == "calendar":
                    value = calendar.get(column)
                    if value is None:
                        value = calendar[column] = calendar_part(local, column)
                else:
                    value = np.array(utc, dtype="datetime64[us]")
                values[name] = value
            return values

        computed: dict[str, np.ndarray] = {}
        n = len(subset)
        for step in plan.compute:
            try:
                value = step.expression.evaluate_arrays(scope(step))
            except (TypeError, ValueError, ArithmeticError, ExpressionLimit) as exc:
                errors.extend(
                    {
                        "loc": loc(i, step.name),
                        "field": step.name,
                        "type": "derive_failed",
                        "msg": f"derive.{step.name}: {step.expression.source!r} failed on the row: {exc}",
                    }
                    for i in index
                )
                return
            if value.__class__ is not np.ndarray or not value.ndim:  # a constant, or a list
                value = np.full(n, value) if np.ndim(value) == 0 else np.asarray(value)
            if value.dtype.kind == "b":
                value = value.astype(np.int64)
            columns[step.name] = computed[step.name] = value
        for step in plan.filters:
            keep = step.expression.evaluate_arrays(scope(step))
            if keep.__class__ is not np.ndarray or keep.dtype.kind != "b":
                keep = np.asarray(keep, dtype=bool)
            if np.count_nonzero(keep) == keep.size:
                continue
            for j in range(n) if keep.ndim == 0 else np.flatnonzero(~keep).tolist():
                errors.append(
                    {
                        "loc": loc(index[j]),
                        "field": None,
                        "type": "filtered",
                        "rule": step.expression.source,
                        "msg": f"the spec's rule `filter: {step.expression.source}` drops this row: the "
                        "model was never trained on such rows",
                    }
                )
        names = plan.features
        if not names:  # only columns the filters read: nothing to check or to add to the rows
            return
        raw = [
            dict(zip(names, values, strict=True))  # NaN (a missing value) is null, as JSON carries it
            for values in zip(*[_plain(computed[name].tolist()) for name in names], strict=True)
        ]
        try:
            checked = self.validator.validate_python(raw)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_context=False):
                j, name = err["loc"][0], err["loc"][-1]
                rule = dict(self.schema.derive).get(name)
                errors.append(
                    {
                        "loc": loc(index[j], name),
                        "field": name,
                        "type": err["type"],
                        "msg": f"`{name}` computed from the row by `{name}: {rule}` is invalid: {err['msg']}",
                        "computed": raw[j].get(name),
                    }
                )
            return
        for name in plan.compare:
            for j, row in enumerate(subset):
                got, want = row.get(name), checked[j][name]
                if not _same(got, want):
                    errors.append(
                        {
                            "loc": loc(index[j], name),
                            "field": name,
                            "type": "derived_mismatch",
                            "msg": f"`{name}` is {got!r} in the request but {want!r} computed from the "
                            f"row by `{name}: {dict(self.schema.derive)[name]}`",
                            "input": got,
                            "computed": want,
                        }
                    )
        for row, good in zip(subset, checked, strict=True):
            row.update(good)


def _plain(values: list[Any]) -> list[Any]:
    """Computed values as JSON would carry them: NaN (a missing value) is null."""
    return [None if isinstance(v, float) and v != v else v for v in values]  # noqa: PLR0124


def _same(sent: Any, computed: Any) -> bool:
    if sent is None or computed is None:
        return sent is None and computed is None
    if isinstance(sent, float) or isinstance(computed, float):
        return math.isclose(sent, computed, rel_tol=1e-9, abs_tol=0.0)
    return sent == computed
