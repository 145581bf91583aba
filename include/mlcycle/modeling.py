"""The model: a scikit-learn Pipeline that carries all preprocessing, and its bounded search.

Because the encoder lives inside the Pipeline that MLflow saves, serving applies exactly the
transformations training did (no training/serving skew).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import ParameterSampler, RandomizedSearchCV, TimeSeriesSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from mlcycle.registry import MODELS
from mlcycle.spec import ONEHOT_MAX_VALUES, PipelineSpec, SearchParam, closest_hint, raise_problems

log = logging.getLogger(__name__)

#: Types skops must trust for every family (each family adds its own: mlcycle.registry.MODELS).
COMMON_TRUSTED_TYPES = ["numpy.dtype", "builtins.slice"]

SCORING = {"rmse": "neg_root_mean_squared_error", "mae": "neg_mean_absolute_error", "r2": "r2",
           "accuracy": "accuracy", "f1": "f1", "roc_auc": "roc_auc_ovr", "log_loss": "neg_log_loss"}


def categorical_split(spec: PipelineSpec) -> tuple[list[str], list[str]]:
    """The categorical features that are one-hot encoded, and those the model handles natively.

    Native categorical support (gradient boosting only) splits on groups of categories and costs no
    wide dense matrix: under ``auto`` it takes every categorical with more than ONEHOT_MAX_VALUES
    allowed values. Small ones stay one-hot, which every family and the ONNX converter understand.
    """
    categorical = [c for c in spec.feature_columns if c.type in ("categorical", "string")]
    encoding = spec.model.categorical_encoding
    if not MODELS[spec.model.family].native_categoricals or encoding == "onehot":
        return [c.name for c in categorical], []
    if encoding == "native":
        return [], [c.name for c in categorical]
    wide = [c.name for c in categorical if c.values is None or len(c.values) > ONEHOT_MAX_VALUES]
    return [c.name for c in categorical if c.name not in wide], wide


def spec_categories(spec: PipelineSpec, names: list[str]) -> list[list[Any]] | str:
    """The encoder's categories: the spec's allowed values of each column, in the spec's order.

    ``"auto"`` (learnt from the data) only when some column lists no values: scikit-learn's encoders
    take either a list for every column or ``"auto"`` for all, and ``categorical_split`` sends such a
    column to its own encoder under ``auto`` (native), so it never shifts a mask.
    """
    values = [spec.column(name).values for name in names]
    if any(v is None for v in values):
        return "auto"
    return [list(v) for v in values]


def build_pipeline(spec: PipelineSpec) -> Pipeline:
    numeric = [c.name for c in spec.feature_columns if c.type in ("numeric", "integer")]
    onehot, native = categorical_split(spec)
    family = MODELS[spec.model.family]
    transformers = []
    if numeric:
        # Tree ensembles take missing values natively; linear models get a median imputer, so a spec
        # that allows nulls (max_null_share) trains with every family.
        scaled = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        transformers.append(("numeric", scaled if family.scaled_inputs else "passthrough", numeric))
    if onehot:
        # One column per allowed value of the spec, in its order, whatever a fold or the training slice
        # holds: the layout is the same in every fold, the refit, evaluation and serving. A value outside
        # the spec (serving.unknown_categories: accept) or missing encodes as all zeros. Only a `string`
        # feature without `values` takes its categories from the data it is fitted on.
        transformers.append(("categorical", OneHotEncoder(categories=spec_categories(spec, onehot),
                                                          handle_unknown="ignore", sparse_output=False),
                             onehot))
    if native:
        # Codes 0..k-1 in the order of the spec's allowed values; unknown or missing: NaN, which the
        # trees send down their missing-value branch. At most 255 codes (the trees' bin limit).
        categories = spec_categories(spec, native)
        transformers.append(("native", OrdinalEncoder(categories=categories, handle_unknown="use_encoded_value",
                                                      unknown_value=np.nan, encoded_missing_value=np.nan,
                                                      max_categories=255 if categories == "auto" else None),
                             native))
    pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    estimator = family.estimator(spec.task)
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=spec.model.seed)
    if family.native_categoricals:
        n_before = len(numeric) + (len(onehot) and sum(len(spec.column(c).values or ()) for c in onehot))
        mask = [False] * n_before + [True] * len(native)
        estimator.set_params(categorical_features=mask if native else None,
                             early_stopping=spec.model.early_stopping, validation_fraction=0.1,
                             n_iter_no_change=10)
    return Pipeline([("preprocess", pre), ("model", estimator)])


def _distribution(p: SearchParam) -> Any:
    if p.values is not None:
        return list(p.values)
    if p.integer:
        return stats.randint(int(p.low), int(p.high) + 1)
    if p.log:
        return stats.loguniform(p.low, p.high)
    return stats.uniform(p.low, p.high - p.low)


class BudgetedRandomSearch(RandomizedSearchCV):
    """A random search that stops starting new candidates once ``budget_seconds`` have passed.

    Candidates are evaluated one at a time, in the order RandomizedSearchCV would draw them, through
    ``_run_search``, scikit-learn's extension point for search strategies; at least one always runs.
    ``candidates_run`` tells how many did.
    """

    def __init__(self, estimator, param_distributions, *, n_iter=10, scoring=None, n_jobs=None, refit=True,
                 cv=None, verbose=0, pre_dispatch="2*n_jobs", random_state=None, error_score=np.nan,
                 return_train_score=False, budget_seconds=None):
        super().__init__(estimator, param_distributions, n_iter=n_iter, scoring=scoring, n_jobs=n_jobs,
                         refit=refit, cv=cv, verbose=verbose, pre_dispatch=pre_dispatch,
                         random_state=random_state, error_score=error_score,
                         return_train_score=return_train_score)
        self.budget_seconds = budget_seconds

    def _run_search(self, evaluate_candidates) -> None:
        began = time.perf_counter()
        self.candidates_run = 0
        for params in ParameterSampler(self.param_distributions, self.n_iter, random_state=self.random_state):
            evaluate_candidates([params])
            self.candidates_run += 1
            elapsed = time.perf_counter() - began
            log.info("search: candidate %d/%d done (%.1f s)", self.candidates_run, self.n_iter, elapsed)
            if self.budget_seconds is not None and elapsed > self.budget_seconds:
                if self.candidates_run < self.n_iter:
                    log.warning("search: budget of %.0f s spent after %d of %d candidates; keeping the best "
                                "so far (model.search.budget_seconds)", self.budget_seconds,
                                self.candidates_run, self.n_iter)
                break


def check_space(spec: PipelineSpec, pipeline: Pipeline) -> None:
    """Every parameter of ``model.search.space`` is one the family's estimator takes (a family added
    later, or a space copied from another family's spec, would otherwise fail inside the search)."""
    estimator = pipeline.steps[-1][1]
    known = estimator.get_params()
    problems = [
        f"model.search.space.{param.name}: not a parameter of {type(estimator).__name__} "
        f"(model.family {spec.model.family}){closest_hint(param.name, known)}"
        for param in spec.model.space
        if param.name not in known
    ]
    if problems:
        raise_problems(spec.path, problems)


