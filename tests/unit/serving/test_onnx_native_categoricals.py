"""Gradient boosting with native categorical features on the ONNX fast path, equal to its Pipeline.

The data set has a 150-value categorical (130 values common in training, 10 rare, 10 allowed by the
spec but absent from the training slice), a 40-value integer categorical (4 absent), and a numeric
column with nulls. Each model is checked on rows of every kind scikit-learn treats apart: known, rare and absent
categories, values outside the spec, missing values, and numeric values on and beside every threshold.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from mlcycle.modeling import build_pipeline
from mlcycle.serving.export import _boolean_attribute_fix, serving_schema, to_onnx
from mlcycle.serving.onnx_trees import BRANCH_MEMBER, double_trees
from mlcycle.spec import load_spec
from tests.datasets import _dump, classification_spec

ZONES = [f"z{i:03d}" for i in range(150)]
ABSENT, RARE = ZONES[5::15], ZONES[10::15]  # spread out: the model's codes are not the encoder's
COMMON = [z for z in ZONES if z not in ABSENT + RARE]
STORES = list(range(1, 41))
ABSENT_STORES = [3, 17, 18, 40]
TARGETS = {
    "regression": ("amount", None),
    "binary": ("late", [0, 1]),
    "multiclass": ("grade", ["low", "mid", "high"]),
}


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    zone_effect = dict(zip(ZONES, rng.normal(0.0, 1.0, len(ZONES)), strict=True))
    store_effect = dict(zip(STORES, rng.normal(0.0, 0.7, len(STORES)), strict=True))
    zones = rng.choice(COMMON, n).astype(object)
    rare = [*np.repeat(RARE[:5], 3), *RARE[5:]]  # three rows each, then one row each
    zones[rng.choice(n, len(rare), replace=False)] = rare
    stores = rng.choice([s for s in STORES if s not in ABSENT_STORES], n)
    x1 = np.round(rng.normal(0.0, 1.0, n), 3)
    x1[rng.random(n) < 0.05] = np.nan
    hour = rng.integers(0, 24, n)
    score = (
        np.array([zone_effect[z] for z in zones])
        + np.array([store_effect[s] for s in stores])
        + np.nan_to_num(x1, nan=0.5)
        + 0.3 * np.sin(hour / 24 * 2 * np.pi)
    )
    noisy = score + rng.normal(0.0, 0.5, n)
    start = dt.datetime(2024, 1, 1)
    return pd.DataFrame(
        {
            "ts": [(start + dt.timedelta(hours=int(i))).strftime("%Y-%m-%dT%H:%M:%SZ") for i in range(n)],
            "zone": zones,
            "store": stores,
            "x1": x1,
            "hour": hour,
            "amount": np.round(10 + 3 * noisy, 4),
            "late": (noisy > 0.3).astype(int),
            "grade": np.where(noisy < -0.5, "low", np.where(noisy < 1.0, "mid", "high")),
        }
    )


def _fitted(tmp_path, kind: str):
    frame = _frame(3000, seed=5)
    csv = tmp_path / "orders.csv"
    frame.to_csv(csv, index=False)
    target, classes = TARGETS[kind]
    raw = classification_spec("orders", csv, dt.date(2024, 1, 1), dt.date(2024, 5, 1))
    raw["task"] = "classification" if classes else "regression"
    raw["target"] = target
    raw["columns"] = {
        "ts": {"type": "string", "role": "ignore"},
        "zone": {"type": "categorical", "values": ZONES},
        "store": {"type": "categorical", "values": STORES},
        "x1": {"type": "numeric", "min": -10, "max": 10, "max_null_share": 0.1},
        "hour": {"type": "integer", "min": 0, "max": 23},
        "amount": {"type": "numeric", **({"role": "ignore"} if classes else {})},
        "late": {"type": "categorical", "values": [0, 1], **({} if kind == "binary" else {"role": "ignore"})},
        "grade": {
            "type": "categorical",
            "values": ["low", "mid", "high"],
            **({} if kind == "multiclass" else {"role": "ignore"}),
        },
    }
    raw["model"] = {
        "family": "hist_gradient_boosting",
        "categorical_encoding": "native",
        "registered_name": "orders",
        "search": {"n_iter": 1, "cv_folds": 2, "seed": 3, "space": {"max_iter": {"values": [60]}}},
    }
    raw["evaluation"] = {
        "metric": "accuracy" if classes else "rmse",
        "holdout_days": 3,
        "threshold": 0.5 if classes else 100.0,
    }
    raw["serving"] = {"unknown_categories": "accept"}
    spec = load_spec(_dump(raw, tmp_path / "orders.yaml"))
    x, y = frame[spec.feature_names], frame[spec.target]
    model = build_pipeline(spec).set_params(model__max_iter=60, model__max_leaf_nodes=15)
    return spec, model.fit(x, y), x


def _hgb_thresholds(model, column: str) -> list[float]:
    """Every numeric threshold the trees compare ``column`` with."""
    estimator = model.steps[-1][1]
    pre = estimator._preprocessor
    names = list(model.steps[0][1].get_feature_names_out())
    inner = {}
    for name, _, selected in pre.transformers_:
        picked = np.arange(len(names))[selected]
        for pos, i in zip(
            range(pre.output_indices_[name].start, pre.output_indices_[name].stop), picked, strict=True
        ):
            inner[pos] = names[i]
    found = set()
    for per_iteration in estimator._predictors:
        for predictor in per_iteration:
            for node in predictor.nodes:
                if (
                    not node["is_leaf"]
                    and not node["is_categorical"]
                    and inner[int(node["feature_idx"])] == column
                ):
                    found.add(float(node["num_threshold"]))
    return sorted(found)


def _rows(model, x: pd.DataFrame) -> pd.DataFrame:
    """Rows of every kind: training rows (rare categories included), absent and unknown categories,
    missing values, every hour, and x1 exactly on each of its thresholds and one ulp either side."""
    seen = pd.concat([x.head(600), x[x["zone"].isin(RARE)]])
    absent = x.head(len(ABSENT) * 4).copy()
    absent["zone"] = ABSENT * 4
    absent["store"] = ABSENT_STORES * len(ABSENT)
    unknown = x.head(8).copy()
    unknown["zone"] = ["not-a-zone", "", "Z000", "z000 ", None, "z150", "nan", "None"]
    unknown["store"] = [999, 0, -1, 41, 1000000, 36, 37, 2]
    missing = x.head(20).copy()
    missing["x1"] = np.nan
    edges = []
    for t in _hgb_thresholds(model, "x1"):
        for value in (t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)):
            row = x.iloc[[len(edges) % len(x)]].copy()
            row["x1"] = value
            edges.append(row)
    hours = x.head(24).copy()
    hours["hour"] = range(24)  # an integer feature: every value, on both sides of each threshold
    rows = pd.concat([seen, absent, unknown, missing, hours, *edges], ignore_index=True)
    assert set(RARE) <= set(rows["zone"]) and len(edges) > 20
    return rows


@pytest.mark.parametrize("kind", list(TARGETS))
def test_native_categoricals_have_a_fast_path_equal_to_the_pipeline(tmp_path, kind):
    from onnx import ModelProto, numpy_helper

    spec, model, x = _fitted(tmp_path, kind)
    rows = _rows(model, x)
    export = to_onnx(serving_schema(spec, model, x), model, rows)
    assert export.model is not None, export.reason
    assert export.max_abs_diff < 1e-9, export.reason
    assert export.label_mismatches in (None, 0), export.reason
    graph = ModelProto.FromString(export.model).graph
    (trees,) = [n for n in graph.node if n.op_type == "TreeEnsemble"]
    modes = next(numpy_helper.to_array(a.t) for a in trees.attribute if a.name == "nodes_modes")
    assert (modes == BRANCH_MEMBER).sum() > 10  # the categorical splits are membership tests


def test_a_categorical_input_that_is_not_a_whole_number_is_unknown(tmp_path):
    """scikit-learn's encoder inside the estimator treats 2.5 as an unknown category (the missing
    side); the graph must not test the membership of 2 instead."""
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 60, 6000).astype(float)
    other = rng.normal(size=len(codes))
    y = np.where(np.isin(codes, rng.choice(60, 30, replace=False)), 5.0, -5.0) + other
    x = np.column_stack([other, codes])
    model = HistGradientBoostingRegressor(categorical_features=[False, True], max_iter=20, random_state=0)
    model.fit(x, y)
    with _boolean_attribute_fix():
        onx = convert_sklearn(
            model, initial_types=[("x", DoubleTensorType([None, 2]))], target_opset={"": 17, "ai.onnx.ml": 3}
        )
    assert double_trees(onx, model) == 1
    values = np.r_[np.arange(-1, 61) + 0.5, 0.25, 1e-9, 59.999, np.nan, np.arange(60)]
    rows = np.column_stack([np.zeros(len(values)), values])
    truncated = np.column_stack([np.zeros(len(values)), np.trunc(values)])
    assert (model.predict(rows) != model.predict(truncated)).sum() > 10  # the two readings differ
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": rows})[0].reshape(-1)
    np.testing.assert_allclose(got, model.predict(rows), rtol=0, atol=1e-9)


def test_the_server_answers_from_the_graph_for_unknown_and_absent_categories(tmp_path):
    from mlcycle.serving.model import ServedModel
    from tests.unit.serving.conftest import save_model_folder

    spec, model, x = _fitted(tmp_path, "multiclass")
    rows = _rows(model, x)
    folder = save_model_folder(spec, model, x, rows, tmp_path / "model")
    served = ServedModel(folder)
    assert served.path == "onnx", served.path_reason
    records = rows.head(700).astype(object).where(rows.head(700).notna(), None).to_dict("records")
    records = [r for r in records if r["zone"] is not None]  # a request names a category or is refused
    fast, exact = served._predict_onnx(records), served._predict_pipeline(records)
    assert fast.predictions == exact.predictions
    assert np.max(np.abs(np.asarray(fast.probabilities) - np.asarray(exact.probabilities))) < 1e-9
    assert {"not-a-zone", *ABSENT} <= {r["zone"] for r in records}


def test_an_empty_member_set_sends_every_value_to_the_false_side():
    """onnxruntime refuses a membership node without members; such a split is written another way."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from mlcycle.serving.onnx_trees import Split, _Ensemble

    ensemble = _Ensemble()
    splits = {0: Split(0, 0.0, 1, 2, False, members=()), 2: Split(0, 0.0, 3, 4, False, members=(1.0, 2.0))}
    ensemble.add_tree(splits.get, 0, lambda i: float(i))
    graph = helper.make_graph(
        [ensemble.node(["x"], "y", "trees", 1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [None, 1])],
    )
    onx = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 5)]
    )
    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    values = np.array([[0.0], [1.0], [2.0], [-np.inf], [np.inf], [np.nan]])
    assert session.run(None, {"x": values})[0].reshape(-1).tolist() == [4.0, 3.0, 3.0, 4.0, 4.0, 4.0]
