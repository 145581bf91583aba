"""scripts/load_airflow_settings.py: airflow_settings.yaml (Astro CLI format) into plain Airflow.

Loads into a fresh Airflow home and reads the result back through the real `airflow` CLI.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import AIRFLOW_BIN, ROOT

LOADER = ROOT / "scripts" / "load_airflow_settings.py"
SETTINGS = ROOT / "airflow_settings.yaml"


def airflow_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCYCLE", "MLFLOW"))}
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"), "PATH": f"{AIRFLOW_BIN}:{env.get('PATH', '')}"})
    return env


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def load(env: dict[str, str], settings: Path = SETTINGS) -> str:
    return run(env, str(AIRFLOW_BIN / "python"), str(LOADER), "--file", str(settings)).stdout


def cli_json(env: dict[str, str], *args: str):
    """`airflow ... -o json`, skipping the warnings the CLI may print before the JSON line."""
    out = run(env, str(AIRFLOW_BIN / "airflow"), *args, "-o", "json").stdout
    lines = [line for line in out.splitlines() if line.startswith(("[", "{"))]
    assert lines, f"no JSON from airflow {' '.join(args)}:\n{out}"
    return json.loads(lines[-1])


def snapshot(env: dict[str, str]) -> dict:
    """Everything the settings file touches, read through the Airflow CLI (in parallel: each call is ~3 s)."""
    calls = {
        "list": ("connections", "list"),
        **{c: ("connections", "get", c) for c in ("alerts_smtp", "alerts_webhook", "bikeshare_postgres", "mlflow")},
        "pools": ("pools", "list"),
    }
    with ThreadPoolExecutor(max_workers=len(calls) + 1) as pool:
        futures = {k: pool.submit(cli_json, env, *args) for k, args in calls.items()}
        variable = pool.submit(run, env, str(AIRFLOW_BIN / "airflow"), "variables", "get", "alerts_environment")
        got = {k: f.result() for k, f in futures.items()}
        got["variable"] = variable.result().stdout.strip().splitlines()[-1]
    got["list"] = sorted((c["conn_id"], c["conn_type"]) for c in got["list"])
    for c in ("alerts_smtp", "alerts_webhook", "bikeshare_postgres", "mlflow"):
        (got[c],) = got[c]
        got[c].pop("id", None)
    got["pools"] = {p["pool"]: (int(p["slots"]), p["description"]) for p in got["pools"]}
    return got


def db_rows(env: dict[str, str]) -> dict[str, list[tuple]]:
    """The rows of the tables the loader writes, ids included, straight from the SQLite metadata DB."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in ("connection", "slot_pool", "variable")}


@pytest.fixture
def fresh_home(tmp_path) -> dict[str, str]:
    env = airflow_env(tmp_path / "airflow")
    run(env, str(AIRFLOW_BIN / "airflow"), "db", "migrate")
    return env


@pytest.mark.integration
def test_loading_twice_gives_the_local_setup(fresh_home):
    env = fresh_home
    first = load(env)
    assert "connections: 4 created; pools: 2 created; variables: 1 created" in first, first
    after_first = db_rows(env)
    second = load(env)
    assert "connections: 4 unchanged; pools: 2 unchanged; variables: 1 unchanged" in second, second
    assert db_rows(env) == after_first  # idempotent: the second load changed nothing, not even an id

    state = snapshot(env)
    assert state["list"] == [("alerts_smtp", "smtp"), ("alerts_webhook", "apprise"),
                             ("bikeshare_postgres", "postgres"), ("mlflow", "http")]
    smtp = state["alerts_smtp"]
    assert (smtp["conn_type"], smtp["host"], smtp["port"], smtp["password"]) == ("smtp", "127.0.0.1", "8025", None)
    assert smtp["extra_dejson"]["from_email"] == "airflow@localhost"
    assert smtp["extra_dejson"]["to"] == "mlops@localhost"
    assert "json://127.0.0.1:8088/alerts" in str(state["alerts_webhook"]["extra_dejson"]["config"])
    pg = state["bikeshare_postgres"]
    assert (pg["conn_type"], pg["host"], pg["port"], pg["schema"], pg["login"], pg["password"]) == \
        ("postgres", "127.0.0.1", "5432", "postgres", "postgres", None)
    assert pg["get_uri"] == "postgres://postgres@127.0.0.1:5432/postgres"
    assert (state["mlflow"]["conn_type"], state["mlflow"]["host"], state["mlflow"]["port"]) == \
        ("http", "127.0.0.1", "5000")
    assert state["pools"]["training"] == (1, "one training run at a time")
    assert state["pools"]["validation"][0] == 2
    assert state["variable"] == "local-dev"


