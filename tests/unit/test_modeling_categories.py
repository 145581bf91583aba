"""Encoders take their categories from the spec, never from the data they are fitted on.

A rare allowed value missing from a fold, or from the whole training slice, must not change the
feature layout: every family under every ``categorical_encoding`` searches (time-series folds),
refits, scores an evaluation slice holding the unseen values, exports to ONNX and serves the same
columns. Before the fix, ``auto`` (one-hot narrow, native wide) failed in the first fold without the
rare value: ``categorical_features set as a boolean mask must have shape (n_features,)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlcycle.modeling import build_pipeline, build_search, categorical_split
from mlcycle.serving.export import serving_schema, to_onnx
from mlcycle.spec import CATEGORICAL_ENCODINGS, MODEL_FAMILIES, parse_spec

KINDS = ["a", "b", "c", "rare", "never"]  # `rare` only late in the training slice, `never` not at all
ZONES = [f"z{i:02d}" for i in range(20)]  # wide: native under `auto`; z18 rare, z19 never trained on
N_TRAIN, N_EVAL = 600, 60
#: One small candidate per family: the layout is under test, not the search.
SPACE = {
    "hist_gradient_boosting": ("max_iter", 10),
    "random_forest": ("n_estimators", 5),
    "ridge": ("alpha", 1.0),
    "logistic_regression": ("C", 1.0),
}


def _spec(task: str, family: str, encoding: str):
    raw = {
        "name": "cats",
        "task": task,
        "target": "y",
        "source": {"kind": "file", "path": "cats.csv", "format": "csv"},
        "timestamp": {"kind": "column", "column": "ts"},
        "columns": {
            "ts": {"type": "string", "role": "ignore"},
            "x": {"type": "numeric", "min": -10, "max": 10},
            "kind": {"type": "categorical", "values": KINDS},
            "zone": {"type": "categorical", "values": ZONES},
            "y": {"type": "categorical", "values": [0, 1]}
            if task == "classification"
            else {"type": "numeric"},
        },
        "window": {"data_start": "2024-01-01", "data_end": "2024-02-01", "days": 14},
        "model": {
            "family": family,
            "categorical_encoding": encoding,
            "search": {
                "n_iter": 1,
                "cv_folds": 3,
                "seed": 1,
                "space": {SPACE[family][0]: {"values": [SPACE[family][1]]}},
            },
        },
        "evaluation": {
            "metric": "roc_auc" if task == "classification" else "rmse",
            "holdout_days": 3,
            "threshold": 0.5 if task == "classification" else 100.0,
            "tolerance": 0.1,
        },
    }
    return parse_spec(raw, Path("/nonexistent/cats.yaml"))


def _frames(task: str) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    rng = np.random.default_rng(5)
    n = N_TRAIN + N_EVAL
    kind = rng.choice(["a", "b", "c"], n).astype(object)
    kind[N_TRAIN - 20 : N_TRAIN] = "rare"  # in the last fold's test part only: absent from every earlier fit
    zone = rng.choice(ZONES[:18], n).astype(object)
    zone[N_TRAIN - 10 : N_TRAIN] = "z18"
    kind[N_TRAIN::3], zone[N_TRAIN::2] = "never", "z19"  # evaluation only: the model never saw them
    x = pd.DataFrame({"x": rng.normal(size=n), "kind": kind, "zone": zone})
    signal = x["x"] + (x["kind"] == "b") - (x["zone"].isin(ZONES[:5]))
    y = (signal > 0).astype(int) if task == "classification" else signal + rng.normal(scale=0.1, size=n)
    return x.iloc[:N_TRAIN], pd.Series(y[:N_TRAIN]), x.iloc[N_TRAIN:]


CASES = [
    (task, family, encoding)
    for task, families in MODEL_FAMILIES.items()
    for family in families
    for encoding in CATEGORICAL_ENCODINGS
    if encoding != "native" or family == "hist_gradient_boosting"
]  # the spec refuses the others


@pytest.mark.parametrize(("task", "family", "encoding"), CASES)
def test_the_layout_comes_from_the_spec_in_every_fold_refit_and_evaluation(task, family, encoding):
    spec = _spec(task, family, encoding)
    x, y, x_eval = _frames(task)
    onehot, native = categorical_split(spec)
    expected_width = 1 + sum(len(spec.column(c).values) for c in onehot) + len(native)

    search = build_search(spec, len(x))
    search.fit(x, y)  # every time-series fold fits and scores (the first fold lacks `rare` and `z18`)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()

    model = build_pipeline(spec).set_params(**search.best_params_)
    for rows in (x.iloc[:150], x):  # a fold without the rare values, then the whole training slice
        fitted = model.fit(rows, y.loc[rows.index])
        assert fitted.named_steps["preprocess"].transform(x_eval).shape[1] == expected_width
    names = list(fitted.named_steps["preprocess"].get_feature_names_out())
    if onehot:  # one column per allowed value, in the spec's order, seen in training or not
        assert [n for n in names if n.startswith("kind_")] == [f"kind_{k}" for k in KINDS] or "kind" in native
    if native:
        codes = fitted.named_steps["preprocess"].named_transformers_["native"].categories_
        assert [list(c) for c in codes] == [list(spec.column(c).values) for c in native]
    predictions = fitted.predict(x_eval)  # `never` and `z19`: unknown to the model, known to the spec
    assert len(predictions) == len(x_eval) and np.isfinite(np.asarray(predictions, dtype=float)).all()

    schema = serving_schema(spec, fitted, x)
    assert [f.name for f in schema.features] == spec.feature_names
    assert {f.name: list(f.values) for f in schema.features if f.values} == {"kind": KINDS, "zone": ZONES}
    # ONNX: the linear families' one-hot layout agrees with the Pipeline on every row, unseen values
    # included. Tree families convert or not by skl2onnx's support; the export never raises, and its
    # parity, measured on the evaluation slice, decides whether serving takes the fast path.
    export = to_onnx(schema, fitted, x_eval)
    if family in ("ridge", "logistic_regression"):
        assert export.model is not None, export.reason
        assert export.label_mismatches in (None, 0), export.reason
        assert export.max_abs_diff is not None and export.max_abs_diff < 1e-6, export.reason
    else:
        assert export.rows == len(x_eval) and export.reason


def test_a_string_feature_without_values_still_learns_its_categories():
    spec = _spec("classification", "logistic_regression", "onehot")
    columns = [
        dataclasses.replace(c, type="string", values=None) if c.name == "kind" else c for c in spec.columns
    ]
    spec = dataclasses.replace(spec, columns=tuple(columns) if isinstance(spec.columns, tuple) else columns)
    x, y, x_eval = _frames("classification")
    fitted = build_pipeline(spec).fit(x, y)
    assert fitted.predict(x_eval).shape == (len(x_eval),)
