"""Tree ensembles on the ONNX fast path, in double: every family's export equals its Pipeline.

Before the rewrite (mlcycle.serving.onnx_trees) a gradient-boosting classifier and a forest
regressor had no fast path at all (onnxruntime refused skl2onnx's graph) and the others answered
in float32; here each one matches scikit-learn to rounding, rows on a threshold included.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlcycle.modeling import build_pipeline
from mlcycle.serving.export import serving_schema, to_onnx
from mlcycle.serving.onnx_trees import Unsupported, double_trees
from mlcycle.sources.file import read_table
from mlcycle.spec import MODEL_FAMILIES, load_spec
from tests.conftest import BIKESHARE_CSV
from tests.datasets import BIKESHARE_SPEC, make_classification_dataset, write_spec_variant

FAMILIES = [(task, family) for task, families in MODEL_FAMILIES.items() for family in families]


def _fitted(tmp_path, task: str, family: str, **model):
    if task == "regression":
        spec = load_spec(
            write_spec_variant(BIKESHARE_SPEC, tmp_path / "s.yaml", model={"family": family, **model})
        )
        frame = pd.read_csv(BIKESHARE_CSV).head(2000)
    else:
        local = make_classification_dataset(tmp_path / "data", days=20)
        spec = load_spec(write_spec_variant(local, tmp_path / "s.yaml", model={"family": family, **model}))
        frame = read_table(spec.source.path(), "csv")
    x, y = frame[spec.feature_names], frame[spec.target]
    pipeline = build_pipeline(spec)
    if family == "random_forest":
        pipeline.set_params(model__n_estimators=20)
    return spec, pipeline.fit(x, y), x


@pytest.mark.parametrize(("task", "family"), FAMILIES)
def test_every_family_has_a_fast_path_equal_to_its_pipeline(tmp_path, task, family):
    spec, model, x = _fitted(tmp_path, task, family)
    export = to_onnx(serving_schema(spec, model, x), model, x)
    assert export.model is not None, export.reason
    assert export.max_abs_diff < 1e-9, export.reason
    assert export.label_mismatches in (None, 0), export.reason


def test_a_row_exactly_on_a_forest_threshold_takes_the_pipelines_branch(tmp_path):
    """scikit-learn's trees compare float32 inputs with double thresholds: the graph rounds its
    input the same way, so a value between the two sides' float32 neighbours goes where it goes there."""
    spec, model, x = _fitted(tmp_path, "regression", "random_forest")
    tree = model.steps[-1][1].estimators_[0].tree_
    feature, threshold = int(tree.feature[0]), float(tree.threshold[0])
    column = model.steps[0][1].get_feature_names_out()[feature]
    rows = pd.concat([x.head(3)] * 3, ignore_index=True)
    rows[column] = [threshold, np.nextafter(threshold, -np.inf), np.nextafter(threshold, np.inf)] * 3
    export = to_onnx(serving_schema(spec, model, x), model, rows)
    assert export.max_abs_diff < 1e-9, export.reason


@pytest.mark.parametrize("task", list(MODEL_FAMILIES))
def test_native_categoricals_have_a_fast_path_equal_to_their_pipeline(tmp_path, task):
    """Every categorical split on the estimator's own codes: bikeshare's month, weekday, weather...
    (integers and strings), the generated set's color. More cases: test_onnx_native_categoricals."""
    spec, model, x = _fitted(tmp_path, task, "hist_gradient_boosting", categorical_encoding="native")
    assert model.steps[-1][1]._preprocessor is not None
    export = to_onnx(serving_schema(spec, model, x), model, x)
    assert export.model is not None, export.reason
    assert export.max_abs_diff < 1e-9, export.reason
    assert export.label_mismatches in (None, 0), export.reason


def test_categories_the_rewrite_cannot_express_raise_with_the_reason(tmp_path):
    """Categories that reach the estimator as strings (no encoder in front of it): skl2onnx's own tree
    node would ignore the estimator's encoding of them, so the rewrite refuses and says what to do."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    spec, model, x = _fitted(tmp_path, "regression", "hist_gradient_boosting")
    onx = _skl2onnx_graph(spec, model, x)
    frame = pd.DataFrame({"color": pd.Categorical(["red", "blue"] * 50), "x": np.arange(100.0)})
    strings = HistGradientBoostingRegressor(categorical_features="from_dtype", max_iter=3).fit(
        frame, frame["x"]
    )
    with pytest.raises(Unsupported, match="encode them with an OrdinalEncoder"):
        double_trees(onx, strings)


def _skl2onnx_graph(spec, model, x):
    from skl2onnx import convert_sklearn

    from mlcycle.serving.export import TARGET_OPSET, _boolean_attribute_fix, _initial_types

    with _boolean_attribute_fix():
        return convert_sklearn(
            model,
            initial_types=_initial_types(serving_schema(spec, model, x).features),
            target_opset=TARGET_OPSET,
        )
