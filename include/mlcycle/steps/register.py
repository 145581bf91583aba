"""register: the candidate becomes a model version with ``@challenger``; ``@champion`` moves only if blessed.

The gate decision is read from the candidate's MLflow run (written by evaluate), never from a
command-line flag. Each version is tagged with where it came from: data window, data fingerprint,
code version, and the Airflow DAG and run. Re-running for the same MLflow run reuses its version.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlcycle.errors import RegistryError
from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec
from mlcycle.steps._common import Result
from mlcycle.tracking import CHALLENGER, CHAMPION

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterResult(Result):
    pipeline: str
    model_name: str
    version: str
    blessed: bool
    champion_version: str | None
    previous_champion_version: str | None
    aliases: list[str]


def register(spec: PipelineSpec, settings: Settings, run_id: str, model_uri: str) -> RegisterResult:
    from mlflow import MlflowClient

    from mlcycle.tracking import champion_version, connect

    connect(settings, spec)
    client = MlflowClient()
    run = client.get_run(run_id)
    blessed_tag = run.data.tags.get("gate.blessed")
    if blessed_tag not in ("true", "false"):
        raise RegistryError(f"run {run_id} has no gate decision (tag gate.blessed): run the evaluate step "
                            "before register")
    blessed = blessed_tag == "true"
    name = spec.model.registered_name
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises its generic exception for "not found"
        client.create_registered_model(name, description=f"{spec.description}\nManaged by the mlcycle pipeline "
                                                          f"`{spec.name}`; serve `models:/{name}@{CHAMPION}`.")
    version = _version_of_run(client, name, run_id, model_uri, run)
    if version.status != "READY":
        for _ in range(60):
            version = client.get_model_version(name, version.version)
            if version.status == "READY":
                break
            time.sleep(1)
        else:
            raise RegistryError(f"model version {version.version} of {name} did not become READY in 60 s")
    # Lineage of the registration itself: which Airflow run registered it.
    client.set_model_version_tag(name, version.version, "airflow.registered_by_run_id", settings.run_id)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    previous = champion_version(client, name)
    aliases = [CHALLENGER]
    if blessed:
        client.set_registered_model_alias(name, CHAMPION, version.version)
        aliases.append(CHAMPION)
        log.info("%s version %s is now @champion (was %s)", name, version.version,
                 previous.version if previous else "none: first champion")
    else:
        log.info("%s version %s registered as @challenger only; @champion stays at %s", name, version.version,
                 previous.version if previous else "none")
    current = champion_version(client, name)
    return RegisterResult(pipeline=spec.name, model_name=name, version=str(version.version), blessed=blessed,
                          champion_version=str(current.version) if current else None,
                          previous_champion_version=str(previous.version) if previous else None, aliases=aliases)


#: Attempts at finding or creating the run's version when the server drops the answer.
CREATE_ATTEMPTS = 4


def _version_of_run(client, name: str, run_id: str, model_uri: str, run):
    """The model version made from ``run_id``: the one already registered, or a new one made once.

    MLflow's HTTP client retries every method, POST included: when the server stores a version and
    its answer is lost (a restart, a dropped connection), the blind retry stores a second version of
    the same run. Here the create request is sent without HTTP retries, and after a failure the
    registry is searched by run id before anything is sent again, so a lost answer finds the version
    it made.
    """
    from mlflow.exceptions import MlflowException

    tags = {k: v for k, v in run.data.tags.items() if k.startswith(("mlcycle.", "airflow.", "gate."))}
    # A logged model's URI (models:/m-...) must come with its model id: a tracking server
    # rejects it as a bare source, as mlflow.register_model knows too.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    failure: Exception | None = None
    for attempt in range(CREATE_ATTEMPTS):
        try:
            existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        except (MlflowException, OSError) as exc:  # the server is still away: wait, then look again
            failure = exc
            time.sleep(2 ** attempt)
            continue
        if existing:
            version = min(existing, key=lambda v: int(v.version))
            log.info("run %s is already version %s of %s: reusing it", run_id, version.version, name)
            return version
        try:
            with _no_http_retries():
                return client.create_model_version(name, source=model_uri, run_id=run_id, tags=tags,
                                                   model_id=model_id,
                                                   description=run.data.tags.get("gate.reason", ""))
        except (MlflowException, OSError) as exc:
            failure = exc
            log.warning("creating a version of %s for run %s failed (%s); looking it up before trying again",
                        name, run_id, str(exc).splitlines()[0][:200])
            time.sleep(2 ** attempt)
    raise RegistryError(f"could not register run {run_id} as a version of {name} after {CREATE_ATTEMPTS} "
                        f"attempts ({failure}); check the MLflow server, then re-run the task") from failure


@contextmanager
def _no_http_retries() -> Iterator[None]:
    """MLflow's HTTP client without its own retries (it reads the variable on every request)."""
    key = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    saved = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved
