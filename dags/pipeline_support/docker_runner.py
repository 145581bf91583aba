"""The Docker side of the runner seam: a step runs as a DockerOperator task in the step image.

Selected with ``MLCYCLE_RUNNER=docker``. Configured by the environment of the Airflow worker,
read when the task runs (never at parse time):

- ``MLCYCLE_STEP_IMAGE`` (default ``mlcycle-steps:<version>``): built by ``make images``.
- ``MLCYCLE_DOCKER_NETWORK`` (default ``host``): the container's network mode.
- ``MLCYCLE_DOCKER_USER`` (default: the worker's uid:gid, so files in the bind-mounted store stay
  the user's own).
- ``MLCYCLE_HOME``, ``MLCYCLE_STORE``, ``MLFLOW_TRACKING_URI``, ``MLCYCLE_ARTIFACT_ROOT``: passed
  through; local folders among them are bind-mounted at the same path, so file URIs mean the same
  thing inside and outside the container.
- ``MLCYCLE_ONLINE_STORE`` (the online store of history features, e.g. the compose stack's Redis):
  passed through ``private_environment``, since a Redis URL may hold a password.
- Secrets come from the Airflow connection ``MLCYCLE_MLFLOW_CONN_ID`` (default ``mlflow``), when it
  exists: its login and password reach the container as ``MLFLOW_TRACKING_USERNAME`` and
  ``MLFLOW_TRACKING_PASSWORD`` through ``private_environment`` (never rendered, never logged).
- ``MLCYCLE_IMAGE_PATHS`` (``/folder[:/folder]``, unset by default): folders the step image holds at the
  same path as the worker; a spec there is not bind-mounted (the compose stack's Airflow image sets it).
- ``MLCYCLE_DOCKER_VOLUMES`` (``volume:/folder[,...]``, unset by default): folders that live in named
  Docker volumes, for a worker that itself runs in a container (the compose stack): a folder there
  (the data store) is reached by mounting the volume at the same path, since
  the Docker daemon cannot see the worker's own paths.

With the store in object storage (``MLCYCLE_STORE=s3://...``) and MLflow a tracking server, a step
container mounts nothing at all: its ``MLCYCLE_HOME`` is a scratch folder of its own
(``SCRATCH_HOME``), so a worker and its step containers share no disk.

Contract, as for the local runner (``contract``): the step's JSON result is the task's XCom value,
exit code 99 skips the task, any other failure fails it with the step's own error. The result does
not travel in the container's output (Docker does not keep the order between stdout and stderr): the
step writes ``MLCYCLE_RESULT_FILE=/tmp/mlcycle-result.json`` inside its container, and the runner
copies that file out through the Docker API once the container has exited (as ``docker cp`` does),
the way KubernetesPodOperator reads ``/airflow/xcom/return.json``; no folder is shared for it.
Containers are removed whether the step succeeds or fails, after that copy; their output is already
in the task log.
A container is labelled with its task (``mlcycle.task``): when a worker dies in the middle of a step,
its container runs on, and the retry removes it before starting its own, so that two tries of a
step never write at the same time.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

from airflow.providers.docker.exceptions import (
    DockerContainerFailedException,
    DockerContainerFailedSkipException,
)
from airflow.providers.docker.operators.docker import DockerOperator

from pipeline_support import PROJECT_ROOT
from pipeline_support.contract import (
    EXIT_FAILED,
    EXIT_NOTHING_TO_DO,
    RESULT_FILE_ENV,
    StepCannotStart,
    StepResult,
    interpret,
    parse_result,
    task_threads,
)
from pipeline_support.links import MLflowLink, ReportLink, mlflow_url, result_report_url
from pipeline_support.object_store import object_store_env

#: How long a step waits for a Docker daemon that does not answer (one being restarted) before failing.
DAEMON_WAIT_SECONDS = 20

DEFAULT_IMAGE = "mlcycle-steps:0.1.0"
#: Where the step writes its result inside its container (copied out after it has exited).
RESULT_PATH = "/tmp/mlcycle-result.json"  # noqa: S108 - a path inside the step's own container
#: The step's MLCYCLE_HOME when nothing of the project is on a local disk (store and MLflow remote).
SCRATCH_HOME = "/tmp/mlcycle"  # noqa: S108 - inside the step's own container
PASSED_THROUGH = ("MLCYCLE_STORE", "MLFLOW_TRACKING_URI", "MLCYCLE_ARTIFACT_ROOT", "MLCYCLE_LOG_LEVEL")


def _remote_only() -> bool:
    """The store is in object storage and MLflow is a server: a step needs no folder of the worker."""
    store = os.environ.get("MLCYCLE_STORE", "")
    artifacts = os.environ.get("MLCYCLE_ARTIFACT_ROOT", "")
    return (bool(store) and _local_dir(store) is None
            and os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://"))
            and (not artifacts or _local_dir(artifacts) is None))


def _local_dir(uri_or_path: str) -> Path | None:
    """The local folder behind a path, a file:// URI or a sqlite:/// URI; None for anything remote."""
    if uri_or_path.startswith("sqlite:///"):
        return Path(uri_or_path.removeprefix("sqlite:///")).parent
    if uri_or_path.startswith("file://"):
        return Path(uri_or_path.removeprefix("file://"))
    if "://" in uri_or_path:
        return None
    return Path(uri_or_path)


