"""The test data helpers themselves (tests/datasets.py): deterministic, and each defect stays on its day."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import yaml

from tests.datasets import (
    BAD_KINDS,
    BIKESHARE_CSV,
    make_bad_bikeshare,
    make_classification_dataset,
    write_spec_variant,
)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(path):
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def test_the_classification_data_set_is_deterministic(tmp_path):
    a = make_classification_dataset(tmp_path / "a", days=5)
    b = make_classification_dataset(tmp_path / "b", days=5)
    assert _sha(a.with_suffix(".csv")) == _sha(b.with_suffix(".csv"))
    c = make_classification_dataset(tmp_path / "c", days=5, seed=8)
    assert _sha(a.with_suffix(".csv")) != _sha(c.with_suffix(".csv"))
    rows = _rows(a.with_suffix(".csv"))
    assert rows[0] == ["ts", "hour", "x1", "x2", "visits", "color", "label"] and len(rows) == 1 + 5 * 24
    assert {r[6] for r in rows[1:]} == {"0", "1"}


@pytest.mark.parametrize("kind", [k for k in BAD_KINDS if k not in ("missing_column", "extra_column", "unreadable")])
def test_a_day_local_defect_leaves_the_other_days_alone(tmp_path, kind):
    spec_path = make_bad_bikeshare(tmp_path, "2011-03-15", kind)  # day of the year 74
    raw = yaml.safe_load(spec_path.read_text())
    bad = _rows(Path(raw["source"]["path"]))
    good = _rows(BIKESHARE_CSV)
    assert bad[0] == good[0]
    day = good[0].index("day")
    others = [r for r in good[1:] if r[day] != "74"]
    assert [r for r in bad[1:] if r[day] != "74"] == others
    assert [r for r in bad[1:] if r[day] == "74"] != [r for r in good[1:] if r[day] == "74"]


def test_column_defects_and_garbage(tmp_path):
    missing = yaml.safe_load(make_bad_bikeshare(tmp_path, "2011-03-15", "missing_column").read_text())
    assert "windspeed" not in _rows(Path(missing["source"]["path"]))[0]
    extra = yaml.safe_load(make_bad_bikeshare(tmp_path, "2011-03-15", "extra_column").read_text())
    assert _rows(Path(extra["source"]["path"]))[0][-1] == "promo_code"
    garbage = yaml.safe_load(make_bad_bikeshare(tmp_path, "2011-03-15", "unreadable").read_text())
    with pytest.raises(UnicodeDecodeError):
        Path(garbage["source"]["path"]).read_text()
    with pytest.raises(ValueError, match="unknown defect"):
        make_bad_bikeshare(tmp_path, "2011-03-15", "typo")
    with pytest.raises(ValueError, match="2011 only"):
        make_bad_bikeshare(tmp_path, "2012-03-15", "nulls")


def test_spec_variants_replace_lists_and_merge_mappings(tmp_path):
    spec = make_classification_dataset(tmp_path, days=5)
    variant = write_spec_variant(spec, tmp_path / "v.yaml", name="other", columns={"color": {"values": ["red"]}})
    raw = yaml.safe_load(variant.read_text())
    assert raw["name"] == "other" and raw["columns"]["color"] == {"type": "categorical", "values": ["red"]}
    assert raw["columns"]["x1"] == {"type": "numeric", "min": 0, "max": 1}
    assert raw["validation"]["suite"] == str(tmp_path / "synthclass.suite.json")
