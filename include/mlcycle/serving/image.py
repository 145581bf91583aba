"""Build the serving image of one model version: ``mlcycle serving-image --pipeline P --model-uri URI``.

The image (``docker/serving/Dockerfile``) holds the serving code and one model folder, copied in at
build time, and is labelled with the model's name, version, run id, data fingerprint and the code
version. Default tag: ``mlcycle-serving-<pipeline>:v<version>``. An existing image with that tag,
for the same model run and the same code version, is reused instead of rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mlcycle.errors import StepError
from mlcycle.settings import PACKAGE_DIR, Settings
from mlcycle.steps._common import Result

log = logging.getLogger(__name__)

REPO_ROOT = PACKAGE_DIR.parent.parent
DOCKERFILE = Path("docker") / "serving" / "Dockerfile"
LABEL_PREFIX = "io.mlcycle.model"


class ImageBuildError(StepError):
    """The serving image could not be built; the message says why."""


@dataclass(frozen=True)
class ImageResult(Result):
    pipeline: str
    tag: str
    image_id: str
    reused: bool
    model_name: str
    model_version: str
    run_id: str | None
    fingerprint: str | None
    code_version: str
    inference_path_hint: str  # "onnx" when the folder holds model.onnx, else "pipeline"
    seconds: float


def _docker(*args: str, capture: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if (
        "DOCKER_BUILDKIT" not in env
        and subprocess.run(["docker", "buildx", "version"], capture_output=True, env=env).returncode != 0
    ):
        env["DOCKER_BUILDKIT"] = "0"
    return subprocess.run(["docker", *args], capture_output=capture, text=True, env=env, timeout=timeout)


def _labels(tag: str) -> dict[str, str] | None:
    proc = _docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip() or "{}") or {}


def default_base_image() -> str:
    explicit = os.environ.get("MLCYCLE_SERVING_BASE_IMAGE") or os.environ.get("BASE_IMAGE")
    if explicit:
        return explicit
    for candidate in ("python:3.11-slim", "local/python-base:3.11"):
        if _docker("image", "inspect", candidate).returncode == 0:
            return candidate
    return "python:3.11-slim"


def build_serving_image(
    pipeline: str,
    model_dir: Path,
    settings: Settings,
    tag: str | None = None,
    base_image: str | None = None,
    force: bool = False,
) -> ImageResult:
    started = time.perf_counter()
    info_path = model_dir / "serving.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    name, version = str(info.get("name") or pipeline), str(info.get("version") or "0")
    tag = tag or f"mlcycle-serving-{pipeline}:v{version}"
    code_version = settings.code_version
    labels = {
        f"{LABEL_PREFIX}.name": name,
        f"{LABEL_PREFIX}.version": version,
        f"{LABEL_PREFIX}.run_id": str(info.get("run_id") or ""),
        f"{LABEL_PREFIX}.fingerprint": str(info.get("fingerprint") or ""),
        f"{LABEL_PREFIX}.uri": str(info.get("model_uri") or model_dir),
        "io.mlcycle.pipeline": pipeline,
        "org.opencontainers.image.revision": code_version,
    }
    hint = "onnx" if (model_dir / "model.onnx").is_file() else "pipeline"

    def result(image_id: str, reused: bool, seconds: float) -> ImageResult:
        return ImageResult(
            pipeline,
            tag,
            image_id,
            reused,
            name,
            version,
            info.get("run_id"),
            info.get("fingerprint"),
            code_version,
            hint,
            seconds,
        )

    existing = _labels(tag)
    if not force and existing is not None and all(existing.get(k) == v for k, v in labels.items()):
        image_id = _docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
        log.info(
            "reusing %s (%s): same model run %s and code %s",
            tag,
            image_id[:19],
            labels[f"{LABEL_PREFIX}.run_id"],
            code_version,
        )
        return result(image_id, True, round(time.perf_counter() - started, 2))
    if not (REPO_ROOT / DOCKERFILE).is_file():
        raise ImageBuildError(
            f"no {DOCKERFILE} under {REPO_ROOT}: build serving images from a checkout of the "
            "repository (the step image does not carry the Dockerfiles)"
        )
    base = base_image or default_base_image()
    with tempfile.TemporaryDirectory(prefix="mlcycle-serving-build-") as tmp:
        ctx = Path(tmp)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(REPO_ROOT / "docker" / "serving", ctx / "docker" / "serving")
        shutil.copy2(REPO_ROOT / "pyproject.toml", ctx / "pyproject.toml")
        shutil.copytree(PACKAGE_DIR, ctx / "include" / "mlcycle", ignore=ignore)
        shutil.copytree(model_dir, ctx / "model", ignore=ignore)
        args = [
            "build",
            "--network",
            "host",
            "-f",
            str(ctx / DOCKERFILE),
            "-t",
            tag,
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            f"CODE_VERSION={code_version}",
        ]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        log.info("building %s on %s for %s version %s (code %s)", tag, base, name, version, code_version)
        proc = _docker(*args, str(ctx))
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise ImageBuildError(f"docker build of {tag} failed (exit {proc.returncode}):\n{tail}")
    image_id = _docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    seconds = round(time.perf_counter() - started, 2)
    log.info("built %s (%s) in %.1f s", tag, image_id[:19], seconds)
    return result(image_id, False, seconds)
