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
- Secrets come from the Airflow connection ``MLCYCLE_MLFLOW_CONN_ID`` (default ``mlflow``), when it
  exists: its login and password reach the container as ``MLFLOW_TRACKING_USERNAME`` and
  ``MLFLOW_TRACKING_PASSWORD`` through ``private_environment`` (never rendered, never logged).
- ``MLCYCLE_RESULT_DIR`` (default: the system's temporary folder): where each try's result folder
  is created. The Docker daemon must see it at the same path, as it sees the data store.
- ``MLCYCLE_IMAGE_PATHS`` (``/folder[:/folder]``, unset by default): folders the step image holds at the
  same path as the worker; a spec there is not bind-mounted (the compose stack's Airflow image sets it).
- ``MLCYCLE_DOCKER_VOLUMES`` (``volume:/folder[,...]``, unset by default): folders that live in named
  Docker volumes, for a worker that itself runs in a container (the compose stack): a folder there
  (the data store, the result folders) is reached by mounting the volume at the same path, since
  the Docker daemon cannot see the worker's own paths. Set it together with ``MLCYCLE_RESULT_DIR``
  inside such a volume.

Contract, as for the local runner (``contract``): the step's JSON result is the task's XCom value,
exit code 99 skips the task, any other failure fails it with the step's own error. The result does
not travel in the container's output (Docker does not keep the order between stdout and stderr): a
per-try temporary folder is bind-mounted at ``/mlcycle/result``, the step writes
``MLCYCLE_RESULT_FILE=/mlcycle/result/result.json`` there, and the runner reads it after the
container has exited, the way KubernetesPodOperator reads ``/airflow/xcom/return.json``.
Containers are removed whether the step succeeds or fails; their output is already in the task log.
A container is labelled with its task (``mlcycle.task``): when a worker dies in the middle of a step,
its container runs on, and the retry removes it before starting its own, so that two tries of a
step never write at the same time.
"""

from __future__ import annotations

import os
import re
import shutil
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
    RESULT_FILE_NAME,
    StepCannotStart,
    interpret,
    read_result,
    result_folder,
    task_threads,
)
from pipeline_support.links import MLflowLink, ReportLink, mlflow_url, result_report_url
from pipeline_support.object_store import object_store_env

#: How long a step waits for a Docker daemon that does not answer (one being restarted) before failing.
DAEMON_WAIT_SECONDS = 20

DEFAULT_IMAGE = "mlcycle-steps:0.1.0"
#: Where the per-try result folder is mounted inside the container.
RESULT_MOUNT = "/mlcycle/result"
PASSED_THROUGH = ("MLCYCLE_STORE", "MLFLOW_TRACKING_URI", "MLCYCLE_ARTIFACT_ROOT", "MLCYCLE_LOG_LEVEL")


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

        home = os.environ.get("MLCYCLE_HOME", str(PROJECT_ROOT / ".local"))
        env = {"MLCYCLE_HOME": home, "GX_ANALYTICS_ENABLED": "false", "MLFLOW_ENABLE_TELEMETRY": "false",
               "MLCYCLE_THREADS": task_threads()}
        env.update({k: os.environ[k] for k in PASSED_THROUGH if os.environ.get(k)})
        env.update(object_store_env())  # a store in object storage: the connection's keys, never a mount
        self.environment = {**env, **(self.environment or {})}
        # Whose container this is: `docker ps --filter label=mlcycle.home=<home>` lists one project's steps,
        # `label=io.mlcycle.namespace=<stack>` one compose stack's, `label=mlcycle.task=...` one task's tries.
        self.labels = {"mlcycle.step": self.step, "mlcycle.home": home, "mlcycle.task": task_key,
                       "io.mlcycle.namespace": os.environ.get("MLCYCLE_DEPLOY_NAMESPACE") or "mlcycle"}

        folders = {Path(home)}
        for key in PASSED_THROUGH[:3]:
            local = _local_dir(os.environ.get(key, ""))
            if local is not None and str(local) not in ("", "."):
                folders.add(local)
        # A spec given as a path outside the image (e.g. a new data set being onboarded) is mounted
        # read-only with its folder, so the container reads the same file. Not one in a named volume
        # (mounted below), nor one under MLCYCLE_IMAGE_PATHS: folders the step image holds at the same
        # path as the worker (the compose stack's workers run an image built on the step image).
        in_image = [Path(p) for p in os.environ.get("MLCYCLE_IMAGE_PATHS", "").split(":") if p]
        for arg in self.command if isinstance(self.command, list) else []:
            if not (arg.endswith((".yaml", ".yml")) and Path(arg).is_absolute()):
                continue
            spec_dir = Path(arg).parent
            if any(spec_dir.is_relative_to(root) for root in in_image) or self._mount_volume_of(spec_dir):
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
        self._check_engine()
        self._remove_earlier_tries(task_key)
        folder = self._mount_result_folder()
        try:
            try:
                output = super().execute(context)
                exit_code, tail = 0, output if isinstance(output, str) else ""
            except DockerContainerFailedSkipException as exc:
                exit_code, tail = EXIT_NOTHING_TO_DO, self._last(exc.logs)
            except DockerContainerFailedException as exc:
                exit_code, tail = self._exit_code(exc), self._last(exc.logs)
            step_result = read_result(folder / RESULT_FILE_NAME)
            self.report_url = result_report_url(step_result.payload)  # a failed validation links its report too
            payload = interpret(self.step, exit_code, step_result, tail)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.mlflow_url = mlflow_url(payload)
        return payload

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

    def _mount_result_folder(self) -> Path:
        """A fresh folder for this try's result file, mounted where the step writes it."""
        from docker.types import Mount

        folder = result_folder(os.environ.get("MLCYCLE_RESULT_DIR") or None)
        if self.user and str(self.user) != f"{os.getuid()}:{os.getgid()}":
            folder.chmod(0o777)  # the container runs as another user: let it write its result
        inside = RESULT_MOUNT
        if self._mount_volume_of(folder):  # the step sees the folder at its own path
            inside = str(folder)
        else:
            self.mounts.append(Mount(target=RESULT_MOUNT, source=str(folder), type="bind"))
        self.environment = {**(self.environment or {}), RESULT_FILE_ENV: f"{inside}/{RESULT_FILE_NAME}"}
        return folder

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
        auto_remove="force",
        do_xcom_push=True,
        skip_on_exit_code=99,
        force_pull=False,
        **kwargs,
    )
