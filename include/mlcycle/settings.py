"""Where things live: the one place that turns the environment into paths and URIs.

Every step reads its locations from here, so the DAG (or a person at a shell) only chooses values:
- ``MLCYCLE_HOME``: project-local state (default ``./.local``).
- ``MLCYCLE_STORE``: the partitioned data store (default ``$MLCYCLE_HOME/store``): a folder, or
  ``s3://bucket/prefix`` on S3 or a compatible server (``mlcycle.objects`` says how it is reached).
- ``MLFLOW_TRACKING_URI``: MLflow tracking and registry (default: SQLite under ``$MLCYCLE_HOME/mlflow``).
- ``MLCYCLE_ARTIFACT_ROOT``: where new MLflow experiments keep artifacts (default: a folder beside a
  local store; the server's own artifact store when tracking is a server).
- ``MLCYCLE_PIPELINES_DIR``: where pipeline specs are looked up by name (default ``include/pipelines``).
- ``MLCYCLE_DAG_ID`` / ``MLCYCLE_RUN_ID``: the Airflow run a step belongs to, recorded as lineage.
- ``MLCYCLE_MLFLOW_TIMEOUT``: seconds a step waits for an MLflow tracking server that does not
  answer before it fails (default 60; sets MLflow's HTTP retries and request timeout).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mlcycle import __version__
from mlcycle.storepath import StorePath, store_root

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_PIPELINES_DIR = PACKAGE_DIR.parent / "pipelines"


def _code_version() -> str:
    explicit = os.environ.get("MLCYCLE_CODE_VERSION")
    if explicit:
        return explicit
    try:
        sha = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


@dataclass(frozen=True)
class Settings:
    home: Path
    store: StorePath
    tracking_uri: str
    artifact_root: str | None
    pipelines_dir: Path
    dag_id: str
    run_id: str
    code_version: str
    mlflow_timeout: float = 60.0

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        home = Path(env.get("MLCYCLE_HOME", ".local")).resolve()
        mlflow_dir = home / "mlflow"
        tracking_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir / 'mlflow.db'}"
        # With a local store, artifacts go to a local folder beside it; a tracking server (http)
        # keeps them where it was told to (--artifacts-destination), unless this says otherwise.
        local = not tracking_uri.startswith(("http://", "https://", "databricks"))
        return cls(
            home=home,
            store=store_root(env.get("MLCYCLE_STORE") or home / "store"),
            tracking_uri=tracking_uri,
            artifact_root=env.get("MLCYCLE_ARTIFACT_ROOT") or ((mlflow_dir / "artifacts").as_uri() if local else None),
            pipelines_dir=_first_folder(env.get("MLCYCLE_PIPELINES_DIR")),
            dag_id=env.get("MLCYCLE_DAG_ID") or env.get("AIRFLOW_CTX_DAG_ID", "manual"),
            run_id=env.get("MLCYCLE_RUN_ID") or env.get("AIRFLOW_CTX_DAG_RUN_ID", "manual"),
            code_version=_code_version(),
            mlflow_timeout=float(env.get("MLCYCLE_MLFLOW_TIMEOUT") or 60),
        )


def _first_folder(value: str | None) -> Path:
    """Specs named (not given by path) are looked up in the first folder of ``MLCYCLE_PIPELINES_DIR``,
    which may list several folders and spec files separated by ``:`` (the DAG files read them all)."""
    folders = [Path(e) for e in (value or "").split(os.pathsep) if e.strip() and Path(e).suffix not in (".yaml", ".yml")]
    return folders[0] if folders else DEFAULT_PIPELINES_DIR
