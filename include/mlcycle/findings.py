"""What is wrong with a day's rows, in plain words: the rows, columns and values, with their day.

The Great Expectations suite stays the judge of record (``mlcycle.steps.validate``); this reading
explains its verdict to the person on call. Each day is read on its own rows and each problem
becomes one sentence that names the day, the column, how many rows, and a bounded sample of the
bad values and of the rows that hold them (by ``event_time``)::

    3 rows of 2011-06-30 have text in numeric column `temp`: 'abc' (rows at event_time 2011-06-30 03:00, ...)

A problem of the whole window (a column missing, renamed or added on every day) is said once, with
the closest known name (``difflib``), not once per day.
"""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlcycle.expectations import TYPE_LISTS
from mlcycle.spec import EVENT_TIME, Column, PipelineSpec

#: Bad values and rows shown per problem; the counts are always whole.
MAX_SAMPLE = 5
MAX_ROWS_SHOWN = 3
#: Problems listed in a step's message; the rest are in each day's failures.json and the report.
MAX_LINES = 20
#: Days named in one line before "and N more".
MAX_DAYS_NAMED = 3


@dataclass(frozen=True)
class Finding:
    """One problem of one day. ``column_level`` problems (a missing column) are grouped over the window."""

    day: dt.date
    kind: str
    column: str | None
    text: str
    rows: int = 0
    column_level: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "kind": self.kind,
            "column": self.column,
            "rows": self.rows,
            "problem": self.text,
        }


def _value(v: Any) -> str:
    text = repr(v.item() if hasattr(v, "item") else v)
    return text if len(text) <= 40 else text[:37] + "..."


def _sample(values: pd.Series) -> str:
    distinct = list(dict.fromkeys(values.tolist()))
    shown = ", ".join(_value(v) for v in distinct[:MAX_SAMPLE])
    return shown + (
        f" and {len(distinct) - MAX_SAMPLE} more distinct value(s)" if len(distinct) > MAX_SAMPLE else ""
    )


def _rows_at(frame: pd.DataFrame, mask: pd.Series) -> str:
    if EVENT_TIME not in frame:
        positions = [int(i) for i in mask.to_numpy().nonzero()[0][:MAX_ROWS_SHOWN]]
        return f" (rows {', '.join(map(str, positions))} of the day)"
    times = pd.to_datetime(frame.loc[mask.to_numpy(), EVENT_TIME], errors="coerce").head(MAX_ROWS_SHOWN)
    shown = ", ".join(t.strftime("%Y-%m-%d %H:%M") if pd.notna(t) else "?" for t in times)
    more = ", ..." if int(mask.sum()) > MAX_ROWS_SHOWN else ""
    return f" (rows at event_time {shown}{more} UTC)"


def _rows(n: int, day: dt.date) -> str:
    return f"{n} row{'s' if n != 1 else ''} of {day} {'have' if n != 1 else 'has'}"


def _whole_number_values(col: Column) -> bool:
    return col.type == "integer" or (
        col.type == "categorical"
        and bool(col.values)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in col.values)
    )


