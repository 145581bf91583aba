"""The PostgreSQL source against the real server: same interval, same bytes as the file source.

The bundled data goes into a fresh table with the loader; the Airflow-side `extract` (PostgresHook,
COPY per day) lands the window, the `ingest` step of the step environment turns it into raw
partitions, and those must be byte-identical to what `ingest` writes from the CSV file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import psycopg2
import pytest
import yaml

from tests.conftest import ROOT, STEPS_BIN
from tests.datasets import LEAN_MODEL, write_spec_variant
from tests.integration.airflow_env import AirflowProject

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

POSTGRES_SPEC = ROOT / "include" / "pipelines" / "bikeshare_postgres.yaml"
START, END, WINDOW_DAYS = "2011-03-07", "2011-03-08", 7  # the window: 2011-03-01 .. 2011-03-07
WINDOW = [f"date=2011-03-0{d}" for d in range(1, 8)]
TASKS = ["extract", "ingest", "validate", "build_features", "train", "evaluate", "register"]


@pytest.fixture
def table(postgres_dsn):
    """The bundled data in a fresh table (scripts/load_postgres.py); dropped afterwards."""
    name = f"bikeshare_test_{uuid.uuid4().hex[:10]}"
    proc = subprocess.run([str(STEPS_BIN / "python"), str(ROOT / "scripts" / "load_postgres.py"),
                           "--dsn", postgres_dsn, "--table", name], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["rows"] == 8645 and loaded["columns"][-1] == "event_time"
    yield name
    with psycopg2.connect(postgres_dsn) as conn, conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{name}"')
    conn.close()


@pytest.fixture
def pg_spec(tmp_path, table) -> Path:
    return write_spec_variant(POSTGRES_SPEC, tmp_path / "specs" / "bikeshare_postgres.yaml",
                              source={"table": table}, model=LEAN_MODEL)


def _step_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLCYCLE", "MLFLOW"))}
    return {**env, "MLCYCLE_HOME": str(home), "MLFLOW_ENABLE_TELEMETRY": "false"}


def _ingest(pipeline: str, home: Path, start: str = START, end: str = END) -> subprocess.CompletedProcess:
    return subprocess.run([str(STEPS_BIN / "mlcycle"), "ingest", "--pipeline", pipeline, "--start", start,
                           "--end", end, "--window-days", str(WINDOW_DAYS)],
                          env=_step_env(home), cwd=ROOT, capture_output=True, text=True, timeout=300)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _extract(monkeypatch, postgres_dsn: str, home: Path, spec: Path, start: str = START, end: str = END) -> dict:
    """The Airflow-side extract, called directly in this (Airflow) environment with an env connection."""
    from pipeline_support.extract import extract_to_landing

    monkeypatch.setenv("AIRFLOW_CONN_BIKESHARE_POSTGRES", postgres_dsn)
    monkeypatch.setenv("MLCYCLE_HOME", str(home))
    monkeypatch.delenv("MLCYCLE_STORE", raising=False)
    return extract_to_landing(str(spec), start, end, WINDOW_DAYS)


def test_postgres_ingestion_is_byte_identical_to_file_ingestion(tmp_path, monkeypatch, postgres_dsn, pg_spec):
    pg_home, file_home = tmp_path / "pg", tmp_path / "file"
    landed = _extract(monkeypatch, postgres_dsn, pg_home, pg_spec)
    assert landed["days"] == 7 and landed["window_start"] == "2011-03-01" and landed["window_end"] == "2011-03-08"
    landing = pg_home / "store" / "bikeshare_postgres" / "landing"
    assert sorted(p.name for p in landing.iterdir()) == WINDOW
    assert not [p for p in landing.rglob("*") if p.name.endswith(".tmp")]
    first = {p.parent.name: _sha(p) for p in landing.glob("*/data.csv")}
    header = (landing / WINDOW[0] / "data.csv").read_text().splitlines()[0]
    assert header.endswith(",event_time")  # the table's own timestamp column travels to the landing file

    pg = _ingest(str(pg_spec), pg_home)
    assert pg.returncode == 0, pg.stderr[-3000:]
    by_file = _ingest("bikeshare", file_home)
    assert by_file.returncode == 0, by_file.stderr[-3000:]
    pg_result, file_result = json.loads(pg.stdout.splitlines()[-1]), json.loads(by_file.stdout.splitlines()[-1])
    assert pg_result["rows"] == file_result["rows"] > 100 and pg_result["empty_days"] == []

    pg_raw = pg_home / "store" / "bikeshare_postgres" / "raw"
    file_raw = file_home / "store" / "bikeshare" / "raw"
    assert sorted(p.name for p in pg_raw.iterdir()) == sorted(p.name for p in file_raw.iterdir()) == WINDOW
    for day in WINDOW:
        assert _sha(pg_raw / day / "data.parquet") == _sha(file_raw / day / "data.parquet"), day

    # Extracting again lands the same bytes (ordered COPY, atomic replace).
    _extract(monkeypatch, postgres_dsn, pg_home, pg_spec)
    assert {p.parent.name: _sha(p) for p in landing.glob("*/data.csv")} == first


def test_ingest_without_landing_files_says_to_run_extract(tmp_path, pg_spec):
    proc = _ingest(str(pg_spec), tmp_path / "pg")
    assert proc.returncode == 1
    error = json.loads(proc.stdout.splitlines()[-1])["error"]
    assert "no landing file" in error and "date=2011-03-01" in error and "`extract` task" in error


def test_file_source_extract_is_a_no_op(tmp_path, monkeypatch, postgres_dsn):
    result = _extract(monkeypatch, postgres_dsn, tmp_path / "home", ROOT / "include" / "pipelines" / "bikeshare.yaml")
    assert result == {"pipeline": "bikeshare", "source": "file", "days": 0, "bytes": 0}
    assert not (tmp_path / "home").exists()


def test_training_dag_runs_end_to_end_on_the_postgres_source(tmp_path, postgres_dsn, pg_spec):
    project = AirflowProject.create(tmp_path / "home", AIRFLOW_CONN_BIKESHARE_POSTGRES=postgres_dsn)
    proc = project.dags_test("training_bikeshare_postgres", "2011-03-07", {"pipeline": str(pg_spec), "window_days": 14})
    states = project.task_states("training_bikeshare_postgres", "2011-03-07")
    assert all(states.get(t) == "success" for t in TASKS), (states, proc.stdout[-6000:], proc.stderr[-3000:])

    base = project.store / "bikeshare_postgres"
    # `dags test training_bikeshare_postgres 2011-03-07` runs the interval [03-06, 03-07): the window is the 14 days before 03-07.
    days = [f"date={dt.date(2011, 2, 21) + dt.timedelta(days=i)}" for i in range(14)]
    assert sorted(p.name for p in (base / "landing").iterdir()) == days
    assert sorted(p.name for p in (base / "validated").iterdir()) == days
    registry = project.registry("bikeshare_postgres")
    assert [v["version"] for v in registry["versions"]] == ["1"]
    assert registry["versions"][0]["tags"]["mlcycle.window_end"] == "2011-03-07"


def test_a_spec_drafted_from_the_table_trains_with_no_edit(tmp_path, postgres_dsn, table):
    """`mlcycle draft-spec <dsn> --table ...`, then the training DAG on the draft as written (a
    one-candidate variant `extends:` it): extract, ingest, validate, train, register."""
    specs = tmp_path / "specs"
    proc = subprocess.run(
        [str(STEPS_BIN / "mlcycle"), "draft-spec", postgres_dsn, "--table", table, "--name", "drafted_pg",
         "--target", "bikers", "--timestamp", "day,hr", "--year", "2011", "--out", str(specs)],
        env=_step_env(tmp_path / "draft-home"), cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    drafted = yaml.safe_load((specs / "drafted_pg.yaml").read_text())
    assert drafted["source"] == {"kind": "postgres", "conn_id": "drafted_pg", "table": table,
                                 "timestamp_column": "event_time"}
    assert "event_time" not in drafted["columns"]  # the day selector is the table's, not a feature
    assert f"export AIRFLOW_CONN_DRAFTED_PG={postgres_dsn}" in result["next"]

    variant = tmp_path / "drafted_pg-lean.yaml"
    variant.write_text(yaml.safe_dump({"extends": str(specs / "drafted_pg.yaml"), "model": LEAN_MODEL}))
    project = AirflowProject.create(tmp_path / "home", AIRFLOW_CONN_DRAFTED_PG=postgres_dsn,
                                    MLCYCLE_PIPELINES_DIR=str(specs))
    run = project.dags_test("training_drafted_pg", "2011-03-07", {"pipeline": str(variant), "window_days": 14})
    states = project.task_states("training_drafted_pg", "2011-03-07")
    assert all(states.get(t) == "success" for t in TASKS), (states, run.stdout[-6000:], run.stderr[-3000:])
    assert [v["version"] for v in project.registry("drafted_pg")["versions"]] == ["1"]


def test_draft_spec_names_what_is_wrong_with_a_table(tmp_path, postgres_dsn, table):
    def draft(*args: str) -> str:
        proc = subprocess.run([str(STEPS_BIN / "mlcycle"), "draft-spec", *args, "--target", "bikers",
                               "--out", str(tmp_path)], env=_step_env(tmp_path), cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])["error"]

    assert "needs --table" in draft(postgres_dsn)
    assert "no table 'nope'" in draft(postgres_dsn, "--table", "nope")
    assert "a PostgreSQL source needs --table" in draft(postgres_dsn, "--table", "x; DROP TABLE y")
    assert "--timestamp-column (candidates: event_time)" in draft(postgres_dsn, "--table", table,
                                                                 "--timestamp-column", "hr")
    wrong = postgres_dsn.replace("postgres@", "postgres:secret@").replace(":5432/", ":9/")
    message = draft(wrong, "--table", table)
    assert "cannot connect to" in message and "secret" not in message and ":***@" in message
