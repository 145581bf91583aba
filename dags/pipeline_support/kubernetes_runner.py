"""The Kubernetes side of the runner seam: a step runs in a pod of its own, in the step image.

Selected with ``MLCYCLE_RUNNER=kubernetes`` (docker/kubernetes/values.yaml sets it for a deployment
with the official Helm chart and the KubernetesExecutor; docs/kubernetes.md). Needs
apache-airflow-providers-cncf-kubernetes, imported only here, so the other runners never need it.
Configured by the environment of the Airflow worker:

- ``MLCYCLE_STEP_IMAGE`` (default ``mlcycle-steps:<version>``): the step image, from a registry the
  cluster pulls from. Its entry point is ``mlcycle``: the pod's arguments are the step command.
- ``MLCYCLE_K8S_NAMESPACE`` (default: the worker pod's own namespace): where step pods run.
- ``MLCYCLE_K8S_SECRETS`` (``name[,name...]``, unset by default): Secrets whose keys become the step
  pod's environment (``envFrom``): the S3 credentials and endpoint (``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3``), MLflow's ``MLFLOW_TRACKING_USERNAME`` and
  ``MLFLOW_TRACKING_PASSWORD``. Secrets go from Kubernetes to the pod, never through Airflow: nothing
  secret is rendered, logged or kept in the task's XCom.
- ``MLCYCLE_K8S_CONN_ID`` (unset by default): an Airflow Kubernetes connection, for a worker outside
  the cluster; unset, the worker pod's service account is used (in-cluster configuration).
- ``MLCYCLE_K8S_SERVICE_ACCOUNT`` (default: the namespace's default): the step pod's service account.
- ``MLCYCLE_STEP_CPU`` (default ``1``), ``MLCYCLE_STEP_MEMORY`` (default ``2Gi``): the step pod's
  requests; memory is its limit too. ``MLCYCLE_THREADS`` (default 1) should not exceed the CPU.
- ``MLCYCLE_STORE``, ``MLFLOW_TRACKING_URI``, ``MLCYCLE_ARTIFACT_ROOT``, ``MLCYCLE_LOG_LEVEL``,
  ``MLCYCLE_ONLINE_STORE`` (a Redis URL with a password belongs in one of the Secrets instead):
  passed through. There are no local folders to share: the store is object storage
  (``s3://bucket/prefix``) and MLflow a tracking server. ``MLCYCLE_HOME`` is a scratch folder of the
  pod (an ``emptyDir``), gone with it.

Contract, as for the other runners (``contract``): the step's JSON result is the task's XCom value,
exit code 99 skips the task, any other failure fails it with the step's own error and its failure
class. The step writes ``MLCYCLE_RESULT_FILE=/airflow/xcom/return.json``, the file that
KubernetesPodOperator's sidecar reads once the step's container has ended (``do_xcom_push``), whatever
its exit code; the runner reads it with the same reader as the other runners. When a step writes no
result (a crash), the last line of its log, which Kubernetes keeps as the container's termination
message (``FallbackToLogsOnError``), stands in for its message. A pod that never starts because its
image cannot be pulled fails the task at once (``StepCannotStart``); one that waits too long for a
node is retried. Pods are deleted when the step ends; a retry after a worker died reattaches to the
pod of the earlier try (KubernetesPodOperator's ``reattach_on_restart``), so two tries of a step never
write at the same time.
"""

from __future__ import annotations

import os
from typing import Any

try:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.cncf.kubernetes.utils.pod_manager import EMPTY_XCOM_RESULT
    from kubernetes.client import models as k8s
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "MLCYCLE_RUNNER=kubernetes needs apache-airflow-providers-cncf-kubernetes in the Airflow "
        "environment; install it, or run the steps with MLCYCLE_RUNNER=local or docker"
    ) from exc

from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from pipeline_support.contract import (
    EXIT_DONE,
    EXIT_FAILED,
    EXIT_NOTHING_TO_DO,
    RESULT_FILE_ENV,
    StepCannotStart,
    StepFailed,
    StepResult,
    interpret,
    parse_result,
    task_threads,
)
from pipeline_support.links import MLflowLink, ReportLink, mlflow_url, result_report_url