def _column(spec: PipelineSpec, day: dt.date, frame: pd.DataFrame, col: Column) -> list[Finding]:
    name, values = col.name, frame[col.name]
    what = "the target" if col.role == "target" or name == spec.target else "column"
    out: list[Finding] = []

    def add(kind: str, mask: pd.Series, sentence: str) -> None:
        n = int(mask.sum())
        if n:
            out.append(
                Finding(day, kind, name, sentence.format(rows=_rows(n, day)) + _rows_at(frame, mask), n)
            )

    nulls = values.isna()
    numbers: pd.Series | None = None
    numeric = col.type in ("numeric", "integer") or _whole_number_values(col)
    if numeric:
        if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
            numbers = values
        elif values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            numbers = pd.to_numeric(values, errors="coerce")
            text = numbers.isna() & ~nulls
            kind = "numeric" if col.type == "numeric" else "whole-number"
            add("text", text, f"{{rows}} text in {kind} column `{name}`: {_sample(values[text])}")
    if _whole_number_values(col) and numbers is not None and numbers.dtype.kind == "f":
        fraction = numbers.notna() & (numbers % 1 != 0)
        add(
            "fraction",
            fraction,
            f"{{rows}} a fraction in whole-number column `{name}`: {_sample(numbers[fraction])}",
        )
    share = float(nulls.mean()) if len(values) else 0.0
    because = ""
    if _whole_number_values(col) and values.dtype.kind == "f" and nulls.any():
        because = f"; with them `{name}` reads as {values.dtype}, not a whole-number type"
    if col.max_null_share == 0:
        add("null", nulls, f"{{rows}} no value (null) in {what} `{name}`, which allows none{because}")
    elif share > col.max_null_share:
        n = int(nulls.sum())
        out.append(
            Finding(
                day,
                "null_share",
                name,
                f"{n} of {len(values)} rows of {day} ({share:.0%}) have no value (null) in {what} "
                f"`{name}`; the spec allows {col.max_null_share:.0%} (max_null_share){because}"
                + _rows_at(frame, nulls),
                n,
            )
        )
    if numbers is not None and col.min is not None:
        low = numbers < col.min
        add("below", low, f"{{rows}} `{name}` below its min {col.min:g}: {_sample(numbers[low])}")
    if numbers is not None and col.max is not None:
        high = numbers > col.max
        add("above", high, f"{{rows}} `{name}` above its max {col.max:g}: {_sample(numbers[high])}")
    if col.values:
        compared = numbers if numbers is not None and _whole_number_values(col) else values
        outside = compared.notna() & ~compared.isin(list(col.values))
        if _whole_number_values(col) and numbers is not None and values.dtype == object:
            outside &= numbers.notna()  # text is said above
        allowed = ", ".join(map(str, col.values))
        allowed = allowed if len(allowed) <= 120 else allowed[:117] + "..."
        add(
            "not_in_set",
            outside,
            f"{{rows}} a value of `{name}` outside its values ({allowed}): {_sample(values[outside])}",
        )
    if not out and col.type in TYPE_LISTS and str(values.dtype) not in TYPE_LISTS[col.type] and len(values):
        out.append(
            Finding(
                day,
                "type",
                name,
                f"column `{name}` of {day} is stored as {values.dtype}, not as one of "
                f"{', '.join(TYPE_LISTS[col.type])} (its type `{col.type}`)",
                len(values),
                column_level=True,
            )
        )
    return out


def closest(name: str, candidates: list[str], cutoff: float = 0.5) -> str | None:
    """The candidate most like ``name``: by difflib's ratio, a name that holds the other counting as close."""

    def score(other: str) -> float:
        a, b = name.lower(), other.lower()
        ratio = difflib.SequenceMatcher(None, a, b).ratio()
        return max(ratio, 0.8) if (a in b or b in a) else ratio

    ranked = sorted(candidates, key=score, reverse=True)
    return ranked[0] if ranked and score(ranked[0]) >= cutoff else None


def _columns(spec: PipelineSpec, day: dt.date, frame: pd.DataFrame) -> list[Finding]:
    expected = [*spec.column_names, EVENT_TIME]
    missing = [c for c in expected if c not in frame.columns]
    extra = [str(c) for c in frame.columns if c not in expected]
    out: list[Finding] = []
    claimed: set[str] = set()
    for name in missing:
        renamed = closest(name, [e for e in extra if e not in claimed])
        if renamed:
            claimed.add(renamed)
            hint = (
                f"; the rows have `{renamed}` instead, which the spec does not know: renamed? Rename it back "
                f"in the source, or rename `{name}` in the spec's columns and regenerate the suite"
            )
        else:
            near = closest(name, list(map(str, frame.columns)), cutoff=0.6)
            hint = (
                f" (the closest column there is `{near}`)" if near else ""
            ) + "; add it back to the source, or remove it from the spec's columns and regenerate the suite"
        out.append(
            Finding(day, "missing_column", name, f"column `{name}` is missing{hint}", column_level=True)
        )
    for name in extra:
        if name in claimed:
            continue
        near = closest(name, expected, cutoff=0.6)
        hint = f" (the closest known name is `{near}`)" if near else ""
        out.append(
            Finding(
                day,
                "extra_column",
                name,
                f"the rows have a column `{name}` that the spec does not list{hint}; add it under "
                "`columns` (`role: ignore` keeps it out of the model) or drop it from the source",
                column_level=True,
            )
        )
    return out


