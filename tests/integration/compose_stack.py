"""Drive a compose stack (docker/compose.yaml) from a test or a benchmark: up, REST API v2, down.

The stack runs under a project name and ports of its own (an env file made from docker/.env.example),
so it never meets a developer's own `make stack`. Standard library only, plus the repository's
scripts/trigger_dag.py (the REST client the CI jobs use).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location("trigger_dag", ROOT / "scripts" / "trigger_dag.py")
trigger_dag = sys.modules.setdefault("trigger_dag", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(trigger_dag)

#: The images the stack runs (scripts/build-images.sh with STACK_IMAGES=1 builds them).
LOCAL_IMAGES = (
    "mlcycle-airflow:0.1.0",
    "mlcycle-steps:0.1.0",
    "mlcycle-proxy:0.1.0",
    "mlcycle-postgres:15",
    "mlcycle-redis:7",
    "mlcycle-prometheus:2.42",
    "mlcycle-statsd-exporter:0.1",
    "mlcycle-seaweedfs:4.48",
)
PORT_KEYS = (
    "POSTGRES_PORT",
    "REDIS_PORT",
    "MLFLOW_PORT",
    "AIRFLOW_PORT",
    "SCHEDULER_HEALTH_PORT",
    "STATSD_PORT",
    "STATSD_EXPORTER_PORT",
    "PROMETHEUS_PORT",
    "GRAFANA_PORT",
    "SERVING_BLUE_PORT",
    "SERVING_GREEN_PORT",
    # SeaweedFS opens each one's gRPC port 10000 above it too.
    "SEAWEEDFS_S3_PORT",
    "SEAWEEDFS_MASTER_PORT",
    "SEAWEEDFS_VOLUME_PORT",
    "SEAWEEDFS_FILER_PORT",
)


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def have_image(image: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=60).returncode == 0
    )


def write_env_file(path: Path, project: str, ports: dict[str, int], **settings: Any) -> Path:
    """docker/.env.example with another project name, other ports and other settings."""
    values = {
        "COMPOSE_PROJECT_NAME": project,
        **{k: str(v) for k, v in ports.items()},
        **{k: str(v) for k, v in settings.items()},
    }
    lines = []
    for line in (ROOT / "docker" / ".env.example").read_text().splitlines():
        key = line.split("=", 1)[0]
        lines.append(f"{key}={values.pop(key)}" if "=" in line and key in values else line)
    lines += [f"{k}={v}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Stack:
    """One compose stack, named by its env file."""

    def __init__(self, env_file: Path):
        self.env_file = env_file
        self._api: Any = None

    # --- the stack's own commands -------------------------------------------------------------
    def make(self, target: str, **variables: str) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "STACK_ENV_FILE": str(self.env_file),
            "SKIP_BUILD": os.environ.get("SKIP_BUILD", "1"),
        }
        args = ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in variables.items())]
        return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)

    def compose(self, *args: str) -> subprocess.CompletedProcess:
        """`docker compose ARGS` on this stack (scripts/stack.sh compose)."""
        env = {**os.environ, "STACK_ENV_FILE": str(self.env_file)}
        return subprocess.run(
            ["bash", "scripts/stack.sh", "compose", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    def setting(self, key: str) -> str:
        for line in self.env_file.read_text().splitlines():
            if line.startswith(f"{key}="):
                value = line.split("=", 1)[1]
        return value

    @property
    def project(self) -> str:
        return self.setting("COMPOSE_PROJECT_NAME")

    def url(self, port_key: str) -> str:
        return f"http://127.0.0.1:{self.setting(port_key)}"

    def containers(self, *filters: str, all_states: bool = True) -> list[dict[str, Any]]:
        """`docker inspect` of the containers matching every ``label=...`` filter (default: the project's)."""
        filters = filters or (f"label=com.docker.compose.project={self.project}",)
        args = ["ps", "-q", *(["-a"] if all_states else []), *(a for f in filters for a in ("--filter", f))]
        ids = docker(*args).split()
        return json.loads(docker("inspect", *ids)) if ids else []

    def service(self, name: str) -> list[dict[str, Any]]:
        return [
            c for c in self.containers() if c["Config"]["Labels"].get("com.docker.compose.service") == name
        ]

    def leftovers(self) -> dict[str, list[str]]:
        """What of the stack exists: containers (its own, and those its workers started), networks, volumes."""
        containers = {c["Name"].lstrip("/") for c in self.containers()}
        containers |= {
            c["Name"].lstrip("/") for c in self.containers(f"label=io.mlcycle.namespace={self.project}")
        }
        networks = docker(
            "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}"
        ).split()
        volumes = [v for v in docker("volume", "ls", "-q").split() if v.startswith(f"{self.project}_")]
        return {"containers": sorted(containers), "networks": networks, "volumes": volumes}

    # --- Airflow's REST API v2 ----------------------------------------------------------------
    def api(self) -> Any:
        if self._api is None:
            api = trigger_dag.AirflowApi(self.url("AIRFLOW_PORT"), timeout=30)
            api.login(self.setting("AIRFLOW_ADMIN_USER") or "admin", self.setting("AIRFLOW_ADMIN_PASSWORD"))
            self._api = api
        return self._api

    def wait_for_dag(self, dag_id: str, stall: float = 180) -> None:
        """Until the DAG processor has parsed and serialised ``dag_id``."""
        wait(lambda: _exists(self.api(), f"/api/v2/dags/{dag_id}"), f"DAG {dag_id} to appear", stall)

    def trigger(self, dag_id: str, conf: dict, logical_date: str | None = None) -> str:
        self.wait_for_dag(dag_id)
        self.api().request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run = self.api().request(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf}
        )
        return run["dag_run_id"]

    def follow(self, dag_id: str, run_id: str, stall: float = 300) -> str:
        """The run's final state; fails when nothing moves for ``stall`` seconds while no task runs."""
        return trigger_dag.follow(self.api(), dag_id, run_id, poll=3, stall_timeout=stall)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return {t["task_id"]: t for t in self.api().request("GET", path)["task_instances"]}

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}/tries"
        return self.api().request("GET", path)["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, tail: int = 40) -> str:
        """The last lines of a task try's log, as the UI shows it (for failure messages)."""
        path = (
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
            f"/logs/{try_number}?full_content=true"
        )
        try:
            content = self.api().request("GET", path).get("content", [])
        except trigger_dag.TriggerError as exc:
            return f"(no log: {exc})"
        lines = []
        for c in content:
            if not isinstance(c, dict):
                lines.append(str(c))
                continue
            lines.append(str(c.get("event", "")))
            lines += [f"  {e.get('exc_type')}: {e.get('exc_value')}" for e in c.get("error_detail") or []]
        return "\n".join(lines[-tail:])

    # --- other services -----------------------------------------------------------------------
    def s3(self) -> Any:
        """A boto3 client of the stack's object store, with the stack's keys."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url("SEAWEEDFS_S3_PORT"),
            aws_access_key_id=self.setting("S3_ACCESS_KEY"),
            aws_secret_access_key=self.setting("S3_SECRET_KEY"),
            region_name="us-east-1",
        )

    def keys(self, prefix: str) -> list[str]:
        """Every key of the stack's bucket under ``prefix``."""
        pages = (
            self.s3()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.setting("S3_BUCKET"), Prefix=prefix)
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def get_json(self, port_key: str, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url(port_key) + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def prometheus(self, query: str) -> list[dict[str, Any]]:
        answer = self.get_json("PROMETHEUS_PORT", "/api/v1/query?query=" + urllib.parse.quote(query))
        return answer["data"]["result"]


def _exists(api: Any, path: str) -> bool:
    try:
        api.request("GET", path)
        return True
    except trigger_dag.TriggerError as exc:
        if " 404" in str(exc):
            return False
        raise


def wait(
    probe: Callable[[], Any],
    what: str,
    stall: float,
    poll: float = 2.0,
    progress: Callable[[], Any] | None = None,
) -> Any:
    """Call ``probe`` until it returns something truthy; fail after ``stall`` seconds in which neither
    that happened nor ``progress()`` (e.g. the run's task states) changed."""
    last, deadline = None, time.monotonic() + stall
    while True:
        found = probe()
        if found:
            return found
        if progress is not None and (now := progress()) != last:
            last, deadline = now, time.monotonic() + stall
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {stall:.0f} s without progress for {what} (last state: {last})")
        time.sleep(poll)
