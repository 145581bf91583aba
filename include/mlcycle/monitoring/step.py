"""monitor: the interval's data against the production model's training data; drift, decay, trigger.

Writes ``reports/drift/date=<start>/report.html`` (Evidently) and ``metrics.json`` next to it, records
the day's decision in the drift ledger (``reports/drift/ledger.json``), and logs the key figures to
the pipeline's monitoring experiment in MLflow (``<experiment>-monitoring``), one run per interval,
tagged with the model version it watched. The decision is one line in the log, e.g.
``drift: 3 of 5 features drifted (share 0.60 > 0.5): temp, atemp, hum; rmse 96 vs 61 at training``.

Skips (exit 99, "nothing to monitor: ..."): no data for the interval, fewer rows than
``monitoring.min_rows``, no model in production yet. Failures (exit 1, alert): the reference's
partitions are gone, a monitored feature is missing from the current data. None of them triggers a
retrain.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import pandas as pd

from mlcycle.monitoring.data import CurrentData, Reference, current_data, reference_data
from mlcycle.monitoring.decision import Figures, decay_of, decide_and_record, judge
from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec
from mlcycle.steps._common import Interval, Result
from mlcycle.steps.materialize import online_freshness
from mlcycle.store import Store, local_file, write_json, write_text
from mlcycle.timestamps import day_start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorResult(Result):
    pipeline: str
    start: str
    end: str
    status: str  # ok | drift | decay
    trigger: bool
    episode: str | None
    why: str
    line: str
    reasons: list[str]
    replayed: bool
    source: str  # predictions | validated | scoring
    rows: int
    reference_rows: int
    model_name: str
    model_version: str
    alias: str
    monitored: list[str]
    drifted: list[str]
    drift_share: float
    metric: str
    current_score: float | None
    holdout_score: float | None
    decay: float | None
    report: str
    report_relative: str
    metrics_file: str
    run_id: str
    experiment_id: str
    seconds: float
    #: History features only: the online store's age at the interval's end, and whether it is stale.
    online_store: dict | None = None


def _load_model(reference: Reference):
    import mlflow

    return mlflow.sklearn.load_model(reference.model_uri)


class _Recorded:
    """The batch predictions of ``frame`` in the shape of a fitted model, for ``modeling.score``."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        proba = [c for c in frame.columns if c.startswith("proba_")]
        self.classes_ = [c.removeprefix("proba_") for c in proba]
        self._proba = proba

    def predict(self, features: pd.DataFrame):
        return self.frame.loc[features.index, "prediction"].to_numpy()

    def predict_proba(self, features: pd.DataFrame):
        return self.frame.loc[features.index, self._proba].to_numpy()


