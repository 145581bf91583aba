"""The served model's pieces, exactly: the parity sample, the Pipeline's frame, the parity measure,
the warm-up, the input example and the thread limits.

Hand-made schemas and stand-ins for the model (attributes only), no fitted model: milliseconds each,
so the mutation run of ``serving/model.py`` (``make mutation``) checks each of these decisions.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from mlcycle.serving.model import (
    ModelLoadError,
    Prediction,
    ServedModel,
    _input_example,
    _load_pipeline,
    _read_mlmodel,
    limit_threads,
    missing_onnx_reason,
    read_info,
    read_schema,
    sample_rows,
)
from mlcycle.serving.schema import FeatureSchema, ServingSchema


def _schema(*features: FeatureSchema) -> ServingSchema:
    return ServingSchema("p", "regression", "y", tuple(features))


# --- the parity sample


def test_sample_rows_are_deterministic_per_seed():
    schema = _schema(
        FeatureSchema("x", "numeric", "double", 0.0, 1.0), FeatureSchema("c", "string", "string")
    )
    assert sample_rows(schema, 40) == sample_rows(schema, 40, seed=0)
    assert sample_rows(schema, 40, seed=1) != sample_rows(schema, 40)
    assert len(sample_rows(schema, 7)) == 7 and sample_rows(schema, 0) == []


def test_sample_rows_hit_both_ends_of_a_range_and_stay_inside_it():
    schema = _schema(
        FeatureSchema("x", "numeric", "double", -2.0, 3.0), FeatureSchema("n", "integer", "long", 1.0, 9.0)
    )
    rows = sample_rows(schema, 64)
    assert rows[1] == {"x": -2.0, "n": 1} and rows[2] == {"x": 3.0, "n": 9}  # i % 31 == 1, 2
    assert rows[32] == {"x": -2.0, "n": 1} and rows[33] == {"x": 3.0, "n": 9}
    assert all(-2.0 <= r["x"] <= 3.0 and 1 <= r["n"] <= 9 for r in rows)
    assert all(type(r["x"]) is float and type(r["n"]) is int for r in rows)
    inner = [r["x"] for i, r in enumerate(rows) if i % 31 not in (1, 2)]
    assert -2.0 < min(inner) and max(inner) < 3.0 and len(set(inner)) == len(inner)  # drawn, not fixed


def test_sample_rows_without_finite_bounds_spread_over_a_thousand_each_way():
    schema = _schema(
        FeatureSchema("free", "numeric", "double"),
        FeatureSchema("inf", "numeric", "double", -math.inf, math.inf),
    )
    rows = sample_rows(schema, 64)
    assert (rows[1]["free"], rows[2]["free"]) == (-1000.0, 1000.0)
    assert (rows[1]["inf"], rows[2]["inf"]) == (-1000.0, 1000.0)
    assert all(-1000.0 <= r["free"] <= 1000.0 for r in rows)
    one_sided = sample_rows(_schema(FeatureSchema("x", "numeric", "double", min=5.0)), 3)
    assert (one_sided[1]["x"], one_sided[2]["x"]) == (5.0, 1000.0)
    other_side = sample_rows(_schema(FeatureSchema("x", "numeric", "double", max=-5.0)), 3)
    assert (other_side[1]["x"], other_side[2]["x"]) == (-1000.0, -5.0)


def test_sample_rows_round_long_values():
    rows = sample_rows(_schema(FeatureSchema("n", "integer", "long", 0.0, 1.0)), 200)
    assert {r["n"] for r in rows} == {0, 1}


def test_sample_rows_cycle_through_every_allowed_value_on_odd_rows():
    values = ("a", "b", "c")
    rows = sample_rows(_schema(FeatureSchema("c", "categorical", "string", values=values)), 60)
    assert [rows[i]["c"] for i in (1, 3, 5, 7)] == ["b", "a", "c", "b"]  # values[i % 3]
    assert {r["c"] for r in rows[::2]} <= set(values) and {r["c"] for r in rows} == set(values)
    even = [r["c"] for r in rows[::2]]
    assert even != [values[i % 3] for i in range(0, 60, 2)]  # drawn at random, not cycled


def test_sample_rows_put_nulls_only_where_a_feature_may_be_null():
    schema = _schema(
        FeatureSchema("x", "numeric", "double", 0.0, 1.0, nullable=True),
        FeatureSchema("c", "categorical", "long", values=(1, 2), nullable=True),
        FeatureSchema("y", "numeric", "double", 0.0, 1.0),
    )
    rows = sample_rows(schema, 60)
    assert [i for i, r in enumerate(rows) if r["x"] is None] == [5, 22, 39, 56]
    assert [i for i, r in enumerate(rows) if r["c"] is None] == [5, 22, 39, 56]
    assert all(r["y"] is not None for r in rows)


def test_sample_rows_make_up_strings_without_known_values():
    rows = sample_rows(_schema(FeatureSchema("s", "string", "string")), 80)
    assert {r["s"] for r in rows} == {f"value-{k}" for k in range(5)}


# --- the Pipeline's frame


def _frame(*features: FeatureSchema, rows):
    schema = _schema(*features)
    stand_in = SimpleNamespace(schema=schema, names=schema.feature_names)
    return ServedModel.frame(stand_in, rows)


def test_the_frame_gives_each_column_the_dtype_the_model_was_trained_with():
    frame = _frame(
        FeatureSchema("x", "numeric", "double"),
        FeatureSchema("n", "integer", "long"),
        FeatureSchema("s", "string", "string"),
        rows=[{"s": "a", "n": 1, "x": None}, {"s": "b", "n": 2, "x": 2}],
    )
    assert list(frame.columns) == ["x", "n", "s"]
    assert frame["x"].dtype == np.float64 and math.isnan(frame["x"][0]) and frame["x"][1] == 2.0
    assert frame["n"].dtype == np.int64 and frame["n"].tolist() == [1, 2]
    assert frame["s"].dtype == object and frame["s"].tolist() == ["a", "b"]


def test_a_number_column_of_whole_values_is_still_float():
    frame = _frame(FeatureSchema("x", "numeric", "double"), rows=[{"x": 1}, {"x": 2}])
    assert frame["x"].dtype == np.float64


def test_a_long_column_with_a_null_stays_objects():
    frame = _frame(FeatureSchema("n", "integer", "long", nullable=True), rows=[{"n": 1}, {"n": None}])
    assert frame["n"].dtype == object and frame["n"].tolist() == [1, None]


# --- the parity measure


def _parity(fast: Prediction, exact: Prediction, classification: bool) -> float:
    stand_in = SimpleNamespace(
        classification=classification, _predict_onnx=lambda rows: fast, _predict_pipeline=lambda rows: exact
    )
    return ServedModel._max_difference(stand_in, [{}])


def test_parity_is_the_largest_absolute_difference():
    assert _parity(Prediction([1.0, 2.0, 3.0], None), Prediction([1.5, 1.0, 3.25], None), False) == 1.0
    assert _parity(Prediction([-1.0], None), Prediction([1.0], None), False) == 2.0
    assert _parity(Prediction([], None), Prediction([], None), False) == 0.0


def test_classification_parity_compares_probabilities_once_the_labels_agree():
    same = _parity(
        Prediction([0, 1], [[0.9, 0.1], [0.4, 0.6]]), Prediction([0, 1], [[0.8, 0.2], [0.4, 0.6]]), True
    )
    assert same == pytest.approx(0.1)
    assert (
        _parity(Prediction([0, 1], [[0.9, 0.1]] * 2), Prediction([0, 0], [[0.9, 0.1]] * 2), True) == math.inf
    )


# --- the exact path's answers


def _pipeline_answers(classification: bool, predicted, proba=None) -> Prediction:
    pipeline = SimpleNamespace(predict=lambda df: predicted, predict_proba=lambda df: np.asarray(proba))
    schema = _schema(FeatureSchema("x", "numeric", "double"))
    stand_in = SimpleNamespace(
        classification=classification, pipeline=pipeline, schema=schema, names=schema.feature_names
    )
    stand_in.frame = lambda rows: ServedModel.frame(stand_in, rows)
    return ServedModel._predict_pipeline(stand_in, [{"x": 1.0}, {"x": 2.0}])


def test_the_pipeline_s_labels_and_probabilities_come_back_as_plain_values():
    got = _pipeline_answers(True, np.array([0, 1]), [[0.75, 0.25], [0.5, 0.5]])
    assert got.predictions == [0, 1] and all(type(v) is int for v in got.predictions)
    assert got.probabilities == [[0.75, 0.25], [0.5, 0.5]]
    text = _pipeline_answers(True, np.array(["no", "yes"], dtype=object), [[1.0, 0.0], [0.0, 1.0]])
    assert text.predictions == ["no", "yes"]


def test_the_pipeline_s_regression_answers_are_one_float_per_row():
    got = _pipeline_answers(False, np.array([[3], [4]]))  # a regressor may answer (n, 1), in integers
    assert got.predictions == [3.0, 4.0] and all(type(v) is float for v in got.predictions)
    assert got.probabilities is None


# --- reading the model folder


def test_a_folder_without_mlmodel_or_schema_says_what_is_missing(tmp_path):
    with pytest.raises(ModelLoadError, match=r"is not an MLflow model folder \(no MLmodel file\)"):
        _read_mlmodel(tmp_path)
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    with pytest.raises(ModelLoadError, match="carries no serving schema .*`mlcycle_serving`.*retrain it"):
        read_schema(tmp_path)


def test_only_skops_models_are_loaded(tmp_path):
    mlmodel = {"flavors": {"sklearn": {"pickled_model": "custom.pkl", "serialization_format": "cloudpickle"}}}
    with pytest.raises(ModelLoadError, match=r"custom\.pkl: serialization format 'cloudpickle'; only skops"):
        _load_pipeline(tmp_path, mlmodel)
    with pytest.raises(FileNotFoundError, match=r"model\.skops"):  # the flavor's default file name
        _load_pipeline(tmp_path, {"flavors": {"sklearn": {}}})
    with pytest.raises(FileNotFoundError, match=r"model\.skops"):
        _load_pipeline(tmp_path, {})


def test_the_registry_s_view_of_the_model_comes_from_serving_json(tmp_path):
    bare = read_info(tmp_path, {"run_id": "r0"}, "bikeshare")
    assert bare == read_info(tmp_path, {"run_id": "r0"}, "bikeshare")
    assert (bare.name, bare.version, bare.run_id, bare.model_uri, bare.fingerprint, bare.tags) == (
        "bikeshare",
        "unregistered",
        "r0",
        None,
        None,
        {},
    )
    assert (bare.window_start, bare.window_end, bare.code_version) == (None, None, None)
    info = {
        "name": "bikes",
        "version": 7,
        "run_id": "r7",
        "model_uri": "models:/bikes/7",
        "fingerprint": "f" * 16,
        "window_start": "2011-06-01",
        "window_end": "2011-06-29",
        "code_version": "abc123",
        "tags": {"k": "v"},
    }
    (tmp_path / "serving.json").write_text(json.dumps(info))
    got = read_info(tmp_path, {"run_id": "r0"}, "bikeshare")
    assert got.__dict__ == {**info, "version": "7"}
    (tmp_path / "serving.json").write_text(
        json.dumps({"name": "", "version": "", "run_id": None, "tags": None})
    )
    empty = read_info(tmp_path, {"run_id": "r0"}, "bikeshare")
    assert (empty.name, empty.version, empty.run_id, empty.tags) == ("bikeshare", "unregistered", "r0", {})


def test_a_folder_without_a_graph_says_why_training_made_none(tmp_path):
    bare = read_info(tmp_path, {}, "p")
    assert missing_onnx_reason(tmp_path, bare) == "no ONNX model in the folder"
    registered = read_info(tmp_path, {}, "p").__class__(
        **{**bare.__dict__, "tags": {"mlcycle.onnx": "not logged: skl2onnx could not convert X: E: e"}}
    )
    assert missing_onnx_reason(tmp_path, registered) == (
        "no ONNX model in the folder: skl2onnx could not convert X: E: e"
    )
    logged = bare.__class__(**{**bare.__dict__, "tags": {"mlcycle.onnx": "logged: max abs difference 0"}})
    assert missing_onnx_reason(tmp_path, logged) == "no ONNX model in the folder"
    (tmp_path / "onnx_export.json").write_text(json.dumps({"logged": False, "reason": "from the report"}))
    assert missing_onnx_reason(tmp_path, registered) == "no ONNX model in the folder: from the report"
    (tmp_path / "onnx_export.json").write_text("[not an object")
    assert missing_onnx_reason(tmp_path, bare) == "no ONNX model in the folder"
    assert missing_onnx_reason(tmp_path, registered).endswith("skl2onnx could not convert X: E: e")


# --- which path answers, and the fast path's answers


def test_predict_answers_from_the_graph_when_it_has_one_else_from_the_pipeline():
    rows = [{"x": 1.0}]
    stand_in = SimpleNamespace(
        session=object(), _predict_onnx=lambda r: ("onnx", r), _predict_pipeline=lambda r: ("pipeline", r)
    )
    assert ServedModel.predict(stand_in, rows) == ("onnx", rows)
    stand_in.session = None
    assert ServedModel.predict(stand_in, rows) == ("pipeline", rows)


def _onnx_answers(classification: bool, outputs, classes=None) -> Prediction:
    schema = _schema(FeatureSchema("x", "numeric", "double"))
    stand_in = SimpleNamespace(
        classification=classification,
        classes=classes,
        session=SimpleNamespace(run=lambda names, feeds: outputs),
        schema=schema,
        _encoders=[("x", np.float64)],
    )
    stand_in.encode = lambda rows: ServedModel.encode(stand_in, rows)
    return ServedModel._predict_onnx(stand_in, [{"x": 1.0}, {"x": 2.0}])


def test_graph_labels_take_the_type_of_the_model_s_classes():
    proba = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32)
    text = _onnx_answers(True, [np.array([1, 0]), proba], classes=["0", "1"])
    assert text.predictions == ["1", "0"] and text.probabilities == [[0.25, 0.75], [1.0, 0.0]]
    numbers = _onnx_answers(True, [np.array([1, 0]), proba], classes=[0, 1])
    assert numbers.predictions == [1, 0] and all(type(v) is int for v in numbers.predictions)
    regression = _onnx_answers(False, [np.array([[1.5], [2.5]], dtype=np.float32)])
    assert regression.predictions == [1.5, 2.5] and regression.probabilities is None


def test_the_trusted_types_saved_with_the_model_are_the_only_ones_trusted(bike_model):
    """The MLmodel file names the types its skops file may hold; nothing else is trusted, even when
    the file holds more (what `get_untrusted_types` alone would accept)."""
    import skops.io
    import yaml

    _, folder, _ = bike_model
    conf = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["sklearn"]
    assert conf["skops_trusted_types"]  # the bundled model needs some
    _load_pipeline(folder, {"flavors": {"sklearn": conf}})
    assert len(conf["skops_trusted_types"]) > 1
    narrowed = {**conf, "skops_trusted_types": conf["skops_trusted_types"][:1]}
    with pytest.raises(skops.io.exceptions.UntrustedTypesFoundException):
        _load_pipeline(folder, {"flavors": {"sklearn": narrowed}})


# --- the warm-up


def test_the_warm_up_predicts_the_first_example_row_the_given_number_of_times():
    calls = []
    stand_in = SimpleNamespace(example=[{"x": 1.0}, {"x": 2.0}], predict=calls.append)
    ServedModel.warm_up(stand_in)
    assert calls == [[{"x": 1.0}]] * 20
    calls.clear()
    ServedModel.warm_up(stand_in, rounds=3)
    assert len(calls) == 3


def test_without_an_example_the_warm_up_predicts_one_sample_row():
    calls = []
    schema = _schema(FeatureSchema("x", "numeric", "double", 0.0, 1.0))
    stand_in = SimpleNamespace(example=[], schema=schema, predict=calls.append)
    ServedModel.warm_up(stand_in, rounds=2)
    assert calls == [sample_rows(schema, 1)] * 2 and len(calls[0]) == 1


# --- the input example MLflow saved


def test_the_input_example_is_read_in_each_of_mlflows_layouts(tmp_path):
    assert _input_example(tmp_path, ["a"]) == []
    path = tmp_path / "input_example.json"
    path.write_text(json.dumps({"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}))
    assert _input_example(tmp_path, ["a", "b"]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    path.write_text(json.dumps({"dataframe_split": {"columns": ["a"], "data": [[3]]}}))
    assert _input_example(tmp_path, ["a"]) == [{"a": 3}]
    path.write_text(json.dumps([{"a": 4}, 5, {"a": 6}]))
    assert _input_example(tmp_path, ["a"]) == [{"a": 4}, {"a": 6}]
    path.write_text(json.dumps({"other": 1}))
    assert _input_example(tmp_path, ["a"]) == []


# --- threads


def test_limit_threads_sets_one_thread_for_each_library(monkeypatch):
    import os

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    limit_threads()
    assert [os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")] == [
        "1"
    ] * 3


def test_limit_threads_sets_one_thread_unless_the_user_chose(monkeypatch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "4")
    limit_threads()
    import os

    assert (
        os.environ["OMP_NUM_THREADS"],
        os.environ["OPENBLAS_NUM_THREADS"],
        os.environ["MKL_NUM_THREADS"],
    ) == (
        "1",
        "1",
        "4",
    )
