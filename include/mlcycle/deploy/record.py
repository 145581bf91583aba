"""Which version a deploy run works on, and what the registry says afterwards.

``resolve``: the requested version (a manual run's Param, the champion-change event's extra) or,
when none is given, the version behind ``@champion``. ``record``: ``@production`` (and, after
staging, ``@staging``) point at what each environment serves; ``deploy.*`` tags on the version say
which image, when, and which DAG run put it there.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from mlcycle.deploy.slots import DeployError
from mlcycle.deploy.state import StateStore, namespace
from mlcycle.errors import NothingToDo
from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec
from mlcycle.steps._common import Result
from mlcycle.tracking import CHAMPION, PRODUCTION, STAGING

log = logging.getLogger(__name__)

TARGETS = (STAGING, PRODUCTION)


def _client(settings: Settings):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient()


def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


@dataclass(frozen=True)
class ResolveResult(Result):
    pipeline: str
    model_name: str
    version: str
    model_uri: str
    image: str
    requested: str  # what the run asked for: a version number, or "@champion"
    target: str
    auto_approve: bool
    production_version: str | None  # what production serves before this run


def resolve(
    spec: PipelineSpec, settings: Settings, version: str | None, target: str, auto_approve: bool | None
) -> ResolveResult:
    """The model version this run deploys; ``NothingToDo`` when there is no champion yet."""
    if target not in TARGETS:
        raise DeployError(f"target must be one of {', '.join(TARGETS)} (got {target!r})")
    client = _client(settings)
    name = spec.model.registered_name
    requested = (version or "").strip().lstrip("v")
    if requested:
        if not requested.isdigit():
            raise DeployError(f"version must be a model version number of {name} (got {version!r})")
        try:
            mv = client.get_model_version(name, requested)
        except Exception as exc:  # noqa: BLE001 - MLflow's generic "not found"
            raise DeployError(f"{name} has no version {requested} in the registry: {exc}") from exc
        resolved = str(mv.version)
    else:
        resolved = _alias_version(client, name, CHAMPION)
        if resolved is None:
            raise NothingToDo(f"{name} has no @{CHAMPION} yet: nothing to deploy (train a model first)")
    live = StateStore(settings.store, spec.name, settings.home).read().live_slot
    approve = spec.deploy.auto_approve if auto_approve is None else auto_approve
    log.info(
        "deploying %s version %s (%s) to %s; production serves %s",
        name,
        resolved,
        f"v{requested}" if requested else f"@{CHAMPION}",
        target,
        live.version if live else "nothing",
    )
    return ResolveResult(
        spec.name,
        name,
        resolved,
        f"models:/{name}/{resolved}",
        f"{namespace()}-serving-{spec.name}:v{resolved}",
        requested or f"@{CHAMPION}",
        target,
        approve,
        live.version if live else None,
    )


def mark_staging(spec: PipelineSpec, settings: Settings, version: str) -> None:
    """``@staging`` names what the staging environment serves."""
    _client(settings).set_registered_model_alias(spec.model.registered_name, STAGING, version)


@dataclass(frozen=True)
class RecordResult(Result):
    pipeline: str
    model_name: str
    version: str
    previous_version: str | None
    image: str
    image_id: str
    deployed_at: str
    dag_run: str
    aliases: dict[str, str | None]


def record(spec: PipelineSpec, settings: Settings, version: str, previous: str | None) -> RecordResult:
    """Move ``@production`` to ``version`` (it must be what production serves) and tag the version."""
    live = StateStore(settings.store, spec.name, settings.home).read().live_slot
    if live is None or live.version != version:
        raise DeployError(
            f"production does not serve version {version} (live: "
            f"{live.version if live else 'nothing'}): @production left where it was"
        )
    client = _client(settings)
    name = spec.model.registered_name
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    client.set_registered_model_alias(name, PRODUCTION, version)
    tags = {
        "deploy.image": live.image,
        "deploy.image_id": live.image_id,
        "deploy.deployed_at": now,
        "deploy.dag_id": settings.dag_id,
        "deploy.dag_run": settings.run_id,
        "deploy.slot": live.name,
        "deploy.previous_version": previous or "",
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    aliases = {alias: _alias_version(client, name, alias) for alias in (STAGING, PRODUCTION, CHAMPION)}
    log.info("%s: @production -> version %s (was %s); aliases now %s", name, version, previous, aliases)
    return RecordResult(
        spec.name, name, version, previous, live.image, live.image_id, now, settings.run_id, aliases
    )