def _predicted(spec: PipelineSpec, model, frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["prediction"] = model.predict(frame[spec.feature_names])
    return out


def monitor(spec: PipelineSpec, settings: Settings, interval: Interval) -> MonitorResult:
    began = time.perf_counter()
    store = Store(settings.store, spec.name)
    current: CurrentData = current_data(spec, store, interval.start, interval.end)
    reference = reference_data(spec, settings, store)
    labelled = current.labelled if current.labelled is not None and spec.target in current.labelled else None
    with_performance = labelled is not None and current.source in ("validated", "scoring")
    ref_frame, cur_frame = reference.frame, current.frame
    current_score = None
    if labelled is not None and current.source == "scoring":  # the predictions that were made, not new ones
        from mlcycle.modeling import score

        current_score = score(spec, _Recorded(labelled), labelled[spec.feature_names], labelled[spec.target])
        ref_frame, cur_frame = _predicted(spec, _load_model(reference), reference.frame), labelled
    elif labelled is not None:
        from mlcycle.modeling import score

        model = _load_model(reference)
        current_score = score(spec, model, labelled[spec.feature_names], labelled[spec.target])
        ref_frame, labelled = _predicted(spec, model, reference.frame), _predicted(spec, model, labelled)
        if with_performance:
            cur_frame = labelled

    from mlcycle.monitoring.report import build_report

    report = build_report(spec, ref_frame, cur_frame, with_performance)
    figures = Figures(
        drifted=report.drifted,
        monitored=len(spec.monitoring.columns),
        metric=spec.evaluation.metric,
        current_score=current_score,
        holdout_score=reference.holdout_score,
        greater_is_better=spec.evaluation.greater_is_better,
    )
    verdict = judge(figures, spec.monitoring)

    folder = store.base / "reports" / "drift" / f"date={interval.start.isoformat()}"
    report_path, metrics_path = folder / "report.html", folder / "metrics.json"
    decision = decide_and_record(
        store.base / "reports" / "drift",
        interval.start,
        verdict,
        spec.monitoring.cooldown_days,
        report=str(report_path.relative_to(store.base)),
    )
    (log.warning if verdict.drift or verdict.decay else log.info)("%s", verdict.line)
    online = online_freshness(spec, store, day_start(interval.end, spec.timezone).to_pydatetime())
    if online is not None:
        (log.warning if online["stale"] else log.info)(
            "online store of the history features: %s%s",
            online["why"],
            "; materialize the missing days (the training DAG's materialize task)" if online["stale"] else "",
        )
    log.info(
        "decision for %s: %s%s",
        interval.start,
        decision.why,
        " (recorded before: this re-run returns it unchanged)" if decision.replayed else "",
    )
    figures_doc = {
        "pipeline": spec.name,
        "start": interval.start.isoformat(),
        "end": interval.end.isoformat(),
        "source": current.source,
        "rows": len(current.frame),
        "reference_rows": len(reference.frame),
        "model": {
            "name": reference.model_name,
            "version": reference.version,
            "alias": reference.alias,
            "window_start": reference.window_start,
            "window_end": reference.window_end,
            "fingerprint": reference.fingerprint,
        },
        "columns": [dataclasses.asdict(c) for c in report.columns],
        "drifted": list(report.drifted),
        "drift_share": figures.share,
        "performance": {
            "metric": spec.evaluation.metric,
            "current": current_score,
            "holdout": reference.holdout_score,
            "decay": decay_of(figures),
        },
        "verdict": {"status": verdict.status, "line": verdict.line, "reasons": list(verdict.reasons)},
        "decision": dataclasses.asdict(decision),
        "evidently": report.metrics,
        "online_store": online,
    }
    write_text(report.html, report_path)
    write_json(figures_doc, metrics_path)
    run_id, experiment_id = _track(
        spec, settings, interval, reference, current, figures, verdict, decision, metrics_path
    )
    return MonitorResult(
        pipeline=spec.name,
        start=interval.start.isoformat(),
        end=interval.end.isoformat(),
        status=decision.status,
        trigger=decision.trigger,
        episode=decision.episode,
        why=decision.why,
        line=verdict.line,
        reasons=list(decision.reasons),
        replayed=decision.replayed,
        source=current.source,
        rows=len(current.frame),
        reference_rows=len(reference.frame),
        model_name=reference.model_name,
        model_version=reference.version,
        alias=reference.alias,
        monitored=list(spec.monitoring.columns),
        drifted=list(report.drifted),
        drift_share=figures.share,
        metric=spec.evaluation.metric,
        current_score=current_score,
        holdout_score=reference.holdout_score,
        decay=decay_of(figures),
        report=str(report_path),
        report_relative=str(report_path.relative_to(store.base)),
        metrics_file=str(metrics_path),
        run_id=run_id,
        experiment_id=experiment_id,
        seconds=round(time.perf_counter() - began, 3),
        online_store=online,
    )


def _track(
    spec, settings, interval, reference, current, figures, verdict, decision, metrics_path
) -> tuple[str, str]:
    """One MLflow run per monitored interval and model version (a re-run logs into the same run)."""
    import mlflow
    from mlflow import MlflowClient

    from mlcycle.tracking import connect

    experiment_id = connect(settings, dataclasses.replace(spec, experiment=f"{spec.experiment}-monitoring"))
    tags = {
        "mlcycle.pipeline": spec.name,
        "mlcycle.interval_start": interval.start.isoformat(),
        "mlcycle.interval_end": interval.end.isoformat(),
        "mlcycle.monitored_model": reference.model_name,
        "mlcycle.monitored_version": reference.version,
        "mlcycle.monitored_alias": reference.alias,
        "mlcycle.current_source": current.source,
        "mlcycle.decision": decision.status,
        "mlcycle.trigger": str(decision.trigger).lower(),
        "mlcycle.episode": decision.episode or "",
        "mlcycle.decision_why": decision.why[:500],
        "mlcycle.line": verdict.line[:500],
        "mlcycle.report": str(metrics_path.parent / "report.html"),
        "airflow.dag_id": settings.dag_id,
        "airflow.run_id": settings.run_id,
    }
    existing = MlflowClient().search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`mlcycle.interval_start` = '{interval.start.isoformat()}' and "
            f"tags.`mlcycle.monitored_version` = '{reference.version}'"
        ),
        max_results=1,
    )
    metrics = {
        "drift_share": figures.share,
        "drifted_features": float(len(figures.drifted)),
        "monitored_features": float(figures.monitored),
        "rows": float(len(current.frame)),
        "trigger": float(decision.trigger),
    }
    if figures.current_score is not None:
        metrics[f"current_{spec.evaluation.metric}"] = figures.current_score
    if figures.holdout_score is not None:
        metrics[f"holdout_{spec.evaluation.metric}"] = figures.holdout_score
    if (decay := decay_of(figures)) is not None:
        metrics["decay"] = decay
    with mlflow.start_run(
        run_id=existing[0].info.run_id if existing else None,
        experiment_id=experiment_id,
        run_name=f"monitor-{interval.start.isoformat()}",
        tags=tags,
    ) as run:
        mlflow.set_tags(tags)
        mlflow.log_metrics(metrics)
        with local_file(metrics_path) as local:
            mlflow.log_artifact(str(local))
    return run.info.run_id, experiment_id
