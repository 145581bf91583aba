"""The serving schema's pieces, exactly: what ``schema_from_spec`` keeps of a spec, the MLmodel round
trip, and what each generated request field accepts, refuses and documents.

Plain values and a stand-in spec (attributes only), no model: these run in milliseconds, so the
mutation run of ``serving/schema.py`` (``make mutation``) checks every decision of the module.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from mlcycle.serving.schema import (
    SCHEMA_VERSION,
    FeatureSchema,
    ServingSchema,
    _dtype_of,
    _not_bool,
    _plain,
    _whole,
    prediction_type,
    response_models,
    row_model,
    schema_from_spec,
)


def _col(name: str, type_: str, values=None, min_=None, max_=None, null_share: float = 0.0):
    return SimpleNamespace(
        name=name, type=type_, values=values, min=min_, max=max_, max_null_share=null_share
    )


def _spec(columns, serving=None, task="regression", name="bike-share_v2", target="riders"):
    return SimpleNamespace(name=name, task=task, target=target, feature_columns=columns, serving=serving)


# --- the spec and the fitted model's dtypes, to the schema


@pytest.mark.parametrize("kind", ["long", "integer", "int", "i", "u", "b", "boolean"])
def test_integer_kinds_are_long(kind):
    assert _dtype_of(kind) == "long"


@pytest.mark.parametrize("kind", ["double", "float", "f"])
def test_float_kinds_are_double(kind):
    assert _dtype_of(kind) == "double"


@pytest.mark.parametrize("kind", ["string", "object", "O", "category", "", "Long"])
def test_every_other_kind_is_string(kind):
    assert _dtype_of(kind) == "string"


def test_schema_from_spec_keeps_types_ranges_values_and_nulls():
    columns = [
        _col("hr", "integer", values=["0", "1", "23"], min_=0, max_=23),
        _col("temp", "numeric", min_=-1, max_=1.5, null_share=0.1),
        _col("season", "categorical", values=[1, 2], null_share=0.2),  # a category is never nullable
        _col("zone", "string", values=[3, "b"]),
        _col("note", "string", null_share=0.3),  # a string neither
        _col("count", "integer", null_share=0.5),
    ]
    dtypes = {"hr": "i", "temp": "i", "season": "long", "zone": "object", "count": "f"}  # note: missing
    got = schema_from_spec(_spec(columns), dtypes, classes=None)
    assert got == ServingSchema(
        pipeline="bike-share_v2",
        task="regression",
        target="riders",
        features=(
            FeatureSchema("hr", "integer", "long", 0.0, 23.0, (0, 1, 23), False),
            FeatureSchema("temp", "numeric", "double", -1.0, 1.5, None, True),  # numeric: double always
            FeatureSchema("season", "categorical", "long", None, None, (1, 2), False),
            FeatureSchema("zone", "string", "string", None, None, ("3", "b"), False),
            FeatureSchema("note", "string", "string", None, None, None, False),
            FeatureSchema("count", "integer", "double", None, None, None, True),
        ),
        classes=None,
        unknown_categories="reject",
        tolerance=1e-6,
        max_rows=10_000,
    )
    hr = got.features[0]
    assert type(hr.min) is float and type(hr.max) is float and all(type(v) is int for v in hr.values)
    assert got.feature_names == ["hr", "temp", "season", "zone", "note", "count"]
    assert [f.is_categorical for f in got.features] == [False, False, True, True, True, False]


def test_schema_from_spec_takes_the_serving_section_and_plain_class_labels():
    serving = SimpleNamespace(unknown_categories="accept", tolerance="0.001", max_rows="25")
    got = schema_from_spec(
        _spec([_col("x", "numeric")], serving=serving, task="classification"),
        {"x": "f"},
        classes=[np.int64(0), np.int64(1)],
    )
    assert (got.unknown_categories, got.tolerance, got.max_rows) == ("accept", 0.001, 25)
    assert got.classes == (0, 1) and all(type(c) is int for c in got.classes)
    assert got.task == "classification" and got.version == SCHEMA_VERSION == 2


def test_a_spec_without_a_serving_section_gets_the_defaults():
    spec = SimpleNamespace(name="p", task="regression", target="y", feature_columns=[_col("x", "numeric")])
    got = schema_from_spec(spec, {"x": "f"})
    assert (got.unknown_categories, got.tolerance, got.max_rows, got.classes) == (
        "reject",
        1e-6,
        10_000,
        None,
    )


def test_plain_turns_numpy_scalars_into_python_values():
    assert type(_plain(np.float32(1.5))) is float and _plain(np.str_("a")) == "a"
    assert _plain("a") == "a" and _plain(3) == 3


# --- the MLmodel round trip


def _schema(**changes: Any) -> ServingSchema:
    base = ServingSchema(
        pipeline="p",
        task="classification",
        target="late",
        features=(
            FeatureSchema("carrier", "categorical", "string", values=("AA", "UA")),
            FeatureSchema("delay", "numeric", "double", min=-5.0, max=90.0, nullable=True),
        ),
        classes=(0, 1),
        unknown_categories="accept",
        tolerance=1e-4,
        max_rows=50,
        extra={"k": "v"},
    )
    return ServingSchema(**{**base.__dict__, **changes})


def test_to_dict_is_plain_json_and_reads_back_equal():
    schema = _schema()
    out = schema.to_dict()
    assert out == json.loads(json.dumps(out))  # lists, not tuples: what YAML and JSON write
    assert out["features"][0] == {
        "name": "carrier",
        "type": "categorical",
        "dtype": "string",
        "min": None,
        "max": None,
        "values": ["AA", "UA"],
        "nullable": False,
    }
    assert out["classes"] == [0, 1] and out["extra"] == {"k": "v"} and out["max_rows"] == 50
    assert ServingSchema.from_dict(out) == schema
    assert ServingSchema.from_dict(json.loads(json.dumps(out))) == schema
    regression = _schema(task="regression", classes=None)
    assert (
        regression.to_dict()["classes"] is None
        and ServingSchema.from_dict(regression.to_dict()) == regression
    )


def test_from_dict_fills_what_an_older_schema_lacks():
    raw = {
        "pipeline": "p",
        "task": "regression",
        "target": "y",
        "features": [{"name": "x", "type": "numeric", "dtype": "double", "values": []}],
    }
    got = ServingSchema.from_dict(raw)
    assert got == ServingSchema("p", "regression", "y", (FeatureSchema("x", "numeric", "double"),))
    assert (got.unknown_categories, got.tolerance, got.max_rows, got.version, got.extra) == (
        "reject",
        1e-6,
        10_000,
        SCHEMA_VERSION,
        {},
    )
    typed = ServingSchema.from_dict(
        {**raw, "tolerance": "0.5", "max_rows": "7", "version": "2", "extra": None}
    )
    assert (typed.tolerance, typed.max_rows, typed.version, typed.extra) == (0.5, 7, 2, {})
    assert ServingSchema.from_dict({**raw, "classes": ["a", "b"]}).classes == ("a", "b")
    listed = ServingSchema.from_dict({**raw, "features": [{**raw["features"][0], "values": [1, 2]}]})
    assert listed.features[0].values == (1, 2)


# --- the request fields generated from the schema


def _model(*features: FeatureSchema, **changes: Any):
    schema = ServingSchema("bike_share", "regression", "riders", tuple(features), **changes)
    return schema, row_model(schema)


def _accepts(model, name: str, value: Any) -> Any:
    return model.model_validate({name: value}).f_0


def _refuses(model, name: str, value: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate({name: value})
    return caught.value.errors()[0]["type"]


def _field_schema(model, name: str) -> dict:
    doc = model.model_json_schema()
    assert doc["additionalProperties"] is False and doc["required"] == [name]
    return doc["properties"][name]


def test_a_category_of_numbers_takes_its_values_only_and_no_booleans():
    _, model = _model(FeatureSchema("workingday", "categorical", "long", values=(0, 1)))
    assert _accepts(model, "workingday", 1) == 1 and _accepts(model, "workingday", 0) == 0
    assert _refuses(model, "workingday", 2) == "literal_error"
    assert _refuses(model, "workingday", True) == "int_type"
    assert _refuses(model, "workingday", False) == "int_type"
    field = _field_schema(model, "workingday")
    assert field["enum"] == [0, 1] and field["description"] == "categorical feature; one of 0, 1"


def test_a_category_of_booleans_takes_booleans():
    _, model = _model(FeatureSchema("holiday", "categorical", "string", values=(False, True)))
    assert _accepts(model, "holiday", True) is True
    assert _refuses(model, "holiday", "yes") == "literal_error"


def test_an_accepted_unknown_category_is_typed_and_documented_as_known_values():
    _, model = _model(
        FeatureSchema("zone", "string", "string", values=("a", "b")), unknown_categories="accept"
    )
    assert _accepts(model, "zone", "c") == "c"
    assert _refuses(model, "zone", 5) == "string_type"
    assert (
        _field_schema(model, "zone")["description"]
        == "string feature; known values a, b (others are accepted)"
    )
    _, numbers = _model(
        FeatureSchema("season", "categorical", "long", values=(1, 2)), unknown_categories="accept"
    )
    assert _accepts(numbers, "season", 7) == 7 and _accepts(numbers, "season", 2.0) == 2
    assert _refuses(numbers, "season", "2") == "int_type"
    field = _field_schema(numbers, "season")
    assert field["type"] == "integer" and field["description"] == (
        "categorical feature; known values 1, 2 (others are accepted)"
    )


def test_an_integer_takes_whole_numbers_within_its_inclusive_range():
    _, model = _model(FeatureSchema("hr", "integer", "long", min=0.0, max=23.0))
    assert _accepts(model, "hr", 0) == 0 and _accepts(model, "hr", 23) == 23
    assert type(_accepts(model, "hr", 5.0)) is int
    assert _refuses(model, "hr", -1) == "greater_than_equal"
    assert _refuses(model, "hr", 24) == "less_than_equal"
    assert _refuses(model, "hr", 23.0 + 1) == "less_than_equal"
    for refused in (5.5, "5", True, None):
        assert _refuses(model, "hr", refused) == "int_type", refused
    field = _field_schema(model, "hr")
    assert (field["type"], field["minimum"], field["maximum"]) == ("integer", 0, 23)
    assert type(field["minimum"]) is int and field["description"] == "integer feature; range [0, 23]"


def test_an_integer_typed_column_trained_as_double_is_still_an_integer():
    _, model = _model(FeatureSchema("count", "integer", "double"))
    assert _accepts(model, "count", 3) == 3 and _refuses(model, "count", 3.5) == "int_type"
    assert _field_schema(model, "count")["description"] == "integer feature"


def test_a_long_with_known_values_documents_them():
    _, model = _model(FeatureSchema("code", "numeric", "long", values=(3, 4)))
    assert _accepts(model, "code", 9) == 9
    assert (
        _field_schema(model, "code")["description"]
        == "numeric feature; known values 3, 4 (others are accepted)"
    )


def test_a_number_is_finite_strict_and_within_its_range():
    _, model = _model(FeatureSchema("temp", "numeric", "double", min=-1.5, max=1.5))
    assert (
        _accepts(model, "temp", -1.5) == -1.5
        and _accepts(model, "temp", 1.5) == 1.5
        and _accepts(model, "temp", 1) == 1
    )
    assert _refuses(model, "temp", -1.5000001) == "greater_than_equal"
    assert _refuses(model, "temp", 1.5000001) == "less_than_equal"
    assert _refuses(model, "temp", "0.5") == "float_type"
    assert _refuses(model, "temp", None) == "float_type"
    assert _refuses(model, "temp", math.nan) == "finite_number"
    field = _field_schema(model, "temp")
    assert (field["minimum"], field["maximum"]) == (-1.5, 1.5)
    assert field["description"] == "numeric feature; range [-1.5, 1.5]"


def test_one_sided_and_infinite_bounds():
    _, low = _model(FeatureSchema("x", "numeric", "double", min=0.0))
    assert _accepts(low, "x", 1e300) == 1e300 and _refuses(low, "x", -0.1) == "greater_than_equal"
    assert _field_schema(low, "x")["description"] == "numeric feature; range [0.0, inf]"
    _, high = _model(FeatureSchema("x", "numeric", "double", max=0.0))
    assert _accepts(high, "x", -1e300) == -1e300 and _refuses(high, "x", 0.1) == "less_than_equal"
    assert _field_schema(high, "x")["description"] == "numeric feature; range [-inf, 0.0]"
    _, infinite = _model(FeatureSchema("x", "numeric", "double", min=-math.inf, max=math.inf))
    field = _field_schema(infinite, "x")
    assert "minimum" not in field and "maximum" not in field and field["description"] == "numeric feature"


def test_a_nullable_number_takes_null_and_says_so():
    _, model = _model(FeatureSchema("temp", "numeric", "double", min=0.0, max=1.0, nullable=True))
    assert _accepts(model, "temp", None) is None and _accepts(model, "temp", 0.5) == 0.5
    assert _refuses(model, "temp", 2.0) == "less_than_equal"
    assert _field_schema(model, "temp")["description"] == "numeric feature; range [0.0, 1.0]; may be null"


def test_a_string_is_strict_and_a_category_ignores_bounds():
    _, model = _model(FeatureSchema("name", "string", "string", min=0.0, max=1.0))
    assert _accepts(model, "name", "zz") == "zz" and _refuses(model, "name", 1) == "string_type"
    assert _refuses(model, "name", b"zz") == "string_type"  # strict: no bytes taken for text
    assert _field_schema(model, "name")["description"] == "string feature"
    _, cat = _model(FeatureSchema("season", "categorical", "long", min=0.0, max=1.0, values=(5,)))
    assert _accepts(cat, "season", 5) == 5  # out of [0, 1]: the bounds of a category are not checked


def test_a_row_has_every_feature_under_its_own_name_and_nothing_else():
    schema, model = _model(
        FeatureSchema("my col", "numeric", "double"), FeatureSchema("n-2", "integer", "long")
    )
    row = model.model_validate({"my col": 1.0, "n-2": 2})
    assert (row.f_0, row.f_1) == (1.0, 2)
    with pytest.raises(ValidationError, match="n-2"):
        model.model_validate({"my col": 1.0})
    with pytest.raises(ValidationError, match="extra"):
        model.model_validate({"my col": 1.0, "n-2": 2, "other": 3})
    with pytest.raises(ValidationError):
        model.model_validate({"f_0": 1.0, "f_1": 2})  # the real names only
    doc = model.model_json_schema()
    assert model.__name__ == doc["title"] == "BikeShareRow"
    assert doc["description"] == "One row of `bike_share` features; predicts `riders`."


@pytest.mark.parametrize(
    ("pipeline", "name"),
    [("bike-share_v2", "BikeShareV2"), ("taxi", "Taxi"), ("__", "Model"), ("a__b", "AB")],
)
def test_model_names_are_the_pipeline_in_camel_case(pipeline, name):
    schema = ServingSchema(pipeline, "regression", "y", (FeatureSchema("x", "numeric", "double"),))
    predict, invocations = response_models(schema)
    assert row_model(schema).__name__ == f"{name}Row"
    assert (predict.__name__, invocations.__name__) == (
        f"{name}PredictResponse",
        f"{name}InvocationsResponse",
    )


# --- the answers


@pytest.mark.parametrize(
    ("task", "classes", "expected"),
    [
        ("classification", (0, 1), int),
        ("classification", ("a", "b"), str),
        ("classification", (0, "b"), Any),
        ("classification", (0.5, 1.5), Any),
        ("classification", None, float),
        ("classification", (), float),
        ("regression", (0, 1), float),
    ],
)
def test_the_prediction_type_follows_the_class_labels(task, classes, expected):
    schema = ServingSchema("p", task, "y", (), classes=classes)
    assert prediction_type(schema) is expected


def test_response_models_document_predictions_and_probabilities():
    regression = ServingSchema("p", "regression", "riders", ())
    predict, invocations = response_models(regression)
    doc = predict.model_json_schema()
    assert list(doc["properties"]) == ["request_id", "model_name", "model_version", "predictions"]
    assert doc["required"] == ["request_id", "model_name", "model_version", "predictions"]
    assert doc["properties"]["predictions"]["items"]["type"] == "number"
    assert doc["properties"]["predictions"]["description"] == "one `riders` per input row, in order"
    assert doc["properties"]["request_id"]["description"] == (
        "echoed in the X-Request-ID header and the prediction log"
    )
    inv = invocations.model_json_schema()
    assert list(inv["properties"]) == ["predictions"]
    assert inv["properties"]["predictions"]["description"] == "MLflow scoring protocol response"

    classification = ServingSchema("p", "classification", "late", (), classes=(0, 1))
    predict, invocations = response_models(classification)
    doc = predict.model_json_schema()
    assert list(doc["properties"])[-1] == "probabilities" and "probabilities" in doc["required"]
    assert doc["properties"]["predictions"]["items"]["type"] == "integer"
    probabilities = doc["properties"]["probabilities"]
    assert probabilities["items"]["additionalProperties"]["type"] == "number"
    assert probabilities["description"] == "per row, the probability of each class label"
    assert invocations.model_json_schema()["properties"]["predictions"]["items"]["type"] == "integer"


# --- the two validators


def test_whole_takes_whole_floats_up_to_two_to_the_53():
    assert _whole(5.0) == 5 and type(_whole(5.0)) is int and type(_whole(-0.0)) is int
    assert type(_whole(float(2**53))) is int and type(_whole(float(-(2**53)))) is int
    assert type(_whole(float(2**53 + 2))) is float and type(_whole(float(-(2**53) - 2))) is float
    for unchanged in (5.5, "5", True, 7, None, math.inf):
        assert _whole(unchanged) is unchanged


def test_not_bool_refuses_booleans_only():
    from pydantic_core import PydanticCustomError

    assert _not_bool(1) == 1 and _not_bool("a") == "a" and _not_bool(None) is None
    with pytest.raises(PydanticCustomError) as caught:
        _not_bool(False)
    assert caught.value.type == "int_type"
    assert caught.value.message() == "Input should be one of the numbers allowed, not a boolean"
