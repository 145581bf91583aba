"""What `validate` records of a restated day, exactly: rows before and after, and by key the rows
added, removed and changed (two nulls are equal; a column that appears or goes changes every row).
Without a usable key (none, missing on one side, or not unique) only the row counts are known."""

from __future__ import annotations

import datetime as dt
import math
from types import SimpleNamespace

import pandas as pd

from mlcycle.steps.validate import _restatement

DAY = dt.date(2011, 3, 1)


def _change(before: pd.DataFrame, new: pd.DataFrame, key=("ts",), tmp_path=None) -> dict:
    path = tmp_path / "before.parquet"
    before.to_parquet(path)
    spec = SimpleNamespace(integrity=SimpleNamespace(key=list(key)))
    return _restatement(spec, SimpleNamespace(path=path, day=DAY, sha256="a" * 64), new)


BEFORE = pd.DataFrame({"ts": [1, 2, 3, 4], "x": [1.0, math.nan, 3.0, math.nan], "c": ["a", "b", "c", "d"]})


def test_rows_added_removed_and_changed_by_key(tmp_path):
    new = pd.DataFrame({"ts": [2, 3, 4, 5], "x": [2.0, 3.5, math.nan, 5.0], "c": ["b", "c", "d", "e"]})
    assert _change(BEFORE, new, tmp_path=tmp_path) == {
        "partition": "2011-03-01",
        "rows_before": 4,
        "rows_after": 4,
        "previous_sha256": "a" * 64,
        "added": 1,  # ts 5
        "removed": 1,  # ts 1
        "changed": 2,  # ts 2 (null to 2.0) and ts 3 (3.0 to 3.5); ts 4 stays null
    }


def test_an_identical_day_changes_nothing(tmp_path):
    got = _change(BEFORE, BEFORE.copy(), tmp_path=tmp_path)
    assert (got["added"], got["removed"], got["changed"]) == (0, 0, 0)


def test_a_column_that_appears_or_goes_changes_every_common_row(tmp_path):
    wider = BEFORE.assign(extra=1)
    assert _change(BEFORE, wider, tmp_path=tmp_path)["changed"] == 4
    assert _change(BEFORE, BEFORE.drop(columns="c"), tmp_path=tmp_path)["changed"] == 4


def test_without_a_usable_key_only_the_rows_are_counted(tmp_path):
    rows_only = {"partition": "2011-03-01", "rows_before": 4, "rows_after": 3, "previous_sha256": "a" * 64}
    new = BEFORE.head(3)
    assert _change(BEFORE, new, key=(), tmp_path=tmp_path) == rows_only
    assert _change(BEFORE, new, key=("nope",), tmp_path=tmp_path) == rows_only
    assert (
        _change(BEFORE, new.drop(columns="c"), key=("ts", "c"), tmp_path=tmp_path) == rows_only
    )  # not in new
    assert _change(BEFORE.drop(columns="c"), new, key=("ts", "c"), tmp_path=tmp_path) == {
        **rows_only,
        "rows_before": 4,
    }  # not in the validated version
    doubled = pd.concat([BEFORE, BEFORE.head(1)])
    assert _change(doubled, new, tmp_path=tmp_path) == {**rows_only, "rows_before": 5}  # not unique before
    assert _change(BEFORE, pd.concat([new, new.head(1)]), tmp_path=tmp_path) == {**rows_only, "rows_after": 4}
    assert _change(BEFORE, new, key=("ts", "c"), tmp_path=tmp_path)["changed"] == 0  # a compound key works