class StepDockerOperator(DockerOperator):
    """DockerOperator for a pipeline step: run-time configuration, clear errors, the step contract."""

    ui_color = "#e3eefa"
    operator_extra_links = (MLflowLink(), ReportLink())

    def __init__(self, *, step: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.step = step
        self._given_mounts = list(self.mounts)

    def _prepare(self, task_key: str) -> None:
        from docker.types import Mount

        remote_only = _remote_only()
        home = SCRATCH_HOME if remote_only else os.environ.get("MLCYCLE_HOME", str(PROJECT_ROOT / ".local"))
        env = {"MLCYCLE_HOME": home, RESULT_FILE_ENV: RESULT_PATH, "GX_ANALYTICS_ENABLED": "false", "MLFLOW_ENABLE_TELEMETRY": "false",
               "MLCYCLE_THREADS": task_threads()}
        env.update({k: os.environ[k] for k in PASSED_THROUGH if os.environ.get(k)})
        self.environment = {**env, **(self.environment or {})}
        # A store in object storage: the connection's keys, never a mount, never a rendered field.
        self._private_environment = {**self._private_environment, **object_store_env()}
        # The online store of history features (a Redis URL may hold a password): never rendered either.
        if online := os.environ.get("MLCYCLE_ONLINE_STORE", "").strip():
            self._private_environment = {**self._private_environment, "MLCYCLE_ONLINE_STORE": online}
        # Whose container this is: `docker ps --filter label=mlcycle.home=<home>` lists one project's steps,
        # `label=io.mlcycle.namespace=<stack>` one compose stack's, `label=mlcycle.task=...` one task's tries.
        self.labels = {"mlcycle.step": self.step, "mlcycle.home": home, "mlcycle.task": task_key,
                       "io.mlcycle.namespace": os.environ.get("MLCYCLE_DEPLOY_NAMESPACE") or "mlcycle"}

        folders = set() if remote_only else {Path(home)}
        for key in PASSED_THROUGH[:3]:
            local = _local_dir(os.environ.get(key, ""))
            if local is not None and str(local) not in ("", "."):
                folders.add(local)
        # A spec given as a path outside the image (e.g. a new data set being onboarded) is mounted
        # read-only with its folder, so the container reads the same file; so are the folders of
        # MLCYCLE_PIPELINES_DIR (passed on), where a spec given by name is looked up: the container must
        # not fall back to the image's own copy of a spec of that name. Not a folder in a named volume
        # (mounted below), nor one under MLCYCLE_IMAGE_PATHS: folders the step image holds at the same
        # path as the worker (the compose stack's workers run an image built on the step image).
        in_image = [Path(p) for p in os.environ.get("MLCYCLE_IMAGE_PATHS", "").split(":") if p]
        spec_dirs = [Path(arg).parent for arg in (self.command if isinstance(self.command, list) else [])
                     if arg.endswith((".yaml", ".yml")) and Path(arg).is_absolute()]
        if listed := os.environ.get("MLCYCLE_PIPELINES_DIR", "").strip():
            self.environment = {"MLCYCLE_PIPELINES_DIR": listed, **self.environment}
            entries = [Path(e) for e in listed.split(os.pathsep) if e.strip()]
            spec_dirs += [e.parent if e.suffix in (".yaml", ".yml") else e for e in entries if e.is_absolute()]
        for spec_dir in dict.fromkeys(spec_dirs):
            if (not spec_dir.is_dir() or any(spec_dir.is_relative_to(root) for root in in_image)
                    or self._mount_volume_of(spec_dir)
                    or any(m["Target"] == str(spec_dir) for m in self.mounts)):
                continue
            self.mounts.append(Mount(target=str(spec_dir), source=str(spec_dir), type="bind", read_only=True))
        for folder in sorted(folders):
            folder.mkdir(parents=True, exist_ok=True)
        folders = {f for f in folders if not self._mount_volume_of(f)}
        covered = [f for f in sorted(folders) if not any(p != f and f.is_relative_to(p) for p in folders)]
        self.mounts.extend(Mount(target=str(f), source=str(f), type="bind") for f in covered)

        conn_id = os.environ.get("MLCYCLE_MLFLOW_CONN_ID", "mlflow")
        try:
            from airflow.sdk import BaseHook

            conn = BaseHook.get_connection(conn_id)
        except Exception:  # noqa: BLE001 - no such connection: nothing secret to pass
            conn = None
        if conn is not None and conn.login:
            self._private_environment = {**self._private_environment,
                                         "MLFLOW_TRACKING_USERNAME": conn.login,
                                         "MLFLOW_TRACKING_PASSWORD": conn.password or ""}

    def _check_engine(self) -> None:
        """The engine answers (a restarting daemon gets ``DAEMON_WAIT_SECONDS``) and has the image.

        Neither failure is retried: a daemon that stays silent that long, or an image that is not
        there, is a setup problem that a retry minutes later does not fix; the alert says what to do.
        """
        deadline = time.monotonic() + DAEMON_WAIT_SECONDS
        while True:
            try:
                self.cli.ping()
                break
            except Exception as exc:  # noqa: BLE001 - whatever the SDK raises, the fix is the same
                if time.monotonic() >= deadline:
                    raise StepCannotStart(
                        f"cannot reach the Docker daemon at {self.docker_url} (waited {DAEMON_WAIT_SECONDS} s): "
                        f"{exc}. Start it (`sudo scripts/docker-engine.sh`) or run the steps locally with "
                        "MLCYCLE_RUNNER=local.") from exc
                self.log.info("the Docker daemon at %s does not answer yet (%s); trying again", self.docker_url, exc)
                time.sleep(2)
        if not self.cli.images(name=self.image):
            raise StepCannotStart(f"the step image {self.image} is not on this Docker engine: build it with "
                             "`make images` (scripts/build-images.sh), or set MLCYCLE_STEP_IMAGE to an image you have.")

    def execute(self, context: Any) -> dict[str, Any]:
        ti = context.get("ti")
        # Outside a task instance (the operator run by hand) there are no earlier tries to find.
        task_key = (f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{getattr(ti, 'map_index', -1)}" if ti is not None
                    else f"{self.task_id}/{uuid.uuid4().hex}")
        # Each try mounts its own folders: `airflow dags test` runs every try with this same object,
        # and the mounts of an earlier try (its result folder, already removed) must not come back.
        self.mounts = list(self._given_mounts)
        self._prepare(task_key)
        self.log.info("the step container mounts %s", ", ".join(
            f"{m['Source']} at {m['Target']}{' (read-only)' if m.get('ReadOnly') else ''}" for m in self.mounts
        ) or "nothing (the store and MLflow are remote)")
        self._check_engine()
        self._remove_earlier_tries(task_key)
        self.container = None
        try:
            try:
                output = super().execute(context)
                exit_code, tail = 0, output if isinstance(output, str) else ""
            except DockerContainerFailedSkipException as exc:
                exit_code, tail = EXIT_NOTHING_TO_DO, self._last(exc.logs)
            except DockerContainerFailedException as exc:
                exit_code, tail = self._exit_code(exc), self._last(exc.logs)
            step_result = self._copy_result()
            self.report_url = result_report_url(step_result.payload)  # a failed validation links its report too
            payload = interpret(self.step, exit_code, step_result, tail)
        finally:
            self._remove_container()
        self.mlflow_url = mlflow_url(payload)
        return payload

    def _copy_result(self) -> StepResult:
        """The step's result file, copied out of its stopped container (``docker cp``)."""
        from docker.errors import APIError, NotFound

        where = f"{RESULT_PATH} in the step's container"
        try:
            chunks, stat = self.cli.get_archive(self.container["Id"], RESULT_PATH)
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
                member = tar.extractfile(stat["name"])
                if member is None:
                    return StepResult(None, f"the result file {where} is not a regular file")
                text = member.read().decode("utf-8")
        except NotFound:
            text = None
        except (APIError, tarfile.TarError, UnicodeDecodeError, KeyError) as exc:
            return StepResult(None, f"the result file {where} cannot be read: {exc}")
        return parse_result(text, where)

    def _remove_container(self) -> None:
        """Remove this try's container (after its result was copied out), whatever became of it."""
        from docker.errors import NotFound

        if self.container:
            try:
                self.cli.remove_container(self.container["Id"], force=True)
            except NotFound:
                pass

    def _mount_volume_of(self, folder: Path) -> bool:
        """Mount the named volume that holds ``folder`` at its own path (once); False when none holds it."""
        from docker.types import Mount

        for root, volume in named_volumes().items():
            if folder.is_relative_to(root):
                if not any(m["Target"] == str(root) for m in self.mounts):
                    self.mounts.append(Mount(target=str(root), source=volume, type="volume"))
                return True
        return False

    def _remove_earlier_tries(self, task_key: str) -> None:
        """Remove the containers of this task's earlier tries: a worker that died left them running."""
        for container in self.cli.containers(all=True, filters={"label": f"mlcycle.task={task_key}"}):
            self.log.warning("removing container %s (%s) of an earlier try of this task, left by a worker that "
                             "stopped in the middle of the step", container["Id"][:12], container.get("Status", ""))
            self.cli.remove_container(container["Id"], force=True)

    @staticmethod
    def _exit_code(exc: Exception) -> int:
        """The container's exit code, from DockerOperator's message ``... {'StatusCode': N, ...}``."""
        found = re.search(r"'StatusCode': (\d+)", str(exc))
        return int(found.group(1)) if found else EXIT_FAILED

    @staticmethod
    def _last(logs: Any) -> str:
        lines = [str(line).strip() for line in (logs or []) if str(line).strip()]
        return lines[-1] if lines else ""


def named_volumes() -> dict[Path, str]:
    """``MLCYCLE_DOCKER_VOLUMES`` as {folder: volume name}."""
    pairs = (item.strip().partition(":") for item in os.environ.get("MLCYCLE_DOCKER_VOLUMES", "").split(","))
    return {Path(folder): volume for volume, _, folder in pairs if volume and folder}


def docker_step(step: str, command: list[str], *, env: dict[str, str], task_id: str, **kwargs: Any) -> StepDockerOperator:
    return StepDockerOperator(
        task_id=task_id,
        step=step,
        image=os.environ.get("MLCYCLE_STEP_IMAGE", DEFAULT_IMAGE),
        command=command,
        environment=env,
        network_mode=os.environ.get("MLCYCLE_DOCKER_NETWORK", "host"),
        user=os.environ.get("MLCYCLE_DOCKER_USER") or f"{os.getuid()}:{os.getgid()}",
        docker_url=os.environ.get("DOCKER_HOST", "unix://var/run/docker.sock"),
        mount_tmp_dir=False,
        mounts=[],
        auto_remove="never",  # removed by the runner once the result file is copied out
        do_xcom_push=True,
        skip_on_exit_code=99,
        force_pull=False,
        **kwargs,
    )
