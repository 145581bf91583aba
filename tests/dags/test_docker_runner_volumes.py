"""The Docker runner inside a container (the compose stack's workers): volumes, specs, earlier tries."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from docker.types import Mount

from pipeline_support.docker_runner import docker_step, named_volumes


def _mounts(op) -> list[tuple[str, str, str]]:
    return sorted((m["Type"], m["Source"], m["Target"]) for m in op.mounts)


def test_folders_in_a_named_volume_are_mounted_as_that_volume(tmp_path, monkeypatch):
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    monkeypatch.setenv("MLCYCLE_HOME", str(data))
    monkeypatch.setenv("MLCYCLE_STORE", str(data / "store"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.delenv("MLCYCLE_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("MLCYCLE_DOCKER_VOLUMES", f"stack_data:{data}")
    monkeypatch.setenv("MLCYCLE_IMAGE_PATHS", str(tmp_path / "image"))
    monkeypatch.setenv("MLCYCLE_RESULT_DIR", str(data / "tmp" / "results"))
    assert named_volumes() == {data: "stack_data"}
    image_spec, volume_spec = tmp_path / "image" / "pipelines" / "a.yaml", data / "specs" / "b.yaml"
    outside_spec = outside / "c.yaml"
    for spec, expected in (
        (image_spec, [("volume", "stack_data", str(data))]),  # the image holds it: nothing to mount
        (volume_spec, [("volume", "stack_data", str(data))]),  # in the volume already
        (outside_spec, [("bind", str(outside), str(outside)), ("volume", "stack_data", str(data))]),
    ):
        op = docker_step("ingest", ["ingest", "--pipeline", str(spec)], env={}, task_id="ingest")
        op._prepare("dag/run/ingest/-1")
        assert _mounts(op) == expected, spec
        assert op.labels["mlcycle.task"] == "dag/run/ingest/-1"
        # The result folder is in the volume too: no bind mount, the step writes it at its own path.
        folder = op._mount_result_folder()
        assert folder.parent == data / "tmp" / "results"
        assert _mounts(op) == expected
        assert op.environment["MLCYCLE_RESULT_FILE"] == f"{folder}/result.json"


def test_without_volumes_the_store_and_result_folder_are_bind_mounted(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLCYCLE_RESULT_DIR", str(tmp_path / "results"))
    for key in ("MLCYCLE_DOCKER_VOLUMES", "MLCYCLE_STORE", "MLFLOW_TRACKING_URI", "MLCYCLE_ARTIFACT_ROOT"):
        monkeypatch.delenv(key, raising=False)
    op = docker_step("ingest", ["ingest"], env={}, task_id="ingest")
    op._prepare("k")
    folder = op._mount_result_folder()
    home = str(tmp_path / "home")
    assert _mounts(op) == sorted([("bind", str(folder), "/mlcycle/result"), ("bind", home, home)])
    assert op.environment["MLCYCLE_RESULT_FILE"] == "/mlcycle/result/result.json"
    assert isinstance(op.mounts[0], Mount)


def _sleeper(image: str, label: str) -> str:
    """A container that sleeps, labelled like a step container of some task try."""
    args = [
        "docker",
        "run",
        "-d",
        "--network",
        "host",
        "--label",
        label,
        "--entrypoint",
        "sleep",
        image,
        "300",
    ]
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout.strip()


@pytest.mark.docker
def test_a_retry_removes_the_container_an_earlier_try_left_running(docker_engine):
    key = f"training_x/manual__{uuid.uuid4().hex}/train/-1"
    started = _sleeper(docker_engine, f"mlcycle.task={key}")
    other = _sleeper(docker_engine, f"mlcycle.task={key}x")
    try:
        op = docker_step("train", ["train"], env={}, task_id="train")
        op._remove_earlier_tries(key)
        left = subprocess.run(
            ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=mlcycle.task={key}"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
        assert left == []
        # Another task's container (a label that merely starts the same) is left alone.
        assert subprocess.run(["docker", "inspect", other], capture_output=True, timeout=60).returncode == 0
    finally:
        subprocess.run(["docker", "rm", "-f", started, other], capture_output=True, timeout=60)
