"""The suite derived from a spec, compared whole: every expectation, argument and message is exact."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from mlcycle.expectations import TYPE_LISTS, describe, load_suite, suite_from_spec, write_suite
from mlcycle.spec import parse_spec
from tests.unit.test_spec_rules import MINI

INTS, STRS = TYPE_LISTS["integer"], TYPE_LISTS["string"]


def _spec(tmp_path: Path, suite: str | None = None):
    raw = copy.deepcopy(MINI)
    raw["columns"] = {
        "ts": {"type": "string", "role": "ignore"},
        "temp": {"type": "numeric", "min": -10, "max": 40, "max_null_share": 0.05},
        "hour": {"type": "integer", "min": 0},
        "rain": {"type": "numeric", "max": 300},
        "code": {"type": "categorical", "values": [1, 2, 3]},
        "kind": {"type": "categorical", "values": ["a", 2]},
        "y": {"type": "numeric"},
    }
    raw["validation"] = {"min_rows_per_partition": 20, "max_rows_per_partition": 24}
    if suite:
        raw["validation"]["suite"] = suite
    return parse_spec(raw, tmp_path / "pipelines" / "mini.yaml")


def e(kind: str, **kwargs) -> dict:
    return {"type": kind, "kwargs": kwargs, "meta": {}}


def test_the_whole_suite_of_a_spec(tmp_path):
    assert suite_from_spec(_spec(tmp_path)) == {
        "name": "mini.partition",
        "meta": {
            "generated_from": "pipelines/mini.yaml",
            "regenerate_with": "mlcycle suite --pipeline mini --write",
        },
        "expectations": [
            e(
                "expect_table_columns_to_match_set",
                column_set=["ts", "temp", "hour", "rain", "code", "kind", "y", "event_time"],
                exact_match=True,
            ),
            e("expect_table_row_count_to_be_between", min_value=20, max_value=24),
            e("expect_column_values_to_be_unique", column="event_time"),
            e("expect_column_values_to_not_be_null", column="event_time"),
            e("expect_column_values_to_be_in_type_list", column="ts", type_list=["object", "str", "string"]),
            e("expect_column_values_to_not_be_null", column="ts"),
            e(
                "expect_column_values_to_be_in_type_list",
                column="temp",
                type_list=["float64", "float32", "int64", "int32", "Float64", "Int64"],
            ),
            e("expect_column_values_to_not_be_null", column="temp", mostly=0.95),
            e("expect_column_values_to_be_between", column="temp", min_value=-10, max_value=40),
            e(
                "expect_column_values_to_be_in_type_list",
                column="hour",
                type_list=["int64", "int32", "int16", "Int64", "Int32"],
            ),
            e("expect_column_values_to_not_be_null", column="hour"),
            e("expect_column_values_to_be_between", column="hour", min_value=0, max_value=None),
            e("expect_column_values_to_be_in_type_list", column="rain", type_list=TYPE_LISTS["numeric"]),
            e("expect_column_values_to_not_be_null", column="rain"),
            e("expect_column_values_to_be_between", column="rain", min_value=None, max_value=300),
            e("expect_column_values_to_be_in_type_list", column="code", type_list=INTS),
            e("expect_column_values_to_not_be_null", column="code"),
            e("expect_column_values_to_be_in_set", column="code", value_set=[1, 2, 3]),
            e("expect_column_values_to_be_in_type_list", column="kind", type_list=STRS),
            e("expect_column_values_to_not_be_null", column="kind"),
            e("expect_column_values_to_be_in_set", column="kind", value_set=["a", 2]),
            e("expect_column_values_to_be_in_type_list", column="y", type_list=TYPE_LISTS["numeric"]),
            e("expect_column_values_to_not_be_null", column="y"),
        ],
    }


def test_write_suite_writes_indented_json_where_the_spec_says(tmp_path):
    spec = _spec(tmp_path, suite=str(tmp_path / "new" / "folder" / "mini.json"))
    path = write_suite(spec)
    assert path == tmp_path / "new" / "folder" / "mini.json"
    assert path.read_text() == json.dumps(suite_from_spec(spec), indent=2) + "\n"
    other = write_suite(spec, tmp_path / "elsewhere" / "s.json")
    assert other == tmp_path / "elsewhere" / "s.json" and json.loads(other.read_text()) == suite_from_spec(
        spec
    )


def test_load_suite_reads_the_saved_file_or_derives_and_says_so(tmp_path, caplog):
    saved = tmp_path / "saved.json"
    spec = _spec(tmp_path, suite=str(saved))
    saved.write_text(json.dumps({**suite_from_spec(spec), "meta": {"reviewed": "by hand"}}))
    assert load_suite(spec)["meta"] == {"reviewed": "by hand"}  # the committed file, not a fresh derivation
    missing = _spec(tmp_path, suite=str(tmp_path / "missing.json"))
    with caplog.at_level(logging.WARNING, logger="mlcycle.expectations"):
        assert load_suite(missing) == suite_from_spec(missing)
    assert caplog.messages == [
        f"no suite at {tmp_path / 'missing.json'}: using the suite derived from the spec; "
        "keep it in the repository with `mlcycle suite --pipeline mini --write`"
    ]


def test_describe_in_every_shape():
    assert (
        describe(
            e("expect_column_values_to_be_between", column="temp", min_value=0, max_value=1, batch_id="b1")
        )
        == "expect_column_values_to_be_between on `temp` (min_value=0, max_value=1)"
    )
    assert (
        describe(e("expect_column_values_to_not_be_null", column="x"))
        == "expect_column_values_to_not_be_null on `x`"
    )
    assert describe(e("expect_table_row_count_to_be_between", min_value=1, max_value=None)) == (
        "expect_table_row_count_to_be_between (min_value=1, max_value=None)"
    )
    assert describe({"type": "expect_something"}) == "expect_something"


def test_mostly_is_rounded_to_six_places(tmp_path):
    raw = copy.deepcopy(MINI)
    raw["columns"]["x"]["max_null_share"] = 0.1234567
    spec = parse_spec(raw, tmp_path / "pipelines" / "mini.yaml")
    not_null = next(
        x
        for x in suite_from_spec(spec)["expectations"]
        if x["type"] == "expect_column_values_to_not_be_null" and x["kwargs"]["column"] == "x"
    )
    assert not_null["kwargs"] == {"column": "x", "mostly": 0.876543}