def read_day(spec: PipelineSpec, day: dt.date, frame: pd.DataFrame) -> list[Finding]:
    """Every problem of one day's rows that this reading knows, in plain words."""
    found = _columns(spec, day, frame)
    n = len(frame)
    if n == 0:
        found.append(Finding(day, "rows", None, f"{day} has no rows: the source holds nothing for that day"))
    elif n < spec.min_rows_per_partition:
        found.append(
            Finding(
                day,
                "rows",
                None,
                f"{day} has {n} row(s); the spec wants at least "
                f"{spec.min_rows_per_partition} a day (validation.min_rows_per_partition)",
            )
        )
    elif spec.max_rows_per_partition is not None and n > spec.max_rows_per_partition:
        found.append(
            Finding(
                day,
                "rows",
                None,
                f"{day} has {n} rows; the spec allows at most "
                f"{spec.max_rows_per_partition} a day (validation.max_rows_per_partition)",
            )
        )
    for col in spec.columns:
        if col.name in frame.columns:
            found.extend(_column(spec, day, frame, col))
    key = [k for k in spec.key if k in frame.columns]
    if key and len(key) == len(spec.key) and n:
        twice = frame.duplicated(key, keep=False)
        if twice.any():
            sample = frame.loc[twice, key].head(MAX_SAMPLE)
            shown = ", ".join(
                _value(tuple(r) if len(key) > 1 else r[0]) for r in sample.itertuples(index=False)
            )
            found.append(
                Finding(
                    day,
                    "duplicate_key",
                    ", ".join(key),
                    f"{_rows(int(twice.sum()), day)} a key ({', '.join(key)}) another row of the day also "
                    f"has: {shown}",
                    int(twice.sum()),
                )
            )
    return found


def days_named(days: list[dt.date], window: list[dt.date]) -> str:
    days = sorted(days)
    if len(days) == len(window) and len(days) > 1:
        return f"every day of the window ({days[0]} to {days[-1]}, {len(days)} days)"
    named = ", ".join(map(str, days[:MAX_DAYS_NAMED]))
    return named + (f" and {len(days) - MAX_DAYS_NAMED} more day(s)" if len(days) > MAX_DAYS_NAMED else "")


def summarise(found: dict[dt.date, list[Finding]], window: list[dt.date]) -> list[str]:
    """The lines a person reads: a window-wide problem once (with its days), then each day's own, bounded."""
    grouped: dict[tuple[str, str | None, str], list[dt.date]] = {}
    day_lines: list[str] = []
    for day in sorted(found):
        for f in found[day]:
            if f.column_level:
                grouped.setdefault((f.kind, f.column, f.text.replace(str(day), "{day}")), []).append(day)
            else:
                day_lines.append(f.text)
    lines = []
    for (_, _, text), days in grouped.items():
        sentence = text.replace(" of {day}", "").replace("{day}", "")
        lines.append(f"{days_named(days, window)}: {sentence}")
    lines.extend(day_lines)
    if len(lines) > MAX_LINES:
        rest = len(lines) - MAX_LINES
        lines = [
            *lines[:MAX_LINES],
            f"... and {rest} more problem(s): each day's failures.json and the report list them all",
        ]
    return lines
