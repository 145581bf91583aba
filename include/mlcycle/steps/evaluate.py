"""evaluate: score the candidate and the current ``@champion`` on the same evaluation slice.

The candidate is *blessed* when it passes the spec's absolute threshold and is not worse than the
champion by more than the spec's tolerance. With no champion yet (the first run) only the threshold
applies, and the decision says so. A champion that cannot be loaded (its artifacts are gone, its
model file is unreadable) is judged like no champion: the threshold alone decides, and the reasons
name the version, what is missing and the command that re-points or clears ``@champion``; a registry
that does not answer still fails the step (a retry may succeed). The decision and its reasons are written to the candidate's
MLflow run (tags ``gate.*``, metrics ``gate_*``, artifact ``gate/decision.json``): the register step
reads them from there, so nothing can promote a model that this step did not bless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec
from mlcycle.steps._common import Interval, Result, training_window
from mlcycle.store import Store, read_parquet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult(Result):
    pipeline: str
    run_id: str
    experiment_id: str
    model_uri: str
    metric: str
    blessed: bool
    first_run: bool
    candidate_score: float
    champion_score: float | None
    champion_version: str | None
    reasons: list[str]


def decide(spec: PipelineSpec, candidate: float, champion: float | None) -> tuple[bool, list[str]]:
    """The gate itself, free of I/O: (blessed, reasons)."""
    ev = spec.evaluation
    better = (lambda a, b: a >= b) if ev.greater_is_better else (lambda a, b: a <= b)
    reasons = []
    passes_floor = better(candidate, ev.threshold)
    bound = "at least" if ev.greater_is_better else "at most"
    reasons.append(
        f"{ev.metric} {candidate:.4f} {'meets' if passes_floor else 'misses'} the threshold "
        f"({bound} {ev.threshold:g})"
    )
    if champion is None:
        reasons.append("no champion yet: first run, the threshold alone decides")
        return passes_floor, reasons
    # The tolerance is relative to the champion's score, towards "worse" whatever the metric's sign.
    slack = abs(champion) * ev.tolerance
    allowed = champion - slack if ev.greater_is_better else champion + slack
    keeps_up = better(candidate, allowed)
    reasons.append(
        f"champion {ev.metric} {champion:.4f} on the same slice; with tolerance {ev.tolerance:g} "
        f"the candidate must be {bound} {allowed:.4f}: {'yes' if keeps_up else 'no'}"
    )
    return passes_floor and keeps_up, reasons


def _signature_columns(model_uri: str) -> list[str]:
    """The input columns a logged model was trained on, from its signature ([] when it has none)."""
    from mlflow.models import get_model_info

    signature = get_model_info(model_uri).signature
    return list(signature.inputs.input_names()) if signature is not None else []


def unloadable_champion(spec: PipelineSpec, settings: Settings, champ, exc: BaseException) -> str:
    """One reason for the gate: which champion version cannot be loaded, what is missing, what to run."""
    name = spec.model.registered_name
    what = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return (
        f"champion version {champ.version} of {name} cannot be loaded ({type(exc).__name__}: {what}; its "
        f"artifacts at {champ.source} are missing or unreadable), so the threshold alone decides, as on a "
        f"first run. To repair the registry, re-point @champion at a version that loads: "
        f"mlcycle alias --pipeline {spec.name} --alias champion --version <version>, or clear it: "
        f"mlcycle alias --pipeline {spec.name} --alias champion --clear; a blessed candidate "
        f"registered by this run becomes the champion either way"
    )


def evaluate(
    spec: PipelineSpec,
    settings: Settings,
    interval: Interval,
    run_id: str,
    model_uri: str,
    window_days: int | None = None,
) -> EvaluateResult:
    import mlflow
    from mlflow import MlflowClient

    from mlcycle.modeling import score
    from mlcycle.tracking import champion_version, connect

    _, end = training_window(spec, interval, window_days)
    eval_df = read_parquet(Store(settings.store, spec.name).features_dir(end) / "eval.parquet")
    x_eval, y_eval = eval_df[spec.feature_names], eval_df[spec.target]
    experiment_id = connect(settings, spec)
    client = MlflowClient()

    candidate_score = score(spec, mlflow.sklearn.load_model(model_uri), x_eval, y_eval)
    champ = champion_version(client, spec.model.registered_name)
    champion_score = None
    unscorable = None
    if champ is not None:
        champion_uri = f"models:/{spec.model.registered_name}@champion"
        try:
            # Each model is scored on the columns of its own signature: a spec change that adds or drops
            # a feature must not make the champion unscorable forever (or score it on the wrong columns).
            wanted = _signature_columns(champion_uri) or spec.feature_names
            missing = [c for c in wanted if c not in eval_df.columns]
            champion_model = None if missing else mlflow.sklearn.load_model(champion_uri)
        except Exception as exc:  # noqa: BLE001 - classified below: only a lost registry is re-raised
            from mlcycle.errors import TRANSIENT, failure_class

            if failure_class(exc) == TRANSIENT:
                raise
            missing, champion_model = [], None
            unscorable = unloadable_champion(spec, settings, champ, exc)
            log.warning("gate: %s", unscorable)
        if missing:
            unscorable = (
                f"champion version {champ.version} needs column(s) {', '.join(missing)}, which this "
                f"evaluation slice no longer has (the spec changed): it cannot be scored on the same "
                f"data, so the threshold alone decides"
            )
            log.warning("gate: %s", unscorable)
        elif champion_model is not None:
            champion_score = score(spec, champion_model, eval_df[wanted], y_eval)
    blessed, reasons = decide(spec, candidate_score, champion_score)
    if unscorable:
        reasons = [reasons[0], unscorable]
    first_run = champ is None
    verdict = "BLESSED" if blessed else "NOT blessed"
    log.info("gate: candidate %s. %s", verdict, "; ".join(reasons))

    result = EvaluateResult(
        pipeline=spec.name,
        run_id=run_id,
        experiment_id=experiment_id,
        model_uri=model_uri,
        metric=spec.evaluation.metric,
        blessed=blessed,
        first_run=first_run,
        candidate_score=candidate_score,
        champion_score=champion_score,
        champion_version=str(champ.version) if champ else None,
        reasons=reasons,
    )
    with mlflow.start_run(run_id=run_id):
        metrics = {f"gate_candidate_{spec.evaluation.metric}": candidate_score}
        if champion_score is not None:
            metrics[f"gate_champion_{spec.evaluation.metric}"] = champion_score
        mlflow.log_metrics(metrics)
        mlflow.set_tags(
            {
                "gate.blessed": str(blessed).lower(),
                "gate.first_run": str(first_run).lower(),
                "gate.reason": "; ".join(reasons)[:4900],
                "gate.champion_version": result.champion_version or "none",
            }
        )
        mlflow.log_dict(result.to_dict(), "gate/decision.json")
    return result
