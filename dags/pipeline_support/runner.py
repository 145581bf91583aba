"""The runner seam: one factory that turns a pipeline step into an Airflow task.

``step_task("train")`` returns an operator that runs ``mlcycle train --pipeline ... --start ...
--end ...``. Which operator depends on ``MLCYCLE_RUNNER`` in the environment that parses the DAGs:

- ``local`` (default): a subprocess using the step environment's ``mlcycle`` executable
  (``MLCYCLE_STEPS_BIN``, default ``<project>/.venv-steps/bin``). Works wherever Airflow runs.
- ``docker``: a DockerOperator in the step image (see ``docker_runner``).
- ``kubernetes``: a KubernetesPodOperator in the step image (see ``kubernetes_runner``).

All share one contract (``contract``): the step writes its JSON result to the file named by
``MLCYCLE_RESULT_FILE`` (pushed to XCom as a dict), exit code 99 means "nothing to do" (the task is
skipped), any other non-zero exit fails the task with the step's own one-line error.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from pipeline_support import PROJECT_ROOT
from pipeline_support.contract import (
    RESULT_FILE_ENV,
    RESULT_FILE_NAME,
    StepCannotStart,
    interpret,
    read_result,
    task_threads,
)
from pipeline_support.links import MLflowLink, ReportLink, mlflow_url, result_report_url
from pipeline_support.object_store import object_store_env

#: Arguments every interval-keyed step receives: the run's plan, made once by the ``interval`` task.
INTERVAL_ARGS = [
    "--pipeline", "{{ ti.xcom_pull(task_ids='interval')['spec'] }}",
    "--start", "{{ ti.xcom_pull(task_ids='interval')['start'] }}",
    "--end", "{{ ti.xcom_pull(task_ids='interval')['end'] }}",
    "--window-days", "{{ ti.xcom_pull(task_ids='interval')['window_days'] or '' }}",  # empty: window.days
]
#: The spec argument of a step that is not keyed on the interval (register).
PIPELINE_ARGS = ["--pipeline", "{{ ti.xcom_pull(task_ids='interval')['spec'] }}"]

#: Lineage the steps record in MLflow: which DAG and run produced a model.
LINEAGE_ENV = {"MLCYCLE_DAG_ID": "{{ dag.dag_id }}", "MLCYCLE_RUN_ID": "{{ run_id }}"}


def steps_executable() -> Path:
    """The step environment's ``mlcycle`` (``MLCYCLE_STEPS_BIN``, default ``<project>/.venv-steps/bin``)."""
    return Path(os.environ.get("MLCYCLE_STEPS_BIN", PROJECT_ROOT / ".venv-steps" / "bin")) / "mlcycle"


def steps_home() -> str:
    """``MLCYCLE_HOME`` as a step sees it (default ``<project>/.local``)."""
    return os.environ.get("MLCYCLE_HOME", str(PROJECT_ROOT / ".local"))


class LocalStepOperator(BaseOperator):
    """Run a step command as a local subprocess in the step environment; its output streams to the log."""

    template_fields: Sequence[str] = ("command", "env")
    ui_color = "#e8f4ea"
    operator_extra_links = (MLflowLink(), ReportLink())

    def __init__(self, *, step: str, command: list[str], env: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.step = step
        self.command = command
        self.env = env or {}
        self._hook = None

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.providers.standard.hooks.subprocess import SubprocessHook

        executable = steps_executable()
        if not executable.exists():
            raise StepCannotStart(f"the step environment is missing: {executable} does not exist. Create it with "
                             f"`make setup` in {PROJECT_ROOT}, or point MLCYCLE_STEPS_BIN at its bin folder.")
        env = {**os.environ, "MLCYCLE_HOME": steps_home(), **object_store_env(),
               "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", "MLCYCLE_THREADS": task_threads(), **self.env}
        self._hook = SubprocessHook()
        with tempfile.TemporaryDirectory(prefix="mlcycle-result-") as folder:
            result_file = Path(folder) / RESULT_FILE_NAME
            env[RESULT_FILE_ENV] = str(result_file)
            result = self._hook.run_command([str(executable), *self.command], env=env, cwd=str(PROJECT_ROOT))
            step_result = read_result(result_file)
            self.report_url = result_report_url(step_result.payload)  # a failed validation links its report too
            payload = interpret(self.step, result.exit_code, step_result, result.output)
        self.mlflow_url = mlflow_url(payload)
        return payload

    def on_kill(self) -> None:
        if self._hook is not None:
            self._hook.send_sigterm()


def step_task(step: str, *, interval: bool = True, args: Sequence[str] = (), task_id: str | None = None,
              **kwargs: Any) -> BaseOperator:
    """The one place that decides how a step runs. ``args`` are extra (templated) CLI arguments."""
    command = [step, *(INTERVAL_ARGS if interval else PIPELINE_ARGS), *args]
    runner = os.environ.get("MLCYCLE_RUNNER", "local")
    if runner == "docker":
        from pipeline_support.docker_runner import docker_step

        return docker_step(step, command, env=dict(LINEAGE_ENV), task_id=task_id or step, **kwargs)
    if runner == "kubernetes":
        from pipeline_support.kubernetes_runner import kubernetes_step

        return kubernetes_step(step, command, env=dict(LINEAGE_ENV), task_id=task_id or step, **kwargs)
    if runner != "local":
        raise ValueError(f"MLCYCLE_RUNNER={runner!r}: use `local`, `docker` or `kubernetes`")
    return LocalStepOperator(task_id=task_id or step, step=step, command=command, env=dict(LINEAGE_ENV), **kwargs)
