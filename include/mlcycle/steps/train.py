"""train: a bounded hyper-parameter search over the spec's model family, tracked in MLflow.

The search runs on at most ``model.search.max_rows`` rows of the training slice (the same share of
every day, in time order); the best candidate is then refit on the whole slice, with early
stopping for gradient boosting. On millions of rows the search costs what it costs on the sample,
and the model still learns from every row.

The run records the search space and best parameters, cross-validated and hold-out scores, the
training data as an MLflow dataset input with its fingerprint, the model (a full scikit-learn
Pipeline, saved with skops, with signature and input example), and two plots: permutation feature
importance and residuals (regression) or the confusion matrix (classification).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlcycle.settings import Settings
from mlcycle.spec import EVENT_TIME, PipelineSpec
from mlcycle.steps._common import Interval, Result, training_window
from mlcycle.store import Store, read_parquet
from mlcycle.timestamps import local_days

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult(Result):
    pipeline: str
    run_id: str
    experiment_id: str
    model_uri: str
    metric: str
    holdout_score: float
    cv_score: float
    fingerprint: str
    window_start: str
    window_end: str


#: Rows of the evaluation slice the plots look at: permutation importance predicts it three times per
#: feature, and a scatter of millions of points shows nothing more than one of this many.
PLOT_ROWS = 20_000
#: Rows of the evaluation slice on which the ONNX export is compared with the Pipeline.
PARITY_ROWS = 50_000
#: Rows a logged dataset's schema is inferred from (MLflow would otherwise walk every value).
SCHEMA_ROWS = 1_000
#: What loading a logged model needs: scikit-learn's Pipeline and its numeric stack, and skops, its
#: serialization format. MLflow adds itself.
MODEL_PACKAGES = ("scikit-learn", "numpy", "pandas", "scipy", "skops")


def model_requirements() -> list[str]:
    """The logged model's pip requirements: ``MODEL_PACKAGES`` pinned to the versions that trained it.

    Stated rather than left to MLflow's inference, which imports the model in a Python subprocess
    (about 5 s of every training run) and records whatever else that process imported (pytest,
    rich, ...) as a requirement of the model.
    """
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in MODEL_PACKAGES]


def _bounded(features: pd.DataFrame, target: pd.Series, rows: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """At most ``rows`` rows, drawn at random (reproducibly), in their original order."""
    if len(features) <= rows:
        return features, target
    keep = features.sample(n=rows, random_state=seed).index.sort_values()
    return features.loc[keep], target.loc[keep]


def _dataset(frame: pd.DataFrame, **kwargs):
    """An MLflow dataset of ``frame`` whose schema comes from its first rows, not from every value.

    The digest (the data's fingerprint) and the profile (rows, elements) still describe all of it.
    """
    import mlflow
    from mlflow.types.utils import _infer_schema

    dataset = mlflow.data.from_pandas(frame, **kwargs)
    # PandasDataset.schema is a cached property: fill its cache with the schema of the first rows.
    dataset.__dict__["schema"] = _infer_schema(frame.head(SCHEMA_ROWS))
    return dataset


def _plots(spec: PipelineSpec, model, features: pd.DataFrame, target: pd.Series, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import ConfusionMatrixDisplay

    paths = []
    sampled = len(features) > PLOT_ROWS
    features, target = _bounded(features, target, PLOT_ROWS, spec.model.seed)
    on = f"{'a sample of ' if sampled else ''}the evaluation slice ({len(features):,} rows)"
    imp = permutation_importance(model, features, target, n_repeats=3, random_state=spec.model.seed,
                                 scoring=None, n_jobs=1)
    order = imp.importances_mean.argsort()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(order) + 1.5))
    ax.barh([features.columns[i] for i in order], imp.importances_mean[order],
            xerr=imp.importances_std[order], color="#4c72b0")
    ax.set_title(f"{spec.name}: permutation importance on {on}")
    ax.set_xlabel("drop in score when the feature is shuffled")
    fig.tight_layout()
    paths.append(folder / "feature_importance.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 5))
    if spec.task == "regression":
        pred = model.predict(features)
        ax.scatter(pred, target - pred, s=8, alpha=0.5)
        ax.axhline(0, color="grey", lw=1)
        ax.set_xlabel(f"predicted {spec.target}")
        ax.set_ylabel("residual (actual - predicted)")
        ax.set_title(f"{spec.name}: residuals on {on}")
        paths.append(folder / "residuals.png")
    else:
        ConfusionMatrixDisplay.from_estimator(model, features, target, ax=ax, colorbar=False)
        ax.set_title(f"{spec.name}: confusion matrix on {on}")
        paths.append(folder / "confusion_matrix.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _quiet_mlflow_warnings() -> None:
    """MLflow's generic hints that do not apply here and would repeat in every training log: integer
    columns in the inferred signature (the spec's integer columns allow no nulls unless declared),
    and dataset sources given as local paths (they are the store's partitions, on purpose)."""
    import warnings

    warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
    warnings.filterwarnings("ignore", message=".*dataset source.*", module="mlflow")


def _log_fast_path(spec: PipelineSpec, model, x_train: pd.DataFrame, x_eval: pd.DataFrame, model_id: str) -> None:
    """The model converted to ONNX, put inside the logged model's folder (``model.onnx``) when it
    matches the Pipeline on the evaluation slice within ``serving.tolerance``; the measured parity is a
    run tag (copied to the model version at register) and a logged-model tag either way."""
    import mlflow
    from mlflow import MlflowClient

    from mlcycle.serving.export import serving_schema, to_onnx, write_export_report
    from mlcycle.serving.model import ONNX_FILE

    schema = serving_schema(spec, model, x_train)
    export = to_onnx(schema, model, x_eval)
    usable = export.model is not None and export.max_abs_diff is not None and \
        export.max_abs_diff <= schema.tolerance and not export.label_mismatches
    tags = {"mlcycle.onnx": ("logged: " if usable else "not logged: ") + export.reason,
            "mlcycle.onnx_max_abs_diff": "none" if export.max_abs_diff is None else f"{export.max_abs_diff:.6g}"}
    mlflow.set_tags(tags)
    client = MlflowClient()
    client.set_logged_model_tags(model_id, tags)
    with tempfile.TemporaryDirectory() as tmp:  # the export's outcome beside the model, for /metadata
        client.log_model_artifact(model_id, str(write_export_report(export, tmp, usable)))
        if usable:
            path = Path(tmp) / ONNX_FILE
            path.write_bytes(export.model)
            client.log_model_artifact(model_id, str(path))
    if usable:
        mlflow.log_metric("onnx_max_abs_diff", export.max_abs_diff)
    else:
        log.warning("no ONNX fast path for this model (%s): the server will use the Pipeline", export.reason)


def _refit(search, features: pd.DataFrame, target: pd.Series):
    """The search's best candidate fit on the whole training slice (the search may have seen a sample)."""
    from sklearn.base import clone

    model = clone(search.estimator).set_params(**search.best_params_)
    began = time.perf_counter()
    model.fit(features, target)
    trees = getattr(model.steps[-1][1], "n_iter_", None)
    log.info("refit on all %d rows of the training slice in %.1f s%s", len(features), time.perf_counter() - began,
             f" ({trees} boosting iterations, early stopping)" if trees is not None else "")
    return model


def train(spec: PipelineSpec, settings: Settings, interval: Interval, window_days: int | None = None) -> TrainResult:
    import mlflow
    from mlflow.models import infer_signature

    from mlcycle.modeling import build_search, metric_set, score, time_stratified_sample, trusted_types
    from mlcycle.serving.export import serving_metadata
    from mlcycle.tracking import connect, fail_stale_runs

    start, end = training_window(spec, interval, window_days)
    folder = Store(settings.store, spec.name).features_dir(end)
    manifest = json.loads((folder / "manifest.json").read_text())
    train_df = read_parquet(folder / "train.parquet")
    eval_df = read_parquet(folder / "eval.parquet")
    features = spec.feature_names
    x_train, y_train = train_df[features], train_df[spec.target]
    x_eval, y_eval = eval_df[features], eval_df[spec.target]

    experiment_id = connect(settings, spec)
    fail_stale_runs(mlflow.MlflowClient(), experiment_id, settings.dag_id, settings.run_id)
    _quiet_mlflow_warnings()
    sample = time_stratified_sample(local_days(train_df[EVENT_TIME], spec.timezone), spec.model.max_rows,
                                    spec.model.seed) if spec.model.max_rows else None
    x_search, y_search = (x_train, y_train) if sample is None else (x_train.iloc[sample], y_train.iloc[sample])
    search = build_search(spec, len(x_search))
    tags = {"mlcycle.pipeline": spec.name, "mlcycle.window_start": start.isoformat(),
            "mlcycle.window_end": end.isoformat(), "mlcycle.data_fingerprint": manifest["fingerprint"],
            "mlcycle.code_version": settings.code_version, "airflow.dag_id": settings.dag_id,
            "airflow.run_id": settings.run_id}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{end.isoformat()}", tags=tags) as run:
        mlflow.log_params({"model_family": spec.model.family, "search_n_iter": spec.model.n_iter,
                           "search_cv_folds": search.cv.n_splits, "train_rows": len(train_df),
                           "search_rows": len(x_search), "eval_rows": len(eval_df),
                           "window_days": (end - start).days})
        mlflow.log_dict({p.name: p.__dict__ for p in spec.model.space}, "search/space.json")
        dataset = _dataset(train_df, source=str(folder / "train.parquet"),
                           name=f"{spec.name}-train-{end.isoformat()}", targets=spec.target,
                           digest=manifest["fingerprint"])
        mlflow.log_input(dataset, context="training")
        mlflow.log_input(_dataset(eval_df, source=str(folder / "eval.parquet"),
                                  name=f"{spec.name}-eval-{end.isoformat()}", targets=spec.target),
                         context="evaluation")

        on = f"{len(x_search):,} rows" if sample is None else \
            f"a sample of {len(x_search):,} of the {len(x_train):,} rows, the same share of every day " \
            f"(model.search.max_rows)"
        log.info("searching %d candidate(s) of %s with %d-fold time-series CV on %s",
                 spec.model.n_iter, spec.model.family, search.cv.n_splits, on)
        began = time.perf_counter()
        search.fit(x_search, y_search)
        log.info("search done in %.1f s; best params %s", time.perf_counter() - began, search.best_params_)
        model = _refit(search, x_train, y_train)
        sign = -1.0 if search.scoring.startswith("neg_") else 1.0
        cv_score = float(sign * search.best_score_)
        mlflow.log_params({k.removeprefix("model__"): v for k, v in search.best_params_.items()})
        mlflow.log_params({"gate_metric": spec.evaluation.metric, "search_candidates_run": search.candidates_run})
        holdout_metrics = metric_set(spec, model, x_eval, y_eval)  # score() of each metric, one prediction
        holdout = holdout_metrics.get(spec.evaluation.metric)
        if holdout is None:  # roc_auc on a slice of one class: score() says why it is undefined
            holdout = score(spec, model, x_eval, y_eval)
        mlflow.log_metrics({f"cv_{spec.evaluation.metric}": cv_score,
                            **{f"holdout_{name}": value for name, value in holdout_metrics.items()},
                            f"holdout_{spec.evaluation.metric}": holdout})
        log.info("hold-out metrics: %s (the gate uses %s)",
                 ", ".join(f"{k} {v:.4f}" for k, v in holdout_metrics.items()), spec.evaluation.metric)
        cv_table = pd.DataFrame(search.cv_results_)[["params", "mean_test_score", "std_test_score", "rank_test_score"]]
        mlflow.log_table(cv_table.astype({"params": str}), "search/cv_results.json")

        with tempfile.TemporaryDirectory() as tmp:
            for plot in _plots(spec, model, x_eval, y_eval, Path(tmp)):
                mlflow.log_artifact(str(plot), artifact_path="plots")

        example = x_train.head(5)
        signature = infer_signature(example, model.predict(example))
        info = mlflow.sklearn.log_model(model, name="model", signature=signature, input_example=example,
                                        serialization_format="skops", skops_trusted_types=trusted_types(spec),
                                        pip_requirements=model_requirements(),
                                        tags=tags, metadata=serving_metadata(spec, model, x_train))
        _log_fast_path(spec, model, x_train, _bounded(x_eval, y_eval, PARITY_ROWS, spec.model.seed)[0],
                       info.model_id)
        log.info("candidate: %s %s = %.4f on the hold-out slice (cv %.4f); model %s",
                 spec.name, spec.evaluation.metric, holdout, cv_score, info.model_uri)
    return TrainResult(pipeline=spec.name, run_id=run.info.run_id, experiment_id=experiment_id,
                       model_uri=info.model_uri,
                       metric=spec.evaluation.metric, holdout_score=holdout, cv_score=cv_score,
                       fingerprint=manifest["fingerprint"], window_start=start.isoformat(),
                       window_end=end.isoformat())
