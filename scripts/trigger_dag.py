#!/usr/bin/env python3
"""Trigger a DAG run through Airflow's REST API v2 and follow it until it ends.

Used by the deploy jobs of both CI systems (``make deploy-trigger ENV=staging``)::

    scripts/trigger_dag.py --dag-id deploy_bikeshare \\
        --conf '{"version": "", "target": "staging", "auto_approve": true}'

Settings come from the environment, which CI fills from its secret store:

    AIRFLOW_API_URL       base URL of the Airflow API server, e.g. https://airflow.example.org
    AIRFLOW_API_TOKEN     a JWT to use as is; otherwise one is requested from ``POST /auth/token``
    AIRFLOW_API_USERNAME  with AIRFLOW_API_PASSWORD
    AIRFLOW_API_PASSWORD

The run is followed by polling it and its task instances. It fails when the run fails, or when
nothing moves for ``--stall-timeout`` seconds while no task is running (a paused scheduler, a full
pool, a missing worker): a long task that is running is progress, however long it takes.

Standard library only: it runs on any CI image with Python 3. Exit codes: 0 the run succeeded,
1 it did not (or Airflow could not be reached), 2 bad arguments. The last line of stdout is a JSON
summary of the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass

log = logging.getLogger("trigger_dag")

#: Task states in which a task is doing its work (or waiting for an event it asked for).
ACTIVE = {"running", "deferred", "restarting"}
FINISHED_OK = {"success"}
FINISHED_BAD = {"failed"}


class TriggerError(Exception):
    """The run could not be triggered or did not succeed; the message says what to check."""


@dataclass(frozen=True)
class RunResult:
    dag_id: str
    run_id: str
    state: str
    url: str
    seconds: float


class AirflowApi:
    """The few calls of Airflow 3's public REST API (v2) this script needs."""

    def __init__(self, base_url: str, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.token: str | None = None

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise TriggerError(f"{method} {path} answered {exc.code}: {detail}{_hint(exc.code)}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TriggerError(
                f"cannot reach Airflow at {self.base_url} ({reason}): check AIRFLOW_API_URL "
                f"and that the API server is up"
            ) from exc
        return json.loads(raw) if raw else {}

    def login(self, username: str, password: str) -> None:
        answer = self.request("POST", "/auth/token", {"username": username, "password": password})
        token = answer.get("access_token")
        if not token:
            raise TriggerError(f"POST /auth/token gave no access_token (keys: {sorted(answer)})")
        self.token = token


def _hint(status: int) -> str:
    return {
        401: " (check AIRFLOW_API_USERNAME/AIRFLOW_API_PASSWORD or AIRFLOW_API_TOKEN)",
        403: " (the user needs permission to trigger this DAG)",
        404: " (is the DAG deployed, parsed and spelled right?)",
    }.get(status, "")


def _dag_path(dag_id: str) -> str:
    return f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}"


def trigger(api: AirflowApi, dag_id: str, conf: dict, *, unpause: bool, note: str | None) -> str:
    """Start a run of ``dag_id`` with ``conf``; return its run id."""
    dag = api.request("GET", _dag_path(dag_id))
    if dag.get("is_paused"):
        if not unpause:
            raise TriggerError(
                f"DAG {dag_id} is paused, so its run would never start: unpause it in "
                f"Airflow, or pass --unpause"
            )
        log.info("unpausing %s", dag_id)
        api.request("PATCH", _dag_path(dag_id), {"is_paused": False})
    body: dict = {"logical_date": None, "conf": conf}
    if note:
        body["note"] = note
    run = api.request("POST", f"{_dag_path(dag_id)}/dagRuns", body)
    log.info("triggered %s run %s with conf %s", dag_id, run["dag_run_id"], json.dumps(conf))
    return run["dag_run_id"]


def follow(api: AirflowApi, dag_id: str, run_id: str, *, poll: float, stall_timeout: float) -> str:
    """Poll the run until it ends; return its final state, or raise when it stops moving."""
    run_path = f"{_dag_path(dag_id)}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    last_signature: tuple | None = None
    last_change = time.monotonic()
    while True:
        run = api.request("GET", run_path)
        tis = api.request("GET", f"{run_path}/taskInstances").get("task_instances", [])
        state = run.get("state")
        if state in FINISHED_OK | FINISHED_BAD:
            return state
        signature = (
            state,
            tuple(
                sorted(
                    (t["task_id"], t.get("map_index", -1), t.get("state"), t.get("try_number")) for t in tis
                )
            ),
        )
        now = time.monotonic()
        if signature != last_signature:
            log.info("%s: run %s; tasks: %s", run_id, state, _summary(tis))
            last_signature, last_change = signature, now
        elif any(t.get("state") in ACTIVE for t in tis):
            last_change = now  # a running task is progress, however long it takes
        elif now - last_change > stall_timeout:
            raise TriggerError(
                f"run {run_id} of {dag_id} made no progress for {stall_timeout:.0f}s "
                f"(run {state}; tasks: {_summary(tis)}): is the scheduler running, "
                f"with a free pool slot and a worker?"
            )
        time.sleep(poll)


def _summary(tis: list[dict]) -> str:
    return ", ".join(f"{t['task_id']}={t.get('state') or 'none'}" for t in tis) or "none yet"


def run(args: argparse.Namespace) -> RunResult:
    api = AirflowApi(args.url, timeout=args.http_timeout)
    token = os.environ.get("AIRFLOW_API_TOKEN")
    if token:
        api.token = token
    elif args.username and args.password:
        api.login(args.username, args.password)
    else:
        raise TriggerError(
            "no credentials: set AIRFLOW_API_TOKEN, or AIRFLOW_API_USERNAME and AIRFLOW_API_PASSWORD"
        )
    started = time.monotonic()
    run_id = trigger(api, args.dag_id, args.conf, unpause=args.unpause, note=args.note)
    state = follow(api, args.dag_id, run_id, poll=args.poll_interval, stall_timeout=args.stall_timeout)
    url = f"{api.base_url}/dags/{args.dag_id}/runs/{urllib.parse.quote(run_id, safe='')}"
    return RunResult(
        dag_id=args.dag_id, run_id=run_id, state=state, url=url, seconds=round(time.monotonic() - started, 1)
    )


def _conf(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--conf is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--conf must be a JSON object")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dag-id", required=True)
    p.add_argument("--conf", type=_conf, default={}, help="the run's conf, a JSON object")
    p.add_argument("--url", default=os.environ.get("AIRFLOW_API_URL"), help="default: $AIRFLOW_API_URL")
    p.add_argument("--username", default=os.environ.get("AIRFLOW_API_USERNAME"))
    p.add_argument("--password", default=os.environ.get("AIRFLOW_API_PASSWORD"))
    p.add_argument("--note", help="a note on the run, e.g. the commit that deployed it")
    p.add_argument("--unpause", action="store_true", help="unpause the DAG when it is paused")
    p.add_argument("--poll-interval", type=float, default=10.0, help="seconds between polls (10)")
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=600.0,
        help="fail after this many seconds without progress and with no task running (600)",
    )
    p.add_argument("--http-timeout", type=float, default=30.0, help="seconds per HTTP request (30)")
    args = p.parse_args(argv)
    if not args.url:
        p.error("no Airflow URL: set AIRFLOW_API_URL or pass --url")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s trigger_dag: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        result = run(args)
    except TriggerError as exc:
        log.error("%s", exc)
        return 1
    print(json.dumps(asdict(result)))
    if result.state != "success":
        log.error("run %s of %s ended %s: see %s", result.run_id, result.dag_id, result.state, result.url)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