def build_search(spec: PipelineSpec, n_samples: int) -> BudgetedRandomSearch:
    folds = max(2, min(spec.model.cv_folds, n_samples // 50))
    pipeline = build_pipeline(spec)
    check_space(spec, pipeline)
    return BudgetedRandomSearch(
        pipeline,
        {f"model__{p.name}": _distribution(p) for p in spec.model.space},
        n_iter=spec.model.n_iter,
        cv=TimeSeriesSplit(n_splits=folds),
        scoring=SCORING[spec.evaluation.metric],
        random_state=spec.model.seed,
        n_jobs=1,
        refit=False,  # train refits the best candidate on the whole slice, which the search may not have seen
        error_score="raise",
        budget_seconds=spec.model.budget_seconds,
    )


def time_stratified_sample(strata: np.ndarray, max_rows: int, seed: int) -> np.ndarray | None:
    """Positions of at most ``max_rows`` rows, the same share of every stratum (a day), in row order.

    ``None`` when every row fits. Each stratum keeps ``max_rows / n`` of its rows (rounded so that the
    total is exactly ``max_rows``), drawn at random but reproducibly, so a sample of a time-ordered
    slice is still time-ordered and covers every day as the whole slice does: the time-series folds
    of the search see the same seasons, in the same order.
    """
    n = len(strata)
    if n <= max_rows:
        return None
    values, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    exact = counts * (max_rows / n)
    quota = np.floor(exact).astype(np.int64)
    short = max_rows - int(quota.sum())
    if short:  # the largest remainders get one row more
        quota[np.argsort(quota - exact, kind="stable")[:short]] += 1
    order = np.lexsort((np.random.default_rng(seed).random(n), inverse))
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(n) - first[inverse[order]]
    return np.sort(order[rank < quota[inverse[order]]])


def metric_set(spec: PipelineSpec, model: Any, features: pd.DataFrame, target: pd.Series) -> dict[str, float]:
    """The task's standard metrics on one slice.

    Regression: rmse, mae, r2. Classification: accuracy, precision, recall and f1 (of the positive
    class, the last of the model's sorted classes, for a binary task; weighted over classes
    otherwise), roc_auc (one-vs-rest for more than two classes) and log_loss.
    """
    if spec.task == "regression":
        pred = model.predict(features)
        return {"rmse": float(np.sqrt(skm.mean_squared_error(target, pred))),
                "mae": float(skm.mean_absolute_error(target, pred)), "r2": float(skm.r2_score(target, pred))}
    pred = model.predict(features)
    proba = model.predict_proba(features)
    classes = list(model.classes_)
    binary = len(classes) == 2
    averaging = {"average": "binary", "pos_label": classes[-1]} if binary else {"average": "weighted"}
    out = {"accuracy": float(skm.accuracy_score(target, pred)),
           "precision": float(skm.precision_score(target, pred, zero_division=0, **averaging)),
           "recall": float(skm.recall_score(target, pred, zero_division=0, **averaging)),
           "f1": float(skm.f1_score(target, pred, zero_division=0, **averaging)),
           "log_loss": float(skm.log_loss(target, proba, labels=classes))}
    if len(set(target)) > 1:
        out["roc_auc"] = float(skm.roc_auc_score(target, proba[:, 1]) if binary else
                               skm.roc_auc_score(target, proba, multi_class="ovr", labels=classes))
    return out


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
    if metric == "f1":  # of the positive class for a binary task (as metric_set), weighted otherwise
        classes = list(model.classes_)
        if len(classes) == 2:
            return float(skm.f1_score(target, pred, average="binary", pos_label=classes[-1], zero_division=0))
        return float(skm.f1_score(target, pred, average="weighted", zero_division=0))
    raise ValueError(f"unknown metric {metric}")


def trusted_types(spec: PipelineSpec) -> list[str]:
    return COMMON_TRUSTED_TYPES + list(MODELS[spec.model.family].trusted_types)
