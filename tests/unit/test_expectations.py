"""The suite derived from the spec, and how expectations are named in messages and reports."""

from __future__ import annotations

import json

import pytest

from mlcycle.expectations import TYPE_LISTS, describe, load_suite, suite_from_spec, write_suite
from mlcycle.spec import EVENT_TIME, load_spec
from tests.datasets import BIKESHARE_SPEC, make_classification_dataset


@pytest.fixture(scope="module")
def bikeshare():
    return load_spec(BIKESHARE_SPEC)


def _for(suite, kind, column=None):
    return [e["kwargs"] for e in suite["expectations"]
            if e["type"] == kind and (column is None or e["kwargs"].get("column") == column)]


def test_table_level_expectations(bikeshare):
    suite = suite_from_spec(bikeshare)
    assert suite["name"] == "bikeshare.partition"
    (columns,) = _for(suite, "expect_table_columns_to_match_set")
    assert columns == {"column_set": [*bikeshare.column_names, EVENT_TIME], "exact_match": True}
    assert _for(suite, "expect_table_row_count_to_be_between") == [{"min_value": 6, "max_value": 24}]
    assert _for(suite, "expect_column_values_to_be_unique") == [{"column": EVENT_TIME}]
    assert {"column": EVENT_TIME} in _for(suite, "expect_column_values_to_not_be_null")
    assert suite["meta"]["regenerate_with"] == "mlcycle suite --pipeline bikeshare --write"


def test_column_expectations_follow_the_spec(bikeshare):
    suite = suite_from_spec(bikeshare)
    types = {k["column"]: k["type_list"] for k in _for(suite, "expect_column_values_to_be_in_type_list")}
    assert types["season"] == TYPE_LISTS["integer"]  # categorical with integer values
    assert types["weathersit"] == TYPE_LISTS["string"]  # categorical with string values
    assert types["temp"] == TYPE_LISTS["numeric"] and types["hr"] == TYPE_LISTS["integer"]
    assert set(types) == set(bikeshare.column_names)
    nulls = {k["column"]: k.get("mostly") for k in _for(suite, "expect_column_values_to_not_be_null")}
    assert nulls["hum"] == pytest.approx(0.99) and nulls["bikers"] is None
    assert _for(suite, "expect_column_values_to_be_between", "windspeed") == [
        {"column": "windspeed", "min_value": 0, "max_value": 1}]
    assert _for(suite, "expect_column_values_to_be_between", "bikers") == [
        {"column": "bikers", "min_value": 0, "max_value": None}]
    assert _for(suite, "expect_column_values_to_be_in_set", "weathersit")[0]["value_set"] == [
        "clear", "cloudy/misty", "light rain/snow", "heavy rain/snow"]
    assert _for(suite, "expect_column_values_to_be_between", "mnth") == []  # no bounds, no expectation


def test_describe_names_type_and_column():
    assert describe({"type": "expect_column_values_to_be_in_set",
                     "kwargs": {"column": "weathersit", "value_set": ["clear"], "batch_id": "x"}}) == \
        "expect_column_values_to_be_in_set on `weathersit` (value_set=['clear'])"
    assert describe({"type": "expect_table_row_count_to_be_between", "kwargs": {}}) == \
        "expect_table_row_count_to_be_between"


def test_load_suite_prefers_the_saved_file_and_falls_back_to_the_spec(tmp_path, bikeshare, caplog):
    spec = load_spec(make_classification_dataset(tmp_path, days=5))
    assert not spec.suite_path.exists()
    assert load_suite(spec) == suite_from_spec(spec)
    assert "no suite at" in caplog.text and "--write" in caplog.text

    written = write_suite(spec)
    assert written == spec.suite_path
    edited = json.loads(written.read_text())
    edited["meta"]["reviewed_by"] = "a person"
    written.write_text(json.dumps(edited))
    assert load_suite(spec)["meta"]["reviewed_by"] == "a person"  # the saved suite wins

    other = write_suite(bikeshare, tmp_path / "elsewhere" / "suite.json")
    assert json.loads(other.read_text()) == json.loads(json.dumps(suite_from_spec(bikeshare)))