DEFAULT_IMAGE = "mlcycle-steps:0.1.0"
#: Where KubernetesPodOperator's sidecar reads the task's XCom value: the step's result file.
RESULT_PATH = "/airflow/xcom/return.json"
#: The step pod's MLCYCLE_HOME: a scratch folder (emptyDir), for whatever a step keeps locally.
POD_HOME = "/mlcycle/home"
PASSED_THROUGH = (
    "MLCYCLE_STORE",
    "MLFLOW_TRACKING_URI",
    "MLCYCLE_ARTIFACT_ROOT",
    "MLCYCLE_LOG_LEVEL",
    "MLCYCLE_ONLINE_STORE",
)
#: The step image's user (docker/steps/Dockerfile): uid 50000, group 0.
STEP_UID = 50000


def step_secrets() -> list[str]:
    """``MLCYCLE_K8S_SECRETS`` as a list of Secret names."""
    return [name.strip() for name in os.environ.get("MLCYCLE_K8S_SECRETS", "").split(",") if name.strip()]


def step_environment() -> dict[str, str]:
    """The step pod's environment (secrets apart), read from the worker's at run time."""
    env = {
        "MLCYCLE_HOME": POD_HOME,
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "MLCYCLE_THREADS": task_threads(),
        "PYTHONUNBUFFERED": "1",
    }
    env.update({k: os.environ[k] for k in PASSED_THROUGH if os.environ.get(k)})
    return env


class StepPodOperator(KubernetesPodOperator):
    """KubernetesPodOperator for a pipeline step: run-time configuration, the step contract."""

    ui_color = "#e3f4f4"
    operator_extra_links = (MLflowLink(), ReportLink())

    def __init__(self, *, step: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.step = step
        self._step_result = StepResult(None)
        self._exit_code: int | None = None
        self._termination_message = ""

    def prepare(self) -> None:
        """Complete the pod's environment from the worker's: the settings, the secrets, the result file.

        Runs before each try; what the task itself gave (the lineage) wins over the worker's settings,
        the result file's path never changes.
        """
        given = (
            {k: k8s.V1EnvVar(name=k, value=v) for k, v in self.env_vars.items()}
            if isinstance(self.env_vars, dict)
            else {var.name: var for var in self.env_vars or []}
        )
        runtime = {k: v for k, v in step_environment().items() if k not in given}
        given.pop(RESULT_FILE_ENV, None)
        self.env_vars = [
            *(k8s.V1EnvVar(name=k, value=v) for k, v in runtime.items()),
            *given.values(),
            k8s.V1EnvVar(name=RESULT_FILE_ENV, value=RESULT_PATH),
        ]
        self.env_from = [
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name)) for name in step_secrets()
        ]

    def execute(self, context: Any) -> dict[str, Any]:
        # Each try builds its own pod: `airflow dags test` runs every try with this same object.
        self.pod_request_obj = self.pod = self.remote_pod = None
        self._step_result = StepResult(None, f"the step wrote no result file ({RESULT_PATH})")
        self._exit_code, self._termination_message = None, ""
        self.prepare()
        try:
            super().execute(context)
            exit_code = EXIT_DONE
        except AirflowSkipException:  # raised for skip_on_exit_code: the step's reason is in its result
            exit_code = EXIT_NOTHING_TO_DO
        except AirflowException as exc:
            if self._exit_code is None:
                raise self._not_started(exc) from exc
            exit_code = self._exit_code or EXIT_FAILED
        # A failed validation links its report too.
        self.report_url = result_report_url(self._step_result.payload)
        payload = interpret(self.step, exit_code, self._step_result, self._termination_message)
        self.mlflow_url = mlflow_url(payload)
        return payload

    def _not_started(self, exc: Exception) -> StepFailed:
        """The failure of a step whose container never ended: an image that cannot be pulled is not
        retried (nothing pushes it in between); anything else (no node free in time) is."""
        if "Image cannot be pulled" in str(exc):
            return StepCannotStart(
                f"the step image {self.image} cannot be pulled: {exc}. Push it to a registry "
                "the cluster can pull from, or set MLCYCLE_STEP_IMAGE to an image that is there."
            )
        return StepFailed(f"step `{self.step}`: its pod did not run to the end: {exc}")

    def extract_xcom(self, pod: k8s.V1Pod, **kwargs: Any) -> dict[str, Any] | None:
        """Read the step's result file through the sidecar, whatever the step's exit code.

        The text goes through the same reader as the other runners' result files (``parse_result``),
        so a missing, empty or malformed result says the same thing everywhere.
        """
        try:
            text = self.pod_manager.extract_xcom(pod, **kwargs)
        except Exception as exc:  # noqa: BLE001 - unreadable is a problem for `interpret`, not a crash here
            self._step_result = StepResult(
                None, f"the result file {RESULT_PATH} cannot be read from the pod: {exc}"
            )
            return None
        found = parse_result(None if text.rstrip() == EMPTY_XCOM_RESULT else text, RESULT_PATH)
        self._step_result = found
        return found.payload

    def cleanup(self, pod: k8s.V1Pod, remote_pod: k8s.V1Pod, *args: Any, **kwargs: Any) -> None:
        """Note how the step's container ended (its exit code, its last log line), then clean up as usual."""
        terminated = base_container_state(remote_pod, self.base_container_name)
        if terminated is not None:
            self._exit_code = terminated.exit_code
            lines = [line for line in (terminated.message or "").splitlines() if line.strip()]
            self._termination_message = lines[-1] if lines else ""
        super().cleanup(pod, remote_pod, *args, **kwargs)


