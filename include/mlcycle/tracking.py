"""MLflow set-up shared by the steps that talk to tracking and the registry."""

from __future__ import annotations

import logging

from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


def connect(settings: Settings, spec: PipelineSpec) -> str:
    """Point MLflow at the configured store and make sure the pipeline's experiment exists."""
    import mlflow

    if settings.tracking_uri.startswith("sqlite:///"):
        settings.home.joinpath("mlflow").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name(spec.experiment)
    if experiment is None:
        location = f"{settings.artifact_root.rstrip('/')}/{spec.experiment}" if settings.artifact_root else None
        experiment_id = mlflow.create_experiment(spec.experiment, artifact_location=location,
                                                 tags={"mlcycle.pipeline": spec.name})
        log.info("created MLflow experiment %s (artifacts in %s)", spec.experiment,
                 location or "the tracking server's artifact store")
        return experiment_id
    return experiment.experiment_id


def champion_version(client, name: str):
    """The model version behind ``@champion``, or None when there is none yet (the first run)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") \
                or "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise
