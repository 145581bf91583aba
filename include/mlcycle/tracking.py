"""MLflow set-up shared by the steps that talk to tracking and the registry."""

from __future__ import annotations

import logging
import os
import re
import time
from contextlib import nullcontext
from pathlib import Path

from mlcycle.errors import ServiceUnavailable
from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec
from mlcycle.store import atomic_path, locked

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
STAGING, PRODUCTION = "staging", "production"  # moved by the deploy DAG
#: The aliases the lifecycle reads and writes (the gate, the deploy DAG).
ALIASES = (CHAMPION, CHALLENGER, PRODUCTION, STAGING)


class TrackingUnavailable(ServiceUnavailable):
    """The MLflow tracking server did not answer in time."""


def bound_http_waits(timeout: float) -> None:
    """Let MLflow's HTTP client give up on an unanswered server after about ``timeout`` seconds.

    MLflow retries 7 times with exponential backoff and waits 120 s per request by default (about
    280 s for a refused connection). Two retries with short backoff, and a per-request timeout that
    fits the rest of the budget, keep a blip survivable and a dead server a quick failure. MLflow's
    own variables, when set, win. About a third of the budget is left to the backoffs and to the
    client's own work between attempts, which a busy machine stretches.
    """
    retries = 2
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout * 2 / 3 - 4) // (retries + 1))))


def connect(settings: Settings, spec: PipelineSpec) -> str:
    """Point MLflow at the configured store and make sure the pipeline's experiment exists."""
    import mlflow

    embedded = settings.tracking_uri.startswith("sqlite:///")
    if embedded:
        database = Path(settings.tracking_uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
    bound_http_waits(settings.mlflow_timeout)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    # The first touch of an embedded SQLite store creates its tables; two steps starting at once (two
    # pipelines' first runs, a backfill's first days) would both run MLflow's migrations ("table ...
    # already exists") and both create the experiment. A server serialises both itself.
    with locked(database.parent) if embedded else nullcontext():
        if embedded:
            _create_embedded_store(database, settings.artifact_root)
        return _experiment_id(settings, spec)


def _create_embedded_store(database: Path, artifact_root: str | None) -> None:
    """Create a missing embedded SQLite store under a temporary name, then rename it into place.

    MLflow's migrations take several seconds on a busy machine; a step killed during them (a lost
    worker, a killed scheduler) would leave a half-migrated database that every later step refuses
    ("table ... already exists"). Built aside and renamed, the store is either absent or whole.
    Call it holding the database folder's lock.
    """
    if database.is_file() and database.stat().st_size > 0:
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    began = time.monotonic()
    with atomic_path(database) as tmp:
        store = SqlAlchemyStore(f"sqlite:///{tmp}", artifact_root or database.parent.as_uri())
        store.engine.dispose()
    log.info("created the MLflow store %s in %.1f s", database, time.monotonic() - began)


def _experiment_id(settings: Settings, spec: PipelineSpec) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    # The client (and the REST store's modules, seconds to import on a busy machine) before the clock
    # starts: the figure in the message is the server's wait, which MLCYCLE_MLFLOW_TIMEOUT bounds.
    client = mlflow.MlflowClient()
    began = time.monotonic()
    try:
        experiment = client.get_experiment_by_name(spec.experiment)
    except (MlflowException, OSError) as exc:
        remote = settings.tracking_uri.startswith(("http://", "https://"))
        if not remote or (isinstance(exc, MlflowException) and "failed with exception" not in str(exc)):
            raise
        causes = re.findall(r"\[Errno -?\d+\][^'\")]*|[Rr]ead timed out", str(exc))
        raise TrackingUnavailable(
            f"the MLflow tracking server {settings.tracking_uri} did not answer ({causes[-1] if causes else exc}; "
            f"gave up after {time.monotonic() - began:.0f} s, MLCYCLE_MLFLOW_TIMEOUT={settings.mlflow_timeout:g}). "
            f"Start the server or fix MLFLOW_TRACKING_URI, then re-run the task"
        ) from exc
    if experiment is not None:
        return experiment.experiment_id
    location = f"{settings.artifact_root.rstrip('/')}/{spec.experiment}" if settings.artifact_root else None
    try:
        experiment_id = mlflow.create_experiment(
            spec.experiment, artifact_location=location, tags={"mlcycle.pipeline": spec.name}
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return mlflow.get_experiment_by_name(spec.experiment).experiment_id  # another step created it first
    log.info(
        "created MLflow experiment %s (artifacts in %s)",
        spec.experiment,
        location or "the tracking server's artifact store",
    )
    return experiment_id


#: Airflow run ids that name no Airflow run: steps started by hand share them, so they are never cleaned.
_NOT_AIRFLOW = ("", "manual")


#: Why a killed try's run was ended, by who ended it (the run's ``mlcycle.ended_by`` tag).
ENDED_BY_NEXT_TRY = "a later try of the same Airflow task: this try was killed before it could end its run"
ENDED_BY_CALLBACK = "the task's failure callback: its last try was killed before it could end its run"


def fail_stale_runs(
    client, experiment_id: str, dag_id: str, run_id: str, ended_by: str = ENDED_BY_NEXT_TRY
) -> list[str]:
    """Mark FAILED the runs an earlier try of this Airflow task left RUNNING; return their ids.

    A try killed with SIGKILL (the OOM killer, a lost worker) never ends its MLflow run, which then
    shows RUNNING forever. The next try of the same task finds those runs by the Airflow tags the
    step sets (``airflow.dag_id``, ``airflow.run_id``), before it starts its own; after the last
    try, the task's failure callback does the same (``mlcycle close-runs``). Airflow runs one try
    of a task at a time, so a RUNNING run of the same DAG run is a dead one. Steps run by hand
    (``manual``) are left alone: two of them may run at once.
    """
    if dag_id in _NOT_AIRFLOW or run_id in _NOT_AIRFLOW:
        return []
    quoted = run_id.replace("'", "\\'")
    stale = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`airflow.dag_id` = '{dag_id}' and tags.`airflow.run_id` = '{quoted}' "
            "and attributes.status = 'RUNNING'"
        ),
        max_results=100,
    )
    for run in stale:
        client.set_tag(run.info.run_id, "mlcycle.ended_by", ended_by)
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning(
            "marked MLflow run %s FAILED: an earlier try of %s / %s left it RUNNING (it was killed)",
            run.info.run_id,
            dag_id,
            run_id,
        )
    return [run.info.run_id for run in stale]


def champion_version(client, name: str):
    """The model version behind ``@champion``, or None when there is none yet (the first run)."""
    return alias_version(client, name, CHAMPION)


def alias_version(client, name: str, alias: str):
    """The model version behind ``@alias``, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if (
            getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
            or "not found" in str(exc).lower()
            or "does not exist" in str(exc).lower()
        ):
            return None
        raise
