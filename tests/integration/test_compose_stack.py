"""The compose stack end to end: `make stack` with two Celery workers, the lifecycle through the REST API.

One stack for the module (its own project name, ports and volumes), in the order an operator meets it:

1. `make stack WORKERS=2` comes up healthy; only the workers hold the Docker socket; the API server
   mounts no data;
2. `training` triggered through Airflow's REST API v2 runs on the Celery workers, each step in a step
   container that mounts only the spec's folder (read-only); the worker running `train` is killed
   (`docker kill`) in the middle of the step: the task is retried on the other worker, the run
   succeeds, the registry holds one version, no container of the killed try is left; the store,
   MLflow's artifacts and the task logs are in the stack's SeaweedFS bucket, the workers' volume
   holds no data;
3. `deploy` puts that version behind the proxy; `/predict` answers through it and the prediction
   is logged to the bucket; Prometheus has scraped the serving slot's metrics and Airflow's
   (through the StatsD exporter);
4. `make stack-down` leaves no container, network or volume of the stack.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml

from tests.datasets import LEAN_MODEL
from tests.integration.airflow_env import free_port
from tests.integration.compose_stack import (
    LOCAL_IMAGES,
    PORT_KEYS,
    Stack,
    docker,
    have_image,
    wait,
    write_env_file,
)

pytestmark = [pytest.mark.integration, pytest.mark.docker]

PROJECT = "mlcycletest"
TRAINING, DEPLOY = "training_bikeshare", "deploy_bikeshare"
SPEC_NAME = "bikeshare.yaml"  # in the host folder MLCYCLE_SPECS_HOST_DIR, mounted read-only
STEP_TASKS = ("ingest", "validate", "build_features", "train", "evaluate", "register")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    chosen: dict[str, int] = {}
    keys = PORT_KEYS + ("PRODUCTION", "STAGING")
    while len(chosen) < len(keys):
        port = free_port()
        key = keys[len(chosen)]
        if port in chosen.values() or (key.startswith("SEAWEEDFS_") and not _bindable(port + 10000)):
            continue
        chosen[key] = port
    return chosen


@pytest.fixture(scope="module")
def specs_dir(tmp_path_factory) -> Path:
    """The host folder of specs (MLCYCLE_SPECS_HOST_DIR), readable by the containers (uid 50000, group 0)."""
    folder = tmp_path_factory.mktemp("specs")
    for part in (folder, *folder.parents):
        if part == Path("/"):
            break
        part.chmod(part.stat().st_mode | 0o055)  # the containers run as uid 50000, group 0
    return folder


@pytest.fixture(scope="module")
def spec_path(specs_dir) -> str:
    return str(specs_dir / SPEC_NAME)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_engine, ports, specs_dir) -> Stack:
    from tests.conftest import _unavailable

    missing = [i for i in LOCAL_IMAGES if not have_image(i)]
    if missing:
        _unavailable(
            "Docker",
            f"the stack's images {missing} are missing (STACK_IMAGES=1 scripts/build-images.sh)",
            "MLCYCLE_REQUIRE_DOCKER",
        )
    env_file = write_env_file(
        tmp_path_factory.mktemp("stack") / "stack.env",
        PROJECT,
        {k: v for k, v in ports.items() if k in PORT_KEYS},
        # A dead worker's task is noticed after 30 s (Airflow's default: 300) and retried 5 s later.
        AIRFLOW_TASK_HEARTBEAT_TIMEOUT=30,
        MLCYCLE_RETRY_DELAY_SECONDS=5,
        AIRFLOW_WORKER_CONCURRENCY=2,
        MLCYCLE_SPECS_HOST_DIR=specs_dir,
    )
    stack = Stack(env_file)
    if any(stack.leftovers().values()):  # an earlier run of this module that was killed
        stack.make("stack-down")
    up = stack.make("stack", WORKERS="2")
    assert up.returncode == 0, f"make stack failed:\n{up.stdout}\n{up.stderr}"
    stack.up_output = up.stdout + up.stderr
    yield stack
    if os.environ.get("MLCYCLE_KEEP_STACK"):  # to look into a failure: `make stack-down` afterwards
        print(f"\nthe stack {PROJECT} is kept: STACK_ENV_FILE={env_file} make stack-down removes it")
    elif any(stack.leftovers().values()):
        stack.make("stack-down")


def test_the_stack_is_healthy_and_only_workers_hold_the_docker_socket(stack):
    assert "is up (2 worker(s))" in stack.up_output
    assert f"password {stack.setting('AIRFLOW_ADMIN_PASSWORD')}" in stack.up_output
    services = {}
    for c in stack.containers():
        services.setdefault(c["Config"]["Labels"]["com.docker.compose.service"], []).append(c)
    assert set(services) == {
        "postgres",
        "redis",
        "mlflow",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "worker",
        "statsd-exporter",
        "prometheus",
        "seaweedfs",
    }
    assert len(services["worker"]) == 2
    for name, containers in services.items():
        for c in containers:
            assert c["HostConfig"]["NetworkMode"] == "host", name
            if name == "airflow-init":
                assert c["State"]["Status"] == "exited" and c["State"]["ExitCode"] == 0
                continue
            assert c["State"]["Health"]["Status"] == "healthy", (name, c["State"]["Health"]["Log"][-1:])
            sockets = [m for m in c["Mounts"] if m["Source"] == "/var/run/docker.sock"]
            assert bool(sockets) == (name == "worker"), name
    # The API server reads the store from the bucket: it mounts no data volume.
    (apiserver,) = services["airflow-apiserver"]
    assert not [m for m in apiserver["Mounts"] if m["Destination"] == "/data"], apiserver["Mounts"]
    health = stack.get_json("AIRFLOW_PORT", "/api/v2/monitor/health")
    assert {k: v["status"] for k, v in health.items()} == dict.fromkeys(
        ("metadatabase", "scheduler", "triggerer", "dag_processor"), "healthy"
    ), health


def _put_spec(spec_path: str, ports: dict[str, int]) -> None:
    spec = {
        "extends": "/opt/mlcycle/include/pipelines/bikeshare.yaml",
        "model": LEAN_MODEL,
        "window": {"days": 14},
        "deploy": {
            "production_port": ports["PRODUCTION"],
            "slot_ports": [ports["SERVING_BLUE_PORT"], ports["SERVING_GREEN_PORT"]],
            "staging_port": ports["STAGING"],
            "auto_approve": True,
            # Lean: the default watch (120 s) and smoke test (500 rows) would only add minutes here.
            "watch_seconds": 5,
            "smoke_rows": 50,
            "smoke_requests": 10,
        },
    }
    Path(spec_path).write_text(yaml.safe_dump(spec))
    Path(spec_path).chmod(0o644)


def _mlflow(stack: Stack, path: str) -> dict:
    return stack.get_json("MLFLOW_PORT", path)


def test_training_runs_on_celery_workers_in_step_containers_and_survives_a_killed_worker(
    stack, ports, spec_path
):
    _put_spec(spec_path, ports)
    workers = {c["Id"][:12]: c for c in stack.service("worker")}
    run_id = stack.trigger(TRAINING, {"pipeline": spec_path}, logical_date="2011-06-30T12:00:00Z")

    def train_in_its_container():
        tis = stack.task_instances(TRAINING, run_id)
        failed = {t: ti["state"] for t, ti in tis.items() if ti["state"] in ("failed", "upstream_failed")}
        logs = "\n".join(f"--- {t}:\n{stack.task_log(TRAINING, run_id, t)}" for t in failed)
        assert not failed, f"tasks failed before `train` started: {failed}\n{logs}"
        ti = tis.get("train")
        running = stack.containers(
            f"label=io.mlcycle.namespace={PROJECT}", "label=mlcycle.step=train", all_states=False
        )
        return ti if ti and ti["state"] == "running" and running else None

    def progress():
        return sorted((t, ti["state"]) for t, ti in stack.task_instances(TRAINING, run_id).items())

    first = wait(train_in_its_container, "the train step's container", stall=240, progress=progress)
    victim = [cid for cid in workers if first["hostname"].endswith(cid)]
    assert len(victim) == 1, (first["hostname"], list(workers))
    docker("kill", victim[0])

    assert stack.follow(TRAINING, run_id, stall=300) == "success"
    tis = stack.task_instances(TRAINING, run_id)
    assert {t: tis[t]["state"] for t in STEP_TASKS} == dict.fromkeys(STEP_TASKS, "success"), tis
    (survivor,) = set(workers) - set(victim)
    # Every step ran on a Celery worker, named after its container; train's second try on the survivor.
    for task in STEP_TASKS:
        assert tis[task]["hostname"].rsplit("-", 1)[-1] in workers, (task, tis[task]["hostname"])
    assert tis["train"]["try_number"] == 2 and tis["train"]["hostname"].endswith(survivor), tis["train"]
    tries = stack.tries(TRAINING, run_id, "train")
    assert [t["hostname"].rsplit("-", 1)[-1] for t in tries] == [victim[0], survivor], tries
    # The killed worker stays down (a `docker kill` is a stop by hand), and the killed try's step
    # container did not run on beside the retry: the retry removed it.
    assert docker("inspect", "-f", "{{.State.Status}}", victim[0]).strip() == "exited"
    assert not stack.containers(f"label=io.mlcycle.namespace={PROJECT}", "label=mlcycle.step=train")
    logs = subprocess.run(["docker", "logs", survivor], capture_output=True, text=True, timeout=60)
    assert "train" in logs.stdout + logs.stderr

    # Nothing shared on a disk: each step container mounted only the spec's folder, read-only; the
    # store, MLflow's artifacts and the task logs are in the bucket; the workers' volume holds none of it.
    mounts = stack.task_log(TRAINING, run_id, "validate", tail=400)
    assert f"the step container mounts {Path(spec_path).parent} at {Path(spec_path).parent} (read-only)" in (
        mounts
    ), mounts[-3000:]
    assert any(k.startswith("store/bikeshare/validated/") for k in stack.keys("store/bikeshare/")), (
        stack.keys("store/")[:20]
    )
    assert any(k.endswith("MLmodel") for k in stack.keys("mlflow/")), stack.keys("mlflow/")[:20]
    assert any(f"dag_id={TRAINING}/" in k and "task_id=train/" in k for k in stack.keys("logs/")), stack.keys(
        "logs/"
    )[:20]
    (worker,) = [c for c in stack.service("worker") if c["State"]["Running"]]
    held = subprocess.run(
        ["docker", "exec", worker["Id"], "find", "/data", "-mindepth", "1", "-maxdepth", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "store" not in held.stdout and "mlflow" not in held.stdout, held.stdout

    # One version in the MLflow server's registry, @champion on it: nothing registered twice.
    found = _mlflow(
        stack, "/api/2.0/mlflow/model-versions/search?filter=" + urllib.parse.quote("name='bikeshare'")
    )
    assert [v["version"] for v in found["model_versions"]] == ["1"], found
    model = _mlflow(stack, "/api/2.0/mlflow/registered-models/get?name=bikeshare")["registered_model"]
    assert {a["alias"]: a["version"] for a in model["aliases"]}["champion"] == "1"


def _eval_rows(stack: Stack, spec_path: str, n: int = 20) -> list[dict]:
    script = (
        "import json, os; from mlcycle.deploy.smoke import eval_rows, latest_eval_slice; "
        "from mlcycle.storepath import store_root; "
        f"from mlcycle.spec import load_spec; spec = load_spec({spec_path!r}); "
        "store = store_root(os.environ['MLCYCLE_STORE']); "
        f"_, rows = eval_rows(latest_eval_slice(store, 'bikeshare'), spec.feature_names, {n}); "
        "print(json.dumps(rows))"
    )
    worker = [c for c in stack.service("worker") if c["State"]["Running"]][0]["Id"]
    keys = {
        "AWS_ENDPOINT_URL_S3": stack.url("SEAWEEDFS_S3_PORT"),
        "AWS_ACCESS_KEY_ID": stack.setting("S3_ACCESS_KEY"),
        "AWS_SECRET_ACCESS_KEY": stack.setting("S3_SECRET_KEY"),
        "AWS_REGION": "us-east-1",
        "PYTHONFAULTHANDLER": "1",
    }
    command = ["docker", "exec", *(a for k, v in keys.items() for a in ("-e", f"{k}={v}")), worker]
    command += ["/opt/venv/bin/python", "-c", script]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if out.returncode >= 128:
        # Killed by a signal (once, on a busy CI machine: SIGABRT at exit 134) before it printed
        # anything: a reader of the store, not the deploy under test. Say so, and read again once.
        warnings.warn(
            f"reading the evaluation rows died with exit {out.returncode}: {out.stderr[-2000:]}", stacklevel=2
        )
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_deploy_serves_the_model_behind_the_proxy_and_prometheus_scrapes_it(stack, ports, spec_path):
    run_id = stack.trigger(
        DEPLOY, {"pipeline": spec_path, "version": "", "target": "production", "auto_approve": True}
    )
    assert stack.follow(DEPLOY, run_id, stall=300) == "success"

    rows = _eval_rows(stack, spec_path)
    request = urllib.request.Request(
        f"http://127.0.0.1:{ports['PRODUCTION']}/predict",
        data=json.dumps(rows).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        answer = json.loads(resp.read())
    assert len(answer["predictions"]) == len(rows)
    # The slot mounts nothing and logs its predictions to the bucket (flushed within seconds).
    deployed = stack.containers(f"label=io.mlcycle.namespace={PROJECT}", "label=io.mlcycle.deploy=1")
    slots = [c for c in deployed if c["Name"].lstrip("/") == f"{PROJECT}-bikeshare-blue"]
    assert slots and not slots[0]["Mounts"], [(c["Name"], c["Mounts"]) for c in deployed]
    wait(lambda: stack.keys("store/bikeshare/predictions/"), "the prediction log in the bucket", stall=60)

    served = 'mlcycle_requests_total{job="serving",endpoint="/predict",status="200"}'
    scraped = wait(lambda: stack.prometheus(served), "Prometheus to scrape the serving slot", stall=60)
    assert float(scraped[0]["value"][1]) >= 1, scraped
    airflow = wait(
        lambda: stack.prometheus('{job="airflow",__name__=~"airflow_.+"}'),
        "Prometheus to scrape Airflow's StatsD metrics",
        stall=60,
    )
    assert {"airflow_scheduler_heartbeat_total"} <= {m["metric"]["__name__"] for m in airflow}

    # The lifecycle page, behind Airflow's login, takes its serving figures from that Prometheus.
    page = urllib.request.Request(
        f"{stack.url('AIRFLOW_PORT')}/mlcycle/lifecycle/bikeshare",
        headers={"Authorization": f"Bearer {stack.api().token}"},
    )
    with urllib.request.urlopen(page, timeout=30) as resp:
        html = resp.read().decode()
    assert f"Prometheus {stack.url('PROMETHEUS_PORT')} (last 1h)" in html, html[-3000:]
    assert "@production: <b><a" in html and "@champion: <b><a" in html, html[-3000:]
    # the API server reads the store (mounted read-only): the deploy state names the live slot
    assert "live slot: <b>blue</b>" in html, html[-3000:]


def test_stack_down_leaves_nothing(stack):
    assert stack.leftovers()["containers"]  # the stack, and the proxy and slot the deploy started
    down = stack.make("stack-down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": []}
