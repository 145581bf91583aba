"""The deploy DAG end to end: real `airflow dags test`, a real MLflow registry, real containers, real nginx.

One Airflow home, one registry and one proxy with its two slots for the module; the tests run in
order, like an operator's week:

1. a training run that moves ``@champion`` queues exactly one deploy run; a run the gate rejects, none;
2. v1 goes to production; then v2, while a load generator sends requests through the proxy at a
   steady rate: no request fails, every answer names v1 before the switch and v2 after; the live
   slot's process is then SIGKILLed during a burst: the standby slot answers, Docker restarts it,
   and no request fails;
3. a broken v3 (its container never gets ready) leaves v2 in production and ``@production`` on v2,
   and so does a v4 whose predictions differ from the registry's (the smoke test catches it);
4. a manual rollback to v1 by Param is an instant switch to the slot that still serves it;
5. a watch-window breach (a latency budget no server meets) switches back by itself and fails the run;
6. a promotion rejected by a person in the UI (the HITL REST API here) leaves production unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import AIRFLOW_BIN, ROOT, STEPS_BIN
from tests.datasets import BIKESHARE_SPEC, LEAN_MODEL, write_spec_variant
from tests.integration.airflow_env import AirflowProject, free_port

pytestmark = [pytest.mark.integration, pytest.mark.docker]

DAG = "deploy_bikeshare"
WINDOW = {"window_days": 14}


def _ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="module")
def docker_ready() -> None:
    """A Docker engine and the base image the serving and proxy images build on."""
    from tests.conftest import _unavailable

    probe = subprocess.run(
        ["docker", "image", "inspect", "local/python-base:3.11"], capture_output=True, timeout=60
    )
    if probe.returncode != 0:
        _unavailable(
            "Docker", "no engine or no local/python-base:3.11 (make images)", "MLCYCLE_REQUIRE_DOCKER"
        )


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    production, blue, green, staging = _ports(4)
    return {"production": production, "blue": blue, "green": green, "staging": staging}


@pytest.fixture(scope="module")
def project(tmp_path_factory, docker_ready, ports):
    folder = tmp_path_factory.mktemp("pipelines")
    write_spec_variant(
        BIKESHARE_SPEC,
        folder / "bikeshare.yaml",
        model=LEAN_MODEL,
        window={"days": 14},
        deploy={
            "production_port": ports["production"],
            "slot_ports": [ports["blue"], ports["green"]],
            "staging_port": ports["staging"],
            "watch_seconds": 3,
            "ready_timeout_seconds": 60,
            "smoke_rows": 200,
            "smoke_requests": 40,
            "latency_budget_ms": 5000,
            "approval_timeout_minutes": 5,
        },
    )
    namespace = f"t{uuid.uuid4().hex[:8]}"
    project = AirflowProject.create(
        tmp_path_factory.mktemp("deploy"),
        MLCYCLE_PIPELINES_DIR=str(folder),
        MLCYCLE_DEPLOY_NAMESPACE=namespace,
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
    )
    project.spec = folder / "bikeshare.yaml"
    project.namespace = namespace
    project.runs = 0
    yield project
    stop_deployment(project, project.spec, namespace)


def stop_deployment(project: AirflowProject, spec: Path, namespace: str) -> None:
    """Stop the proxy and slots, and remove the serving images of this test's namespace."""
    subprocess.run(
        [str(STEPS_BIN / "mlcycle"), "deploy-stop", "--pipeline", str(spec)],
        env=project.env,
        capture_output=True,
        timeout=300,
    )
    images = subprocess.run(
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", f"{namespace}-serving-bikeshare"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if images:  # the tags only: the dependency layers stay in the build cache for the next run
        subprocess.run(["docker", "image", "rm", "--no-prune", *images], capture_output=True, timeout=300)


def _deploy(project: AirflowProject, conf: dict) -> tuple[dict[str, str], str]:
    """One run of the deploy DAG (its own logical date); the task states and the run's output."""
    project.runs += 1
    date = f"2012-01-{project.runs:02d}"
    proc = project.dags_test(DAG, date, conf)
    states = project.task_states(DAG, date)
    return states, proc.stdout[-8000:] + proc.stderr[-8000:]


def _status(project: AirflowProject) -> dict:
    return project.steps_cli("deploy-status", "--pipeline", str(project.spec))


def _served(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
            return json.loads(resp.read())["model_version"]
    except OSError:
        return None


def test_a_champion_change_queues_one_deploy_and_a_kept_champion_none(project, tmp_path_factory):
    project.airflow("dags", "reserialize")  # the deploy DAG is known before its asset is first emitted
    proc = project.dags_test("training_bikeshare", "2011-06-30", WINDOW)
    states = project.task_states("training_bikeshare", "2011-06-30")
    assert states["register"] == "success" and states["announce"] == "success", proc.stdout[-5000:]
    events = project.champion_events("bikeshare")
    assert events == [{"pipeline": "bikeshare", "model_name": "bikeshare", "version": "1"}]
    assert project.champion_queue("bikeshare") == [DAG]  # exactly one deploy run queued

    # v2: another model (trained on other days), which the strict gate keeps from @champion
    strict = write_spec_variant(
        project.spec,
        tmp_path_factory.mktemp("strict") / "bikeshare.yaml",
        evaluation={"threshold": 1.0, "tolerance": 0.0},
    )
    proc = project.dags_test("training_bikeshare", "2011-07-02", {"pipeline": str(strict), **WINDOW})
    states = project.task_states("training_bikeshare", "2011-07-02")
    assert states["register"] == "success" and states["announce"] == "skipped", proc.stdout[-5000:]
    assert project.champion_events("bikeshare") == events  # no second event
    assert project.champion_queue("bikeshare") == [DAG]  # still one queued run
    assert project.registry("bikeshare")["aliases"] == {"champion": "1", "challenger": "2"}


def _rows(project: AirflowProject, n: int = 50) -> list[dict]:
    return project.steps_python(f"""
        import json
        from pathlib import Path
        from mlcycle.deploy.smoke import eval_rows, latest_eval_slice
        from mlcycle.spec import load_spec
        spec = load_spec({str(project.spec)!r})
        _, rows = eval_rows(latest_eval_slice(Path({str(project.store)!r}), "bikeshare"), spec.feature_names, {n})
        print(json.dumps(rows))
    """)


def _load_generator():
    """The step package's load generator: plain standard library, loaded by path (no ML stack here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "deploy_load", ROOT / "include" / "mlcycle" / "deploy" / "load.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_v1_then_v2_under_load_without_a_failed_request(project, ports):
    load_module = _load_generator()
    states, out = _deploy(project, {"version": "", "auto_approve": True})  # empty: @champion, v1
    assert states == {
        "resolve": "success",
        "build": "success",
        "staging": "success",
        "route": "success",
        "approve": "skipped",
        "auto_approved": "success",
        "rollout": "success",
        "watch": "success",
        "record": "success",
    }, out
    assert _served(ports["production"]) == "1"

    load = load_module.Load(ports["production"], _rows(project), rate=20, threads=8).start()
    time.sleep(2)
    states, out = _deploy(project, {"version": "2", "auto_approve": True})
    time.sleep(2)
    samples = load.stop()
    assert states["record"] == "success", out
    figures = load_module.summary(samples)
    assert figures["failed"] == 0 and figures["requests"] > 100, figures
    switch = _status(project)["switches"][-1]
    assert switch["version"] == "2" and switch["reason"] == "rollout"
    # Answered before the reload began: v1. Sent after the proxy answered with v2: v2. Only requests
    # in flight during the reload (a fraction of a second) may get either.
    before = {s.version for s in samples if s.sent + s.latency < switch["began"]}
    after = {s.version for s in samples if s.sent > switch["done"]}
    overlap = [
        s.version for s in samples if switch["began"] <= s.sent + s.latency and s.sent <= switch["done"]
    ]
    assert before == {"1"} and after == {"2"}, (figures, switch, overlap)
    assert switch["done"] - switch["began"] < 5, switch

    registry = project.registry("bikeshare")
    assert registry["aliases"]["production"] == "2" and registry["aliases"]["staging"] == "2"
    tags = registry["versions"][1]["tags"]
    assert tags["deploy.previous_version"] == "1" and tags["deploy.image_id"].startswith("sha256:")
    assert tags["deploy.dag_run"].startswith("manual__") and tags["deploy.image"].endswith(
        "-serving-bikeshare:v2"
    )
    status = _status(project)
    live = status["slots"][status["live"]]
    assert live["version"] == "2" and status["production_version"] == "2"
    other = status["slots"]["green" if status["live"] == "blue" else "blue"]
    assert other["version"] == "1" and _served(other["port"]) == "1"  # drained, still up for a rollback


def _slot_process(container: str) -> tuple[int, int, bool]:
    """The host PID of the slot's main process, Docker's restart count, and whether it runs."""
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.Pid}} {{.RestartCount}} {{.State.Running}}", container],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    return int(out[0]), int(out[1]), out[2] == "true"


def test_a_live_slot_killed_during_a_burst_costs_no_request(project, ports):
    """The live slot's process is SIGKILLed while requests arrive through the proxy: nginx sends
    each request the dead slot cannot take to the standby slot (v1), Docker starts the live slot
    again, and production serves v2 again from the same slot, with no failed request."""
    load_module = _load_generator()
    status = _status(project)
    live = status["slots"][status["live"]]
    assert live["version"] == "2", status
    pid, restarts, alive = _slot_process(live["container"])
    assert alive and pid > 0

    load = load_module.Load(ports["production"], _rows(project), rate=40, threads=8).start()
    time.sleep(2)
    os.kill(pid, signal.SIGKILL)  # from the host: a crash to Docker, so its restart policy applies
    killed = time.time()
    # Until the slot is back and serves v2 again; fails when Docker stops making progress.
    seen, quiet_since = None, time.monotonic()
    while True:
        state = (*_slot_process(live["container"])[1:], _served(live["port"]))
        if state[0] > restarts and state[1] and state[2] == "2":
            break
        if state != seen:
            seen, quiet_since = state, time.monotonic()
        assert time.monotonic() - quiet_since < 120, f"the killed slot made no progress: {state}"
        time.sleep(0.2)
    back = time.time()
    time.sleep(5)
    samples = load.stop()

    figures = load_module.summary(samples)
    during = [s for s in samples if killed < s.sent < back]
    # Production serves v2 again: every request of the last 2 s. (Right after the slot is back, nginx
    # may still bench it for its 1 s fail_timeout, and again after a first request that a slot still
    # warming up answers too slowly on a busy machine: the standby answers those, which is the point.)
    last = max(s.sent for s in samples)
    after = {s.version for s in samples if s.sent > last - 2}
    assert figures["failed"] == 0 and len(during) > 10, (figures, len(during))
    assert "1" in {s.version for s in during}, "the standby slot answered nothing while the live one was down"
    assert after == {"2"}, (
        figures,
        after,
        sorted((round(s.sent - back, 2), s.version) for s in samples if s.sent > back),
    )
    status = _status(project)
    assert status["slots"][status["live"]]["version"] == "2" and status["production_version"] == "2"
    print(
        f"slot killed: {len(during)} requests during the {back - killed:.1f} s restart, none failed: {figures}"
    )


def test_a_broken_v3_never_reaches_production(project, ports):
    # v3: the registry's v1 model again, but the folder its image is built from cannot be loaded
    assert _copy_version(project, "1") == "3"
    folder = _download(project, "3")
    for path in folder.iterdir():
        if path.is_file() and path.name not in ("MLmodel", "serving.json"):
            path.write_bytes(b"not a model")
    before = _status(project)
    states, out = _deploy(project, {"version": "3", "auto_approve": True})
    assert states["staging"] == "failed" and states["rollout"] == "upstream_failed", out
    assert "production keeps serving version 2" in out
    # Told at its first crash, not after the ready timeout: Docker's restarts would not make it load.
    assert "crashed before it was ready" in out or "exited before it was ready" in out, out
    assert _served(ports["production"]) == "2"
    after = _status(project)
    assert (after["live"], after["slots"]) == (before["live"], before["slots"]) and after["staging"] is None
    assert project.registry("bikeshare")["aliases"]["production"] == "2"


def test_a_v4_that_predicts_unlike_the_registry_fails_the_smoke_test(project, ports):
    # v4 in the registry is v2's model; its image is built from a folder that holds v1's model
    assert _copy_version(project, "2") == "4"
    folder, v1 = _download(project, "4"), _download(project, "1")
    keep = folder / "serving.json"
    info = keep.read_text()
    shutil.rmtree(folder)
    shutil.copytree(v1, folder)
    keep.write_text(info)  # the registry's view of v4, over v1's files
    before = _status(project)
    states, out = _deploy(project, {"version": "4", "auto_approve": True})
    assert states["build"] == "success" and states["staging"] == "failed", out
    assert "prediction mismatch" in out and "production keeps serving version 2" in out
    assert _served(ports["production"]) == "2"
    after = _status(project)
    assert (after["live"], after["slots"]) == (before["live"], before["slots"]) and after["staging"] is None
    assert project.registry("bikeshare")["aliases"]["production"] == "2"


def _copy_version(project: AirflowProject, version: str) -> str:
    """A new registry version holding the model of ``version``; its number."""
    return project.steps_python(f"""
        import json
        from mlflow import MlflowClient
        c = MlflowClient()
        v = c.get_model_version("bikeshare", {version!r})
        print(json.dumps(str(c.create_model_version("bikeshare", source=v.source, run_id=v.run_id,
                                                    model_id=v.model_id).version)))
    """)


def _download(project: AirflowProject, version: str) -> Path:
    return Path(
        project.steps_python(f"""
        import json, os
        from pathlib import Path
        from mlcycle.serving.fetch import resolve_model
        home = Path(os.environ["MLCYCLE_HOME"])
        print(json.dumps(str(resolve_model("models:/bikeshare/{version}", home / "serving"))))
    """)
    )


def test_a_manual_rollback_to_v1_is_an_instant_switch(project, ports):
    before = _status(project)
    idle = "green" if before["live"] == "blue" else "blue"
    states, out = _deploy(project, {"version": "1", "auto_approve": True})
    assert states["record"] == "success", out
    assert _served(ports["production"]) == "1"
    after = _status(project)
    assert (
        after["live"] == idle and after["slots"][idle] == before["slots"][idle]
    )  # same container, no restart
    registry = project.registry("bikeshare")
    assert registry["aliases"]["production"] == "1"
    assert registry["versions"][0]["tags"]["deploy.previous_version"] == "2"


def test_a_watch_window_breach_switches_back_by_itself(project, ports, tmp_path):
    # A variant of the same pipeline whose latency budget no server meets (under 0.1 ms)
    strict = write_spec_variant(
        project.spec, tmp_path / "bikeshare.yaml", deploy={"watch_max_p99_ms": 0.1, "watch_seconds": 20}
    )
    states, out = _deploy(project, {"version": "2", "auto_approve": True, "pipeline": str(strict)})
    assert states["rollout"] == "success" and states["watch"] == "failed", out
    assert states["record"] == "upstream_failed", out
    assert "watch window breached by version 2" in out and "production serves version 1 again" in out
    assert _served(ports["production"]) == "1"
    status = _status(project)
    assert status["slots"][status["live"]]["version"] == "1"
    assert [s for s in status["slots"].values() if s and s["version"] == "2"] == []  # the bad slot is gone
    assert project.registry("bikeshare")["aliases"]["production"] == "1"


def test_a_rejected_promotion_leaves_production_unchanged(project, ports):
    api_port = free_port()
    env = {
        **project.env,
        **AirflowProject.server_settings(api_port),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    }
    server = subprocess.Popen(
        [str(AIRFLOW_BIN / "airflow"), "api-server"],
        env=env,
        cwd=project.home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    project.runs += 1
    date = f"2012-01-{project.runs:02d}"
    log = (project.home / "approval-run.log").open("wb")
    run = subprocess.Popen(
        [
            str(AIRFLOW_BIN / "airflow"),
            "dags",
            "test",
            DAG,
            date,
            "--conf",
            json.dumps({"version": "2", "auto_approve": False}),
        ],
        env=project.env,
        cwd=project.home,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        root = f"http://127.0.0.1:{api_port}"
        token = _token(root)
        run_id = _wait_for_approval(root, token, date)
        _api(
            root,
            token,
            f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails",
            {"chosen_options": ["Reject"], "params_input": {}},
            method="PATCH",
        )
        run.wait(timeout=300)
    finally:
        run.kill()
        log.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    out = (project.home / "approval-run.log").read_text(errors="replace")
    states = project.task_states(DAG, date)
    assert states["staging"] == "success" and states["approve"] == "success", out[-5000:]
    assert {states[t] for t in ("rollout", "watch", "record")} == {"skipped"}, states
    assert _served(ports["production"]) == "1"
    assert project.registry("bikeshare")["aliases"]["production"] == "1"


def test_an_image_that_does_not_build_leaves_production_as_it_was(project, ports):
    assert _copy_version(project, "1") == "5"  # a new version: no image of it exists to reuse
    before = _status(project)
    project.env["MLCYCLE_SERVING_BASE_IMAGE"] = "mlcycle-no-such-base:0"  # nothing to build on, no registry
    try:
        states, out = _deploy(project, {"version": "5", "auto_approve": True})
    finally:
        del project.env["MLCYCLE_SERVING_BASE_IMAGE"]
    assert states["build"] == "failed" and states["staging"] == "upstream_failed", out
    assert "the image of version 5 was not built" in out and "production keeps serving version 1" in out, out
    assert _served(ports["production"]) == "1"
    after = _status(project)
    assert (after["live"], after["slots"]) == (before["live"], before["slots"])
    assert project.registry("bikeshare")["aliases"]["production"] == "1"


def _api(root: str, token: str, path: str, payload: dict | None = None, method: str = "GET") -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(
        f"{root}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def _token(root: str, seconds: float = 180) -> str:
    """A token of the simple auth manager (every user an admin here), once the API server answers."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{root}/auth/token", timeout=5) as resp:
                return json.loads(resp.read())["access_token"]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def _wait_for_approval(root: str, token: str, date: str, seconds: float = 420) -> str:
    """The run id, once its approval task waits for a person."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runs = _api(root, token, f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]
        for run in runs:
            if (run.get("logical_date") or "").startswith(date):
                ti = _api(
                    root, token, f"/api/v2/dags/{DAG}/dagRuns/{run['dag_run_id']}/taskInstances/approve"
                )
                if ti["state"] == "awaiting_input":
                    return run["dag_run_id"]
        time.sleep(2)
    raise AssertionError(f"no approval task of {DAG} at {date} waited for input within {seconds} s")
