"""Serving containers: start one version on a port, wait until it is ready, stop it.

Every container uses the host network and listens on 127.0.0.1 only. A slot's container gets the
pipeline's store (mounted when it is a folder; its address and the ``AWS_*`` settings when it is in
object storage, nothing mounted), so its prediction log lands where monitoring reads it; the
staging container logs nothing (its traffic is the smoke test's, not the clients'). A model with
history features reads the online store in every container, staging included: Redis by its URL, the
SQLite file by its folder mounted read-only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mlcycle.deploy.state import namespace
from mlcycle.errors import StepError
from mlcycle.serving.online import ONLINE_ENV
from mlcycle.storepath import StorePath, is_remote

log = logging.getLogger(__name__)

#: Folders that live in named Docker volumes, ``volume:/folder[,volume:/folder]``. Set where the deploy
#: steps themselves run in a container (the compose stack's workers): the Docker daemon cannot see
#: that container's paths, so a bind mount of one would mount an empty host folder.
VOLUMES_ENV = "MLCYCLE_DOCKER_VOLUMES"


class DeployError(StepError):
    """A deploy step failed; the message says what happened and what production kept serving."""


class NotReady(DeployError):
    """A container did not become ready in time, or exited while starting."""


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise DeployError(
            f"docker {' '.join(args[:2])} failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-500:]}"
        )
    return proc


def mount(folder: Path, target: str, read_only: bool = False) -> tuple[list[str], str]:
    """``docker run`` arguments that show ``folder`` in a new container, and its path there.

    A bind mount at ``target``; a folder inside a named volume of ``MLCYCLE_DOCKER_VOLUMES`` is reached
    by mounting that whole volume at its own path instead, so the folder keeps its path.
    """
    mode = ":ro" if read_only else ""
    for item in filter(None, os.environ.get(VOLUMES_ENV, "").split(",")):
        volume, _, root = item.strip().partition(":")
        if folder.is_relative_to(root):
            return ["-v", f"{volume}:{root}{mode}"], str(folder)
    return ["-v", f"{folder}:{target}{mode}"], target


def labels() -> list[str]:
    """The labels of every container a deploy starts: ``docker ps --filter label=...`` finds them."""
    return ["--label", "io.mlcycle.deploy=1", "--label", f"io.mlcycle.namespace={namespace()}"]


def image_id(tag: str) -> str:
    proc = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    if proc.returncode != 0:
        raise DeployError(f"image {tag} does not exist: build it first (mlcycle serving-image)")
    return proc.stdout.strip()


def running(container: str) -> bool:
    proc = docker("container", "inspect", "--format", "{{.State.Running}}", container, check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def restarts(container: str) -> int:
    """How many times Docker has restarted ``container`` after its process died (0 when unknown)."""
    proc = docker("container", "inspect", "--format", "{{.RestartCount}}", container, check=False)
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip().isdigit() else 0


def remove(container: str) -> None:
    """Stop (SIGTERM, then after 20 s SIGKILL) and remove ``container``; nothing when it does not exist."""
    if docker("container", "inspect", container, check=False).returncode != 0:
        return
    docker("stop", "--time", "20", container, check=False, timeout=60)
    docker("rm", "-f", container, check=False)
    log.info("removed container %s", container)


def logs_tail(container: str, lines: int = 15) -> str:
    proc = docker("logs", "--tail", str(lines), container, check=False)
    return (proc.stdout + proc.stderr).strip()


@dataclass(frozen=True)
class Started:
    container: str
    port: int
    image: str
    image_id: str
    started_at: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def online_args(location: str | None) -> list[str]:
    """``docker run`` arguments that give a container the online store at ``location``
    (``mlcycle.serving.online.locate``): a Redis URL from this process's environment (it may hold a
    password), an SQLite file through its folder, mounted read-only."""
    if location is None:
        return []
    if location.startswith("redis://"):  # only ever named by ONLINE_ENV (serving.online.locate)
        return ["-e", ONLINE_ENV]
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    volume, inside = mount(path.parent, "/var/lib/mlcycle/online", read_only=True)
    return [*volume, "-e", f"{ONLINE_ENV}={inside}/{path.name}"]


def online_location(spec, store: StorePath | None) -> str | None:
    """Where the servers of ``spec``'s models read history features (None: the spec has none)."""
    if not spec.history:
        return None
    from mlcycle.feature_store import serving_history
    from mlcycle.serving.online import OnlineStoreError, locate

    try:
        return locate(serving_history(spec), None if store is None or is_remote(store) else str(store))
    except OnlineStoreError as exc:
        raise DeployError(str(exc)) from exc


