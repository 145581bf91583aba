"""The model: a scikit-learn Pipeline that carries all preprocessing, and its bounded search.

Because the encoder lives inside the Pipeline that MLflow saves, serving applies exactly the
transformations training did (no training/serving skew).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import RandomizedSearchCV, TimeSeriesSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlcycle.spec import PipelineSpec, SearchParam

ESTIMATORS = {
    ("regression", "hist_gradient_boosting"): HistGradientBoostingRegressor,
    ("regression", "random_forest"): RandomForestRegressor,
    ("regression", "ridge"): Ridge,
    ("classification", "hist_gradient_boosting"): HistGradientBoostingClassifier,
    ("classification", "random_forest"): RandomForestClassifier,
    ("classification", "logistic_regression"): LogisticRegression,
}

#: Types skops must be told to trust when MLflow saves and loads each family (explicit, not blanket).
SKOPS_TRUSTED_TYPES = {
    "hist_gradient_boosting": ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
                               "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper"],
    "random_forest": ["sklearn.tree._tree.Tree"],
    "ridge": [],
    "logistic_regression": [],
}
COMMON_TRUSTED_TYPES = ["numpy.dtype", "builtins.slice"]

SCORING = {"rmse": "neg_root_mean_squared_error", "mae": "neg_mean_absolute_error", "r2": "r2",
           "accuracy": "accuracy", "f1": "f1_weighted", "roc_auc": "roc_auc_ovr", "log_loss": "neg_log_loss"}


def build_pipeline(spec: PipelineSpec) -> Pipeline:
    numeric = [c.name for c in spec.feature_columns if c.type in ("numeric", "integer")]
    categorical = [c.name for c in spec.feature_columns if c.type in ("categorical", "string")]
    linear = spec.model.family in ("ridge", "logistic_regression")
    transformers = []
    if numeric:
        # Tree ensembles take missing values natively; linear models get a median imputer, so a spec
        # that allows nulls (max_null_share) trains with every family.
        scaled = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        transformers.append(("numeric", scaled if linear else "passthrough", numeric))
    if categorical:
        transformers.append(("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                             categorical))
    pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    estimator = ESTIMATORS[(spec.task, spec.model.family)]()
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=spec.model.seed)
    return Pipeline([("preprocess", pre), ("model", estimator)])


def _distribution(p: SearchParam) -> Any:
    if p.values is not None:
        return list(p.values)
    if p.integer:
        return stats.randint(int(p.low), int(p.high) + 1)
    if p.log:
        return stats.loguniform(p.low, p.high)
    return stats.uniform(p.low, p.high - p.low)


def build_search(spec: PipelineSpec, n_samples: int) -> RandomizedSearchCV:
    folds = max(2, min(spec.model.cv_folds, n_samples // 50))
    return RandomizedSearchCV(
        build_pipeline(spec),
        {f"model__{p.name}": _distribution(p) for p in spec.model.space},
        n_iter=spec.model.n_iter,
        cv=TimeSeriesSplit(n_splits=folds),
        scoring=SCORING[spec.evaluation.metric],
        random_state=spec.model.seed,
        n_jobs=1,
        refit=True,
        error_score="raise",
    )


def score(spec: PipelineSpec, model: Any, features: pd.DataFrame, target: pd.Series) -> float:
    """The spec's evaluation metric of ``model`` on one slice."""
    metric = spec.evaluation.metric
    if metric in ("roc_auc", "log_loss"):
        proba = model.predict_proba(features)
        if metric == "log_loss":
            return float(skm.log_loss(target, proba, labels=model.classes_))
        if proba.shape[1] == 2:
            return float(skm.roc_auc_score(target, proba[:, 1]))
        return float(skm.roc_auc_score(target, proba, multi_class="ovr", labels=model.classes_))
    pred = model.predict(features)
    if metric == "rmse":
        return float(np.sqrt(skm.mean_squared_error(target, pred)))
    if metric == "mae":
        return float(skm.mean_absolute_error(target, pred))
    if metric == "r2":
        return float(skm.r2_score(target, pred))
    if metric == "accuracy":
        return float(skm.accuracy_score(target, pred))
    if metric == "f1":
        return float(skm.f1_score(target, pred, average="weighted"))
    raise ValueError(f"unknown metric {metric}")


def trusted_types(spec: PipelineSpec) -> list[str]:
    return COMMON_TRUSTED_TYPES + SKOPS_TRUSTED_TYPES.get(spec.model.family, [])
