"""``mlcycle alias``: re-point or clear one of a pipeline's registry aliases.

The repair the gate names when a champion cannot be loaded (its artifacts are gone): point
``@champion`` at a version that loads, or clear it so the next blessed candidate takes it. The
alias and the version are checked against the registry first, so a typo changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from mlcycle.errors import RegistryError
from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec, closest_hint
from mlcycle.tracking import ALIASES, alias_version, connect

log = logging.getLogger(__name__)


def set_alias(spec: PipelineSpec, settings: Settings, alias: str, version: str | None) -> dict[str, Any]:
    """Point ``alias`` at ``version`` of the pipeline's registered model, or clear it (``version=None``)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if alias not in ALIASES:
        raise RegistryError(f"unknown alias {alias!r}{closest_hint(alias, ALIASES)}; nothing was changed")
    connect(settings, spec)
    client = MlflowClient()
    name = spec.model.registered_name
    try:
        versions = sorted((str(v.version) for v in client.search_model_versions(f"name = '{name}'")), key=int)
    except MlflowException as exc:
        raise RegistryError(
            f"cannot read the versions of {name} from {settings.tracking_uri}: {exc}"
        ) from exc
    if not versions:
        raise RegistryError(
            f"{name} has no registered version in {settings.tracking_uri}: nothing to point at"
        )
    current = alias_version(client, name, alias)
    before = str(current.version) if current is not None else None
    if version is None:
        if before is not None:
            client.delete_registered_model_alias(name, alias)
        log.info("@%s of %s cleared (it pointed at version %s)", alias, name, before)
        return {"model_name": name, "alias": alias, "version": None, "previous": before}
    if version not in versions:
        raise RegistryError(
            f"{name} has no version {version!r} (its versions: {', '.join(versions)}); @{alias} is unchanged"
        )
    client.set_registered_model_alias(name, alias, version)
    log.info("@%s of %s now points at version %s (it pointed at %s)", alias, name, version, before)
    return {"model_name": name, "alias": alias, "version": version, "previous": before}
