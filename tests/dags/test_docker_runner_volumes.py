"""The Docker runner inside a container (the compose stack's workers): volumes, specs, earlier tries."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from docker.types import Mount

from pipeline_support.docker_runner import RESULT_PATH, SCRATCH_HOME, docker_step, named_volumes


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
    assert named_volumes() == {data: "stack_data"}
    image_spec, volume_spec = tmp_path / "image" / "pipelines" / "a.yaml", data / "specs" / "b.yaml"
    outside_spec = outside / "c.yaml"
    for spec in (image_spec, volume_spec, outside_spec):
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text("name: x\n")
    for spec, expected in (
        (image_spec, [("volume", "stack_data", str(data))]),  # the image holds it: nothing to mount
        (volume_spec, [("volume", "stack_data", str(data))]),  # in the volume already
        (outside_spec, [("bind", str(outside), str(outside)), ("volume", "stack_data", str(data))]),
    ):
        op = docker_step("ingest", ["ingest", "--pipeline", str(spec)], env={}, task_id="ingest")
        op._prepare("dag/run/ingest/-1")
        assert _mounts(op) == expected, spec
        assert op.labels["mlcycle.task"] == "dag/run/ingest/-1"
        # The result file stays in the container: copied out through the API, never mounted.
        assert op.environment["MLCYCLE_RESULT_FILE"] == RESULT_PATH


def test_without_volumes_the_home_is_bind_mounted(tmp_path, monkeypatch):
    monkeypatch.setenv("MLCYCLE_HOME", str(tmp_path / "home"))
    for key in ("MLCYCLE_DOCKER_VOLUMES", "MLCYCLE_STORE", "MLFLOW_TRACKING_URI", "MLCYCLE_ARTIFACT_ROOT"):
        monkeypatch.delenv(key, raising=False)
    op = docker_step("ingest", ["ingest"], env={}, task_id="ingest")
    op._prepare("k")
    home = str(tmp_path / "home")
    assert _mounts(op) == [("bind", home, home)]
    assert op.environment["MLCYCLE_RESULT_FILE"] == RESULT_PATH
    assert op.environment["MLCYCLE_HOME"] == home
    assert isinstance(op.mounts[0], Mount)


@pytest.mark.parametrize(
    ("store", "tracking", "artifacts", "mounted"),
    [
        ("s3://bucket/store", "http://127.0.0.1:5000", None, False),
        ("s3://bucket/store", "http://127.0.0.1:5000", "s3://bucket/mlflow", False),
        ("s3://bucket/store", "http://127.0.0.1:5000", "/srv/artifacts", True),  # a local artifact folder
        ("s3://bucket/store", None, None, True),  # MLflow's SQLite file in the home
        (None, "http://127.0.0.1:5000", None, True),  # the store in the home
        ("/srv/store", "http://127.0.0.1:5000", None, True),
    ],
)
def test_with_everything_remote_a_step_mounts_nothing(
    tmp_path, monkeypatch, store, tracking, artifacts, mounted
):
    """Store in object storage, MLflow a server: the step's home is a scratch folder in its container."""
    monkeypatch.setenv("MLCYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLCYCLE_DOCKER_VOLUMES", raising=False)
    for key, value in (
        ("MLCYCLE_STORE", store),
        ("MLFLOW_TRACKING_URI", tracking),
        ("MLCYCLE_ARTIFACT_ROOT", artifacts),
    ):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    op = docker_step("ingest", ["ingest", "--pipeline", "bikeshare"], env={}, task_id="ingest")
    op._prepare("k")
    assert bool(op.mounts) is mounted, _mounts(op)
    assert (op.environment["MLCYCLE_HOME"] == SCRATCH_HOME) is not mounted


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


def test_the_pipelines_folders_are_passed_on_and_mounted_read_only(tmp_path, monkeypatch):
    """A spec given by name is looked up where the worker looks: never the image's own copy."""
    specs, more, in_image = tmp_path / "specs", tmp_path / "more", tmp_path / "image" / "pipelines"
    for folder in (specs, more, in_image):
        folder.mkdir(parents=True)
    (more / "one.yaml").write_text("name: one\n")
    listed = f"{specs}:{more / 'one.yaml'}:{in_image}:{tmp_path / 'missing'}"
    monkeypatch.setenv("MLCYCLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", listed)
    monkeypatch.setenv("MLCYCLE_IMAGE_PATHS", str(tmp_path / "image"))
    for key in ("MLCYCLE_DOCKER_VOLUMES", "MLCYCLE_STORE", "MLFLOW_TRACKING_URI", "MLCYCLE_ARTIFACT_ROOT"):
        monkeypatch.delenv(key, raising=False)
    op = docker_step(
        "ingest",
        ["ingest", "--pipeline", "bikeshare", "--spare", str(specs / "x.yaml")],
        env={},
        task_id="ingest",
    )
    op._prepare("k")
    assert op.environment["MLCYCLE_PIPELINES_DIR"] == listed
    read_only = sorted((m["Source"], m["Target"]) for m in op.mounts if m.get("ReadOnly"))
    assert read_only == [(str(more), str(more)), (str(specs), str(specs))]  # once each; not the image's
