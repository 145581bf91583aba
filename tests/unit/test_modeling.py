"""The model pipeline (preprocessing inside it), its bounded search, the metrics, and saving with skops."""

from __future__ import annotations

import dataclasses

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
