"""Resolve a model URI into a self-contained model folder the server (or an image) can hold.

``models:/<name>@<alias>`` and ``models:/<name>/<version>`` are looked up in the MLflow registry,
downloaded once into ``<cache>/<name>/v<version>/`` (renamed into place when complete), and get a
``serving.json`` with the registry's view: name, version, run id, data fingerprint and window, code
version, version tags. A path to a model folder is used as it is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlcycle.errors import RegistryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None
    version: str | None


def parse_model_uri(uri: str) -> ModelRef | None:
    """``models:/name@alias`` or ``models:/name/version``; None for anything else (a folder)."""
    if not uri.startswith("models:/"):
        return None
    rest = uri.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias and "/" not in alias:
            return ModelRef(name, alias, None)
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return ModelRef(name, None, version)
    raise RegistryError(
        f"cannot serve {uri!r}: use models:/<name>@<alias>, models:/<name>/<version> or a "
        "path to a model folder"
    )


def resolve_model(uri: str, cache: Path, tracking_uri: str | None = None) -> Path:
    """The model folder for ``uri``, downloaded into ``cache`` when it comes from the registry."""
    ref = parse_model_uri(uri)
    if ref is None:
        folder = Path(uri).expanduser().resolve()
        if not (folder / "MLmodel").is_file():
            raise RegistryError(
                f"{folder} is not a model folder (no MLmodel file): pass models:/<name>@<alias>, "
                "models:/<name>/<version>, or the folder of a downloaded model"
            )
        return folder

    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient()
    try:
        mv = (
            client.get_model_version_by_alias(ref.name, ref.alias)
            if ref.alias
            else client.get_model_version(ref.name, ref.version)
        )
    except MlflowException as exc:
        raise RegistryError(
            f"{uri} is not in the registry at {mlflow.get_registry_uri()}: {exc.message}. "
            "Train and register a model first (make run)"
        ) from exc
    folder = cache / ref.name / f"v{mv.version}"
    info = {
        "name": ref.name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "model_uri": f"models:/{ref.name}/{mv.version}",
        "requested_uri": uri,
        "fingerprint": mv.tags.get("mlcycle.data_fingerprint"),
        "window_start": mv.tags.get("mlcycle.window_start"),
        "window_end": mv.tags.get("mlcycle.window_end"),
        "code_version": mv.tags.get("mlcycle.code_version"),
        "tags": dict(mv.tags),
        "aliases": list(getattr(mv, "aliases", []) or []),
    }
    if (folder / "MLmodel").is_file() and (folder / "serving.json").is_file():
        cached = json.loads((folder / "serving.json").read_text())
        if cached.get("run_id") == mv.run_id:
            log.info("%s is version %s, already in %s", uri, mv.version, folder)
            return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{mv.version}.", dir=folder.parent))
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{ref.name}/{mv.version}", dst_path=str(tmp)
        )
        (tmp / "serving.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s is version %s (run %s): downloaded to %s", uri, mv.version, mv.run_id, folder)
    return folder
