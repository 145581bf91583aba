"""A name that is both a source column and a calendar part is a spec error that says how to disambiguate.

Before, the source column silently won over the calendar part (``month`` of the source against the
month of the row's local time). Now a bare ambiguous name is refused at load time, and the two
explicit spellings, ``local_<part>`` and ``source_<part>``, each read what they say.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlcycle.derive import apply, parse_derivations
from mlcycle.errors import SpecError
from mlcycle.spec import load_spec
from tests.datasets import make_classification_dataset, write_spec_variant


def test_a_bare_name_shared_by_a_source_column_and_a_calendar_part_is_refused(tmp_path):
    base = make_classification_dataset(tmp_path / "data", days=2)  # its source has a column `hour`
    bad = write_spec_variant(
        base,
        tmp_path / "bad.yaml",
        derive={"peak": "hour >= 16"},
        filter=["hour < 23"],
        columns={"peak": {"type": "integer", "min": 0, "max": 1}},
    )
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    text = str(err.value)
    assert (
        "derive.peak: 'hour >= 16' reads `hour`, which is both a source column (columns.hour) and a "
        "calendar part of the row's local time; write `local_hour` for the calendar part or "
        "`source_hour` for the source column"
    ) in text
    assert "filter[0]: 'hour < 23' reads `hour`" in text


@pytest.mark.parametrize("spelling", ["local_hour", "source_hour"])
def test_either_explicit_spelling_loads(tmp_path, spelling):
    base = make_classification_dataset(tmp_path / "data", days=2)
    spec = load_spec(
        write_spec_variant(
            base,
            tmp_path / "ok.yaml",
            derive={"peak": f"{spelling} >= 16"},
            columns={"peak": {"type": "integer", "min": 0, "max": 1}},
        )
    )
    assert [name for name, _ in spec.derivations.derive] == ["peak"]


def test_a_derived_column_named_like_a_calendar_part_is_not_ambiguous(tmp_path):
    base = make_classification_dataset(tmp_path / "data", days=2)
    spec = load_spec(
        write_spec_variant(
            base,
            tmp_path / "ok.yaml",
            derive={"month": "month"},
            columns={"month": {"type": "integer", "min": 1, "max": 12}},
        )
    )
    assert [name for name, _ in spec.derivations.derive] == ["month"]


def test_the_spellings_read_the_calendar_part_and_the_source_column():
    problems: list[str] = []
    rules = parse_derivations(
        {"derive": {"local": "local_hour", "own": "source_hour", "dow": "day_of_week"}}, Path("."), problems
    )
    assert problems == []
    times = pd.Series(pd.to_datetime(["2024-01-01 03:00", "2024-01-01 20:00"], utc=True))
    frame = pd.DataFrame({"event_time": times, "hour": [11, 12]})  # the source's own `hour` column
    out, _ = apply(frame, rules, "Europe/Paris", "event_time")  # UTC+1 in January
    assert list(out["local"]) == [4, 21] and list(out["own"]) == [11, 12] and list(out["dow"]) == [0, 0]