def base_container_state(
    remote_pod: k8s.V1Pod | None, container: str
) -> k8s.V1ContainerStateTerminated | None:
    """The terminated state of the pod's step container, or None while it has not ended (or never started)."""
    statuses = (
        remote_pod.status.container_statuses if remote_pod is not None and remote_pod.status else None
    ) or []
    for status in statuses:
        if status.name == container and status.state is not None and status.state.terminated is not None:
            return status.state.terminated
    return None


def kubernetes_step(
    step: str, command: list[str], *, env: dict[str, str], task_id: str, **kwargs: Any
) -> StepPodOperator:
    conn_id = os.environ.get("MLCYCLE_K8S_CONN_ID") or None
    memory = os.environ.get("MLCYCLE_STEP_MEMORY", "2Gi")
    return StepPodOperator(
        task_id=task_id,
        step=step,
        name=f"mlcycle-{step}",  # with a random suffix: one pod per try
        image=os.environ.get("MLCYCLE_STEP_IMAGE", DEFAULT_IMAGE),
        image_pull_policy="IfNotPresent",
        arguments=command,  # the image's entry point is `mlcycle`
        env_vars=env,
        namespace=os.environ.get("MLCYCLE_K8S_NAMESPACE") or None,
        kubernetes_conn_id=conn_id,
        in_cluster=conn_id is None,
        service_account_name=os.environ.get("MLCYCLE_K8S_SERVICE_ACCOUNT") or None,
        labels={"app.kubernetes.io/part-of": "mlcycle", "mlcycle/step": step},
        container_resources=k8s.V1ResourceRequirements(
            requests={"cpu": os.environ.get("MLCYCLE_STEP_CPU", "1"), "memory": memory},
            limits={"memory": memory},
        ),
        volumes=[k8s.V1Volume(name="mlcycle-home", empty_dir=k8s.V1EmptyDirVolumeSource())],
        volume_mounts=[k8s.V1VolumeMount(name="mlcycle-home", mount_path=POD_HOME)],
        security_context=k8s.V1PodSecurityContext(
            run_as_user=STEP_UID, run_as_group=0, fs_group=0, run_as_non_root=True
        ),
        container_security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
        ),
        termination_message_policy="FallbackToLogsOnError",
        do_xcom_push=True,
        skip_on_exit_code=EXIT_NOTHING_TO_DO,
        on_finish_action="delete_pod",
        get_logs=True,
        deferrable=False,
        **kwargs,
    )
