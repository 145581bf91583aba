"""The Kubernetes runner (dags/pipeline_support/kubernetes_runner.py), without a cluster.

The factory's pod is built the way KubernetesPodOperator builds it before it calls the API server
(``build_pod_request_obj``), and validated against the Kubernetes schema where kubernetes-validate
is installed. The step contract is checked through the operator's real ``cleanup`` (which raises
the provider's own skip and failure) on pods whose step container ended as a cluster would report.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

pytest.importorskip(
    "airflow.providers.cncf.kubernetes",
    reason="apache-airflow-providers-cncf-kubernetes is not installed (MLCYCLE_RUNNER=kubernetes needs it)",
)

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator  # noqa: E402
from airflow.providers.cncf.kubernetes.utils.pod_manager import (  # noqa: E402
    EMPTY_XCOM_RESULT,
    PodLaunchFailedException,
)
from airflow.sdk import DAG  # noqa: E402
from airflow.sdk.exceptions import AirflowSkipException  # noqa: E402
from kubernetes.client import ApiClient  # noqa: E402
from kubernetes.client import models as k8s  # noqa: E402

from pipeline_support.contract import StepCannotStart, StepFailed, StepFailedPermanently  # noqa: E402
from pipeline_support.kubernetes_runner import RESULT_PATH, StepPodOperator  # noqa: E402
from pipeline_support.runner import step_task  # noqa: E402


@pytest.fixture
def k8s_env(monkeypatch):
    monkeypatch.setenv("MLCYCLE_RUNNER", "kubernetes")
    monkeypatch.setenv("MLCYCLE_STEP_IMAGE", "registry.example.org/mlcycle-steps:0.1.0")
    monkeypatch.setenv("MLCYCLE_STORE", "s3://mlcycle/store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLCYCLE_K8S_SECRETS", "mlcycle-s3, mlcycle-mlflow")
    for key in ("MLCYCLE_ARTIFACT_ROOT", "MLCYCLE_K8S_CONN_ID", "MLCYCLE_K8S_NAMESPACE", "MLCYCLE_THREADS"):
        monkeypatch.delenv(key, raising=False)


def train_task() -> StepPodOperator:
    with DAG("k8s_runner_test", start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), schedule=None):
        op = step_task("train")
    assert isinstance(op, StepPodOperator)
    return op


def pod_dict(op: StepPodOperator) -> dict[str, Any]:
    op.prepare()
    return ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))


def test_the_factory_runs_the_step_command_in_the_step_image(k8s_env):
    op = train_task()
    assert isinstance(op, KubernetesPodOperator)
    pod = pod_dict(op)
    step = next(c for c in pod["spec"]["containers"] if c["name"] == "base")
    assert step["image"] == "registry.example.org/mlcycle-steps:0.1.0"
    assert not step.get("command")  # the image's entry point: mlcycle
    assert (
        step["args"][:2] == ["train", "--pipeline"] and "--start" in step["args"] and "--end" in step["args"]
    )
    env = {e["name"]: e["value"] for e in step["env"]}
    assert env["MLCYCLE_RESULT_FILE"] == RESULT_PATH == "/airflow/xcom/return.json"
    assert env["MLCYCLE_STORE"] == "s3://mlcycle/store"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MLCYCLE_DAG_ID"] == "{{ dag.dag_id }}" and env["MLCYCLE_RUN_ID"] == "{{ run_id }}"
    assert env["MLCYCLE_THREADS"] == "1"
    # Secrets come from Kubernetes Secrets, by name, never as values in the task.
    assert [s["secretRef"]["name"] for s in step["envFrom"]] == ["mlcycle-s3", "mlcycle-mlflow"]
    assert not any(k.startswith("AWS_") for k in env)
    # The sidecar reads the result file from the shared xcom volume.
    assert {"mountPath": "/airflow/xcom", "name": "xcom"} in step["volumeMounts"]
    assert op.do_xcom_push and 99 in op.skip_on_exit_code


def test_the_step_pod_has_no_docker_socket_and_no_host_access(k8s_env):
    pod = pod_dict(train_task())
    text = json.dumps(pod)
    assert "docker.sock" not in text and "hostPath" not in text
    assert not pod["spec"].get("hostNetwork")
    assert all(not c.get("securityContext", {}).get("privileged") for c in pod["spec"]["containers"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_preparing_twice_keeps_one_of_each_variable(k8s_env, monkeypatch):
    op = train_task()
    op.prepare()
    monkeypatch.setenv("MLCYCLE_THREADS", "4")
    pod = pod_dict(op)
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert len(names) == len(set(names))
    assert {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}["MLCYCLE_THREADS"] == "1"


def test_the_step_pod_is_a_valid_kubernetes_pod(k8s_env):
    validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    validate.validate(pod_dict(train_task()), "1.35.0", strict=True)


# --- the contract, through the operator's real cleanup -------------------------------------------


class FakePodManager:
    """What the sidecar read from /airflow/xcom/return.json (its marker when there was no file)."""

    def __init__(self, text: str):
        self.text = text

    def extract_xcom(self, pod: Any, **kwargs: Any) -> str:
        return self.text


def ended_pod(exit_code: int, message: str = "") -> k8s.V1Pod:
    terminated = k8s.V1ContainerStateTerminated(exit_code=exit_code, message=message or None)
    phase = "Succeeded" if exit_code == 0 else "Failed"
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="mlcycle-train-abc", namespace="mlcycle"),
        status=k8s.V1PodStatus(
            phase=phase,
            container_statuses=[
                k8s.V1ContainerStatus(
                    name="base",
                    image="x",
                    image_id="x",
                    ready=False,
                    restart_count=0,
                    state=k8s.V1ContainerState(terminated=terminated),
                ),
            ],
        ),
    )


def run_step(monkeypatch, op: StepPodOperator, *, exit_code: int, result: str, message: str = "") -> Any:
    """Run ``execute`` with KubernetesPodOperator's own sequence past the cluster: read the result
    through the sidecar, then ``cleanup``, whose skip or failure the runner must interpret."""
    pod = ended_pod(exit_code, message)

    def fake_execute(self, context):
        xcom = self.extract_xcom(pod)
        self.cleanup(pod, pod, xcom_result=xcom, context=context)
        return xcom

    monkeypatch.setattr(KubernetesPodOperator, "execute", fake_execute)
    for name in (
        "process_pod_deletion",
        "patch_already_checked",
        "_read_pod_events",
        "_read_pod_container_states",
        "_push_xcom_with_fan_out",
        "is_istio_enabled",
    ):
        monkeypatch.setattr(KubernetesPodOperator, name, lambda *a, **k: None)
    monkeypatch.setattr(StepPodOperator, "pod_manager", FakePodManager(result), raising=False)
    return op.execute({"ti": None})


def test_a_finished_step_returns_its_result(k8s_env, monkeypatch):
    payload = {"step": "train", "run_id": "r1", "experiment_id": "1"}
    assert run_step(monkeypatch, train_task(), exit_code=0, result=json.dumps(payload)) == payload


def test_nothing_to_do_skips_with_the_steps_reason(k8s_env, monkeypatch):
    with pytest.raises(AirflowSkipException, match="nothing to do: no new partition"):
        run_step(monkeypatch, train_task(), exit_code=99, result=json.dumps({"reason": "no new partition"}))


def test_a_permanent_failure_is_not_retried_and_says_why(k8s_env, monkeypatch):
    result = {"error": "column `temp` has 37% nulls", "failure_class": "permanent"}
    with pytest.raises(StepFailedPermanently, match="exit code 1.*37% nulls") as failed:
        run_step(monkeypatch, train_task(), exit_code=1, result=json.dumps(result))
    assert failed.value.payload == result


def test_a_killed_step_is_retried(k8s_env, monkeypatch):
    with pytest.raises(StepFailed, match="killed by SIGKILL") as failed:
        run_step(monkeypatch, train_task(), exit_code=137, result=EMPTY_XCOM_RESULT)
    assert not isinstance(failed.value, StepFailedPermanently)


def test_a_crash_without_result_shows_the_last_log_line(k8s_env, monkeypatch):
    with pytest.raises(StepFailed, match="ValueError: boom"):
        run_step(
            monkeypatch,
            train_task(),
            exit_code=1,
            result=EMPTY_XCOM_RESULT,
            message="Traceback (most recent call last):\n  ...\nValueError: boom\n",
        )


def test_success_without_a_result_is_not_trusted(k8s_env, monkeypatch):
    with pytest.raises(
        StepFailed, match=f"left no result: the step wrote no result file \\({RESULT_PATH}\\)"
    ):
        run_step(monkeypatch, train_task(), exit_code=0, result=EMPTY_XCOM_RESULT)


def test_a_result_that_is_not_json_is_named_by_its_path_in_the_pod(k8s_env, monkeypatch):
    with pytest.raises(StepFailed, match=f"the result file {RESULT_PATH} is not JSON"):
        run_step(monkeypatch, train_task(), exit_code=0, result="not json")


def test_an_image_that_cannot_be_pulled_fails_at_once(k8s_env, monkeypatch):
    def no_image(self, context):
        raise PodLaunchFailedException("Image cannot be pulled, unable to start: ErrImagePull\nnot found")

    monkeypatch.setattr(KubernetesPodOperator, "execute", no_image)
    with pytest.raises(StepCannotStart, match="MLCYCLE_STEP_IMAGE"):
        train_task().execute({"ti": None})


def test_a_pod_that_found_no_node_in_time_is_retried(k8s_env, monkeypatch):
    def unscheduled(self, context):
        raise PodLaunchFailedException("Pod took too long to start")

    monkeypatch.setattr(KubernetesPodOperator, "execute", unscheduled)
    with pytest.raises(StepFailed, match="did not run to the end") as failed:
        train_task().execute({"ti": None})
    assert not isinstance(failed.value, StepFailedPermanently)


def test_every_dag_parses_with_step_pods(tmp_path):
    """The DAG files under MLCYCLE_RUNNER=kubernetes: no import error, every step task a step pod."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = f"""
import json
from airflow.dag_processing.dagbag import BundleDagBag
bag = BundleDagBag(dag_folder={str(ROOT / "dags")!r}, bundle_path={str(ROOT / "dags")!r})
pods = [t.task_type for d in bag.dags.values() for t in d.tasks if t.task_type == "StepPodOperator"]
print(json.dumps({{"errors": {{k: v[-500:] for k, v in bag.import_errors.items()}}, "pods": len(pods),
                  "dags": len(bag.dags)}}))
"""
    env = {
        **os.environ,
        "MLCYCLE_RUNNER": "kubernetes",
        "AIRFLOW_HOME": str(tmp_path),
        "MLCYCLE_STORE": "s3://mlcycle/store",
        "PYTHONPATH": f"{ROOT / 'dags'}:{ROOT / 'plugins'}",
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["errors"] == {} and found["dags"] >= 4
    assert found["pods"] >= 18, found