@pytest.mark.integration
def test_loading_updates_what_changed_and_leaves_the_rest(fresh_home, tmp_path):
    env = fresh_home
    load(env)
    airflow = str(AIRFLOW_BIN / "airflow")
    run(env, airflow, "connections", "add", "not_in_the_file", "--conn-type", "http", "--conn-host", "example.test")
    raw = yaml.safe_load(SETTINGS.read_text())
    conns = {c["conn_id"]: c for c in raw["airflow"]["connections"]}
    conns["alerts_smtp"].update(conn_port=2525, conn_extra={"from_email": "ops@example.test"})
    conns["mlflow"].update(conn_host="mlflow.internal", conn_port=None)
    raw["airflow"]["pools"][0]["pool_slot"] = 3
    raw["airflow"]["variables"][0]["variable_value"] = {"name": "staging"}  # not a string: stored as JSON
    changed = tmp_path / "airflow_settings.yaml"
    changed.write_text(yaml.safe_dump(raw))

    out = load(env, changed)
    assert "connections: 2 unchanged, 2 updated; pools: 1 unchanged, 1 updated; variables: 1 updated" in out, out

    with ThreadPoolExecutor(max_workers=5) as pool:
        smtp, mlflow, kept, training = (pool.submit(cli_json, env, *args) for args in (
            ("connections", "get", "alerts_smtp"), ("connections", "get", "mlflow"),
            ("connections", "get", "not_in_the_file"), ("pools", "get", "training")))
        variable = pool.submit(run, env, airflow, "variables", "get", "alerts_environment")
        smtp, mlflow, kept, training = smtp.result()[0], mlflow.result()[0], kept.result()[0], training.result()[0]
        variable = variable.result().stdout.strip().splitlines()[-1]
    assert smtp["port"] == "2525" and smtp["host"] == "127.0.0.1"
    assert smtp["extra_dejson"] == {"from_email": "ops@example.test"}
    assert (mlflow["host"], mlflow["port"]) == ("mlflow.internal", None)
    assert training["slots"] == "3"
    assert json.loads(variable) == {"name": "staging"}
    assert kept["host"] == "example.test"


@pytest.mark.parametrize("entry, message", [
    ({"conn_id": "x", "conn_type": "http", "conn_hots": "typo"}, "unknown keys ['conn_hots']"),
    ({"conn_id": "x", "conn_host": "h"}, "conn_type is required"),
    ({"conn_id": "x", "conn_type": "http", "conn_port": "eighty"}, "is not a number"),
])
def test_a_malformed_entry_is_refused_with_its_place(tmp_path, entry, message):
    bad = tmp_path / "settings.yaml"
    bad.write_text(yaml.safe_dump({"airflow": {"connections": [entry]}}))
    proc = run(airflow_env(tmp_path / "airflow"), str(AIRFLOW_BIN / "python"), str(LOADER), "--file", str(bad),
               check=False)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr


def test_it_refuses_to_guess_the_airflow_home(tmp_path):
    env = {k: v for k, v in airflow_env(tmp_path).items() if k != "AIRFLOW_HOME"}
    proc = run(env, str(AIRFLOW_BIN / "python"), str(LOADER), check=False)
    assert proc.returncode == 2 and "AIRFLOW_HOME is not set" in proc.stderr
