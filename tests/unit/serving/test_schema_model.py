"""The serving schema from the spec, the encoding of rows, and the choice of inference path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mlcycle.errors import SpecError
from mlcycle.serving.model import ONNX_FILE, ServedModel, sample_rows
from mlcycle.serving.schema import ServingSchema
from mlcycle.spec import load_spec
from tests.datasets import BIKESHARE_SPEC, write_spec_variant


def test_schema_from_bikeshare_spec_carries_types_ranges_and_values(bike_model):
    spec, folder, _ = bike_model
    model = ServedModel(folder)
    by_name = {f.name: f for f in model.schema.features}
    assert list(by_name) == spec.feature_names
    assert by_name["season"].dtype == "long" and by_name["season"].values == (1, 2, 3, 4)
    assert by_name["mnth"].dtype == "string" and "Sept" in by_name["mnth"].values
    assert (by_name["temp"].dtype, by_name["temp"].min, by_name["temp"].max, by_name["temp"].nullable) == (
        "double",
        0.0,
        1.0,
        True,
    )
    assert by_name["hr"].dtype == "long" and by_name["hr"].max == 23.0
    assert model.schema.task == "regression" and model.schema.target == "bikers"
    # The round trip through the MLmodel file is lossless.
    assert ServingSchema.from_dict(model.schema.to_dict()) == model.schema


def test_fast_path_matches_the_pipeline_on_held_out_rows(bike_model):
    _, folder, x_eval = bike_model
    model = ServedModel(folder)
    assert model.path == "onnx", model.path_reason
    rows = x_eval.to_dict("records")
    fast = np.asarray(model.predict(rows).predictions)
    exact = model.pipeline.predict(x_eval)
    assert np.max(np.abs(fast - exact)) <= 1e-6


def test_classification_fast_path_gives_labels_and_probabilities(clf_model):
    _, folder, x_eval = clf_model
    model = ServedModel(folder)
    assert model.path == "onnx", model.path_reason
    result = model.predict(x_eval.to_dict("records"))
    assert result.predictions == model.pipeline.predict(x_eval).tolist()
    assert np.max(np.abs(np.asarray(result.probabilities) - model.pipeline.predict_proba(x_eval))) <= 1e-6


def test_encoding_gives_one_column_per_input_in_the_graphs_dtype(bike_model):
    _, folder, x_eval = bike_model
    model = ServedModel(folder)
    feeds = model.encode(x_eval.head(3).to_dict("records"))
    assert feeds["season"].dtype == np.int64 and feeds["season"].shape == (3, 1)
    assert feeds["mnth"].dtype == object and feeds["temp"].dtype == np.float64
    nulls = model.encode([{**x_eval.iloc[0].to_dict(), "temp": None}])
    assert np.isnan(nulls["temp"][0, 0])


def test_a_fast_path_outside_the_tolerance_is_not_used(bike_model, clf_model, tmp_path):
    _, folder, _ = bike_model
    _, clf_folder, _ = clf_model
    broken = tmp_path / "model"
    shutil.copytree(folder, broken)
    shutil.copy(clf_folder / ONNX_FILE, broken / ONNX_FILE)  # another model's graph: wrong inputs
    model = ServedModel(broken)
    assert model.path == "pipeline" and "lacks inputs" in model.path_reason
    import onnxruntime as ort

    graph_inputs = {i.name for i in ort.InferenceSession(str(broken / ONNX_FILE)).get_inputs()}
    missing = [n for n in model.names if n not in graph_inputs]
    assert len(missing) > 1 and model.path_reason == f"{ONNX_FILE} lacks inputs for {', '.join(missing)}"

    forced = ServedModel(folder, force_path="pipeline")
    assert forced.path == "pipeline"


def test_sample_rows_cover_allowed_values_ranges_and_nulls(bike_model):
    _, folder, _ = bike_model
    schema = ServedModel(folder).schema
    rows = sample_rows(schema, 64)
    assert {r["season"] for r in rows} == {1, 2, 3, 4}
    assert any(r["temp"] is None for r in rows)
    assert all(r["hr"] is None or 0 <= r["hr"] <= 23 for r in rows)


def test_spec_serving_section_is_validated(tmp_path):
    spec = load_spec(
        write_spec_variant(
            BIKESHARE_SPEC, tmp_path / "ok.yaml", serving={"tolerance": 1e-4, "unknown_categories": "accept"}
        )
    )
    assert spec.serving.tolerance == 1e-4 and spec.serving.unknown_categories == "accept"
    assert load_spec(BIKESHARE_SPEC).serving.tolerance == 1e-6
    with pytest.raises(SpecError, match="serving.unknown_categories"):
        load_spec(
            write_spec_variant(BIKESHARE_SPEC, tmp_path / "bad.yaml", serving={"unknown_categories": "maybe"})
        )


def _with_tolerance(folder: Path, target: Path, tolerance: float, onnx_bytes: bytes | None = None) -> Path:
    import yaml

    from mlcycle.serving.schema import METADATA_KEY

    shutil.copytree(folder, target)
    mlmodel = yaml.safe_load((target / "MLmodel").read_text())
    mlmodel["metadata"][METADATA_KEY]["tolerance"] = tolerance
    (target / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    if onnx_bytes is not None:
        (target / ONNX_FILE).write_bytes(onnx_bytes)
    return target


def test_the_serving_tolerance_is_an_inclusive_limit(bike_model, tmp_path):
    """A graph whose answers are off by a known amount (its baseline shifted by 1e-4) is served
    when the difference is exactly the tolerance, and not one float below it."""
    import onnx
    from onnx import numpy_helper

    _, folder, _ = bike_model
    graph = onnx.load(str(folder / ONNX_FILE))
    baseline = next(i for i in graph.graph.initializer if i.name.endswith("_baseline"))
    baseline.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(baseline) + 1e-4, baseline.name))
    shifted = graph.SerializeToString()
    measured = ServedModel(_with_tolerance(folder, tmp_path / "wide", 1.0, shifted))
    assert measured.path == "onnx" and measured.parity == pytest.approx(1e-4, rel=1e-6)
    at = ServedModel(_with_tolerance(folder, tmp_path / "at", measured.parity, shifted))
    assert at.path == "onnx", at.path_reason
    below = ServedModel(
        _with_tolerance(folder, tmp_path / "below", float(np.nextafter(measured.parity, 0)), shifted)
    )
    assert below.path == "pipeline" and "differs from the Pipeline" in below.path_reason


def test_a_loaded_model_says_what_it_is_and_which_path_it_took(bike_model, clf_model, tmp_path, caplog):
    """What `/ready`, `/metrics` and the start-up log show of a model: its name, version, signature,
    class labels as plain values, the path and the reason for it, and how long loading took."""
    import logging

    import yaml

    _, folder, _ = bike_model
    with caplog.at_level(logging.INFO, logger="mlcycle.serving.model"):
        model = ServedModel(folder)
    assert model.info.name == model.schema.pipeline == "bikeshare" and model.info.version == "unregistered"
    assert (
        model.signature == yaml.safe_load((folder / "MLmodel").read_text())["signature"] and model.signature
    )
    assert model.classes is None and model.example and set(model.example[0]) == set(model.names)
    assert model.parity is not None and model.path_reason.startswith("ONNX matches the Pipeline on ")
    assert f"<= tolerance {model.schema.tolerance:g})" in model.path_reason
    assert 0 < model.load_seconds < 600
    (line,) = [r.getMessage() for r in caplog.records if "loaded from" in r.getMessage()]
    assert line.startswith(f"model bikeshare version unregistered loaded from {folder} in ")
    assert line.endswith(f" s; inference path: onnx ({model.path_reason})")

    forced = ServedModel(folder, force_path="pipeline")
    assert (forced.path, forced.session, forced.parity) == ("pipeline", None, None)
    assert forced.path_reason == "forced by MLCYCLE_SERVING_PATH=pipeline"
    plain = tmp_path / "no-onnx"
    shutil.copytree(folder, plain)
    (plain / ONNX_FILE).unlink()
    bare = ServedModel(plain)
    assert (bare.path, bare.session, bare.parity, bare.path_reason) == (
        "pipeline",
        None,
        None,
        "no ONNX model in the folder",
    )

    _, clf_folder, _ = clf_model
    clf = ServedModel(clf_folder)
    assert clf.classes == [0, 1] and all(type(c) is int for c in clf.classes)
    assert clf._outputs == [o.name for o in clf.session.get_outputs()] and len(clf._outputs) == 2


def test_a_graph_that_onnxruntime_cannot_load_or_run_leaves_the_pipeline(bike_model, tmp_path):
    _, folder, _ = bike_model
    garbage = tmp_path / "garbage"
    shutil.copytree(folder, garbage)
    (garbage / ONNX_FILE).write_bytes(b"not a graph")
    model = ServedModel(garbage)
    assert model.path == "pipeline" and model.session is None
    assert model.path_reason.startswith(f"onnxruntime cannot load {ONNX_FILE}: ")