def start(
    container: str, image: str, port: int, workers: int, store: StorePath | None, online: str | None = None
) -> Started:
    """Replace ``container`` by a new one serving ``image`` on 127.0.0.1:``port``; ``online``: where its
    model's history features are (``online_location``)."""
    remove(container)
    args = [
        "run",
        "-d",
        "--name",
        container,
        "--network",
        "host",
        # A slot whose process dies (SIGKILL, out of memory) is started again by Docker; the proxy
        # sends its requests to the other slot meanwhile. A slot that is stopped stays stopped.
        "--restart",
        "on-failure",
        "--user",
        f"{os.getuid()}:{os.getgid()}",
        "-e",
        "MLCYCLE_SERVING_HOST=127.0.0.1",
        "-e",
        f"MLCYCLE_SERVING_PORT={port}",
        "-e",
        f"MLCYCLE_SERVING_WORKERS={workers}",
        *labels(),
    ]
    if store is not None and is_remote(store):
        # `-e NAME` takes the value from this process's environment: no secret on a command line.
        passed = [a for name in sorted(os.environ) if name.startswith("AWS_") for a in ("-e", name)]
        args += ["-e", f"MLCYCLE_STORE={store.as_uri()}", *passed]
    elif store is not None:
        store.mkdir(parents=True, exist_ok=True)
        volume, inside = mount(store, "/var/lib/mlcycle/store")
        args += [*volume, "-e", f"MLCYCLE_STORE={inside}"]
    else:
        args += ["-e", "MLCYCLE_SERVING_LOG=off"]
    args += online_args(online)
    docker(*args, image)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    log.info("started %s from %s on port %d", container, image, port)
    return Started(container, port, image, image_id(image), started)


def ready_version(url: str, timeout: float = 2.0) -> str | None:
    """The model version ``url``/ready reports, or None when it does not answer 200."""
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=timeout) as resp:
            if resp.status == 200:
                return str(json.loads(resp.read()).get("model_version"))
    except (urllib.error.URLError, OSError, ValueError):
        pass
    return None


def wait_ready(container: str, url: str, version: str, seconds: float) -> float:
    """Wait until ``url``/ready says yes for ``version``; the seconds it took.

    Fails early when the container exits, or when its process died and Docker restarted it (the
    ``on-failure`` policy): a server that crashes before its first ready answer (a model that does not
    load, a bad setting) crashes again on every restart, so waiting out ``seconds`` would only delay
    the verdict. The container's last log lines are in the message.
    """
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        served = ready_version(url)
        if served == version:
            return round(time.monotonic() - began, 2)
        if served is not None:
            raise NotReady(
                f"{url} is ready but serves version {served}, not {version}: another server holds the port"
            )
        if not running(container):
            raise NotReady(f"container {container} exited before it was ready:\n{logs_tail(container)}")
        if count := restarts(container):
            raise NotReady(
                f"container {container} crashed before it was ready (Docker restarted it "
                f"{count} time(s)):\n{logs_tail(container)}"
            )
        time.sleep(0.5)
    raise NotReady(
        f"container {container} was not ready on {url} within {seconds:.0f} s:\n{logs_tail(container)}"
    )
