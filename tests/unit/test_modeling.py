"""The model pipeline (preprocessing inside it), its bounded search, the metrics, and saving with skops."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from mlcycle.modeling import SCORING, build_pipeline, build_search, score, trusted_types
from mlcycle.spec import MODEL_FAMILIES, load_spec
from tests.conftest import BIKESHARE_CSV
from tests.datasets import BIKESHARE_SPEC, make_classification_dataset


@pytest.fixture(scope="module")
def bikeshare():
    return load_spec(BIKESHARE_SPEC)


@pytest.fixture(scope="module")
def bikeshare_rows(bikeshare):
    df = pd.read_csv(BIKESHARE_CSV).head(240)
    return df[bikeshare.feature_names], df[bikeshare.target]


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    spec = load_spec(make_classification_dataset(tmp_path_factory.mktemp("clf"), days=10))
    df = pd.read_csv(spec.source.path())
    return spec, df[spec.feature_names], df[spec.target]


def _with(spec, family, **evaluation):
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, family=family),
                               evaluation=dataclasses.replace(spec.evaluation, **evaluation))


def test_preprocessing_lives_in_the_pipeline(bikeshare, clf):
    pre = build_pipeline(bikeshare).named_steps["preprocess"]
    numeric, categorical = pre.transformers[0], pre.transformers[1]
    assert numeric[1] == "passthrough" and "temp" in numeric[2] and "casual" not in numeric[2]
    assert categorical[2] == ["season", "mnth", "holiday", "weekday", "workingday", "weathersit"]
    assert categorical[1].handle_unknown == "ignore"
    linear = build_pipeline(clf[0]).named_steps["preprocess"].transformers[0][1]
    # linear families get imputed, scaled inputs (a spec may allow nulls in a feature)
    assert [type(step).__name__ for _, step in linear.steps] == ["SimpleImputer", "StandardScaler"]
    assert build_pipeline(bikeshare).named_steps["model"].random_state == bikeshare.model.seed


def test_search_is_bounded_and_time_ordered(bikeshare):
    search = build_search(bikeshare, n_samples=4000)
    assert search.n_iter == 6 and search.cv.n_splits == 3 and type(search.cv).__name__ == "TimeSeriesSplit"
    assert search.scoring == SCORING["rmse"] == "neg_root_mean_squared_error"
    assert set(search.param_distributions) == {f"model__{p.name}" for p in bikeshare.model.space}
    assert build_search(bikeshare, n_samples=120).cv.n_splits == 2  # never fewer than 50 rows a fold...
    assert build_search(bikeshare, n_samples=10).cv.n_splits == 2  # ...but always at least two folds


def test_scores_follow_the_metric(clf, bikeshare, bikeshare_rows):
    spec, x, y = clf
    model = build_pipeline(spec).fit(x, y)
    auc = score(spec, model, x, y)
    assert 0.8 < auc <= 1.0
    acc = score(_with(spec, spec.model.family, metric="accuracy"), model, x, y)
    assert acc == pytest.approx(float((model.predict(x) == y).mean()))
    assert score(_with(spec, spec.model.family, metric="log_loss"), model, x, y) > 0
    reg = build_pipeline(_with(bikeshare, "ridge")).fit(*bikeshare_rows)
    rmse = score(bikeshare, reg, *bikeshare_rows)
    pred = reg.predict(bikeshare_rows[0])
    assert rmse == pytest.approx(float(np.sqrt(np.mean((bikeshare_rows[1] - pred) ** 2))))


FAMILIES = [(task, family) for task, families in MODEL_FAMILIES.items() for family in families]


@pytest.mark.parametrize(("task", "family"), FAMILIES)
def test_every_family_saves_and_loads_with_skops(task, family, tmp_path, monkeypatch, bikeshare,
                                                  bikeshare_rows, clf):
    import mlflow

    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", lambda uri, flavor, fallback=None, **kw: fallback)
    spec, x, y = (bikeshare, *bikeshare_rows) if task == "regression" else clf
    spec = _with(spec, family)
    model = build_pipeline(spec)
    if family in ("random_forest", "hist_gradient_boosting"):
        model.set_params(model__max_depth=3) if family == "random_forest" else model.set_params(model__max_iter=5)
    model.fit(x, y)
    mlflow.sklearn.save_model(model, tmp_path / "m", serialization_format="skops",
                              skops_trusted_types=trusted_types(spec))
    loaded = mlflow.sklearn.load_model(str(tmp_path / "m"))
    np.testing.assert_allclose(loaded.predict(x.head(20)), model.predict(x.head(20)))


class ChosenProbabilities:
    """Stands in for a fitted binary classifier, so every metric below can be computed by hand."""

    classes_ = np.array([0, 1])

    def __init__(self, p1: list[float]):
        self.p1 = np.array(p1)

    def predict_proba(self, features):
        return np.column_stack([1 - self.p1, self.p1])

    def predict(self, features):
        return self.classes_[(self.p1 > 0.5).astype(int)]


#: Labels and P(label = 1): predictions (p > 0.5) are [1, 1, 1, 1, 1, 0, 0]: 3 true positives,
#: 2 false positives, 2 true negatives, no false negative.
LABELS = [1, 1, 1, 0, 0, 0, 0]
P1 = [0.9, 0.8, 0.58, 0.6, 0.55, 0.2, 0.1]
#: Hand-computed, one per metric, all different, so that one metric scored as another fails.
BY_HAND = {
    "accuracy": 5 / 7,
    # F1 of the positive class (1, the greater label): precision 3/5, recall 1, F1 = 2*3/(2*3+2+0)
    # (class 0's would be 2/3, and the support-weighted mean of both 0.702...)
    "f1": 0.75,
    # 12 (positive, negative) pairs; the positive scores higher in all but (0.58, 0.6)
    "roc_auc": 11 / 12,
    "log_loss": -(math.log(0.9) + math.log(0.8) + math.log(0.58)
                  + math.log(0.4) + math.log(0.45) + math.log(0.8) + math.log(0.9)) / 7,
}
#: y = 1, 2, 3, 4 against a constant prediction of 2: errors -1, 0, 1, 2.
Y_REG = [1.0, 2.0, 3.0, 4.0]
BY_HAND_REG = {
    "rmse": math.sqrt((1 + 0 + 1 + 4) / 4),
    "mae": (1 + 0 + 1 + 2) / 4,
    "r2": 1 - (1 + 0 + 1 + 4) / (2.25 + 0.25 + 0.25 + 2.25),  # 1 - SSres / SStot, mean 2.5
}


@pytest.mark.parametrize("metric", sorted(BY_HAND))
def test_classification_metrics_match_hand_computed_values(clf, metric):
    spec = _with(clf[0], clf[0].model.family, metric=metric)
    x = pd.DataFrame({"x1": np.zeros(len(LABELS))})
    assert score(spec, ChosenProbabilities(P1), x, pd.Series(LABELS)) == pytest.approx(BY_HAND[metric], abs=1e-12)


@pytest.mark.parametrize("metric", sorted(BY_HAND_REG))
def test_regression_metrics_match_hand_computed_values(bikeshare, metric):
    from sklearn.dummy import DummyRegressor

    x = pd.DataFrame({"temp": np.zeros(len(Y_REG))})
    model = DummyRegressor(strategy="constant", constant=2.0).fit(x, Y_REG)
    spec = _with(bikeshare, bikeshare.model.family, metric=metric)
    assert score(spec, model, x, pd.Series(Y_REG)) == pytest.approx(BY_HAND_REG[metric], abs=1e-12)


def test_the_hand_computed_values_are_all_different():
    values = [*BY_HAND.values(), *BY_HAND_REG.values()]
    assert len({round(v, 9) for v in values}) == len(values)


def test_an_unknown_metric_is_refused(clf):
    spec = _with(clf[0], clf[0].model.family, metric="mape")
    with pytest.raises(ValueError, match="unknown metric mape"):
        score(spec, ChosenProbabilities(P1), pd.DataFrame({"x1": [0.0] * 7}), pd.Series(LABELS))
