"""The scoring DAG end to end through `airflow dags test`: real MLflow, real PostgreSQL, the store.

One Airflow home for the module: one lean training run makes a champion, then `scoring_bikeshare`
scores a day into the store and into a table of a database of its own on the machine's PostgreSQL;
a re-run of the day changes nothing; a rejected batch is not scored; `monitoring_bikeshare` watches
the batch predictions and measures their performance.
"""

from __future__ import annotations

import hashlib
import json
import secrets

import pytest

from tests.datasets import BIKESHARE_SPEC, LEAN_MODEL, make_bad_bikeshare, write_spec_variant
from tests.integration.airflow_env import AirflowProject

pytestmark = pytest.mark.integration

TASKS = ["interval", "model", "extract", "ingest", "validate", "score", "load_postgres", "announce"]
TABLE = "bikeshare_scores"
DAY = "2011-07-01"  # a manual run of 2011-07-02 scores the day before


@pytest.fixture(scope="module")
def database(postgres_dsn):
    import psycopg2

    name = f"scoring_{secrets.token_hex(4)}"
    admin = psycopg2.connect(postgres_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    yield postgres_dsn.rsplit("/", 1)[0] + f"/{name}"
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory, database) -> AirflowProject:
    folder = tmp_path_factory.mktemp("pipelines")
    write_spec_variant(
        BIKESHARE_SPEC,
        folder / "bikeshare.yaml",
        model=LEAN_MODEL,
        scoring={"postgres": {"conn_id": "scores_pg", "table": TABLE}},
    )
    project = AirflowProject.create(
        tmp_path_factory.mktemp("scoring"),
        MLCYCLE_PIPELINES_DIR=str(folder),
        MLCYCLE_DATA_DOCS="off",
        AIRFLOW_CONN_SCORES_PG=database,
    )
    proc = project.dags_test("training_bikeshare", "2011-06-30", {"window_days": 14})
    states = project.task_states("training_bikeshare", "2011-06-30")
    assert states.get("register") == "success", (states, proc.stdout[-4000:])
    return project


def _rows(database: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT date, event_time, prediction, model_name, model_version, run_id FROM {TABLE} "
            "ORDER BY event_time"
        )
        return cur.fetchall()


def _scores(project: AirflowProject) -> dict[str, str]:
    folder = project.store / "bikeshare" / "scores" / f"date={DAY}"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _events(project: AirflowProject) -> list[dict]:
    rows = project._metadata(
        "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
        "WHERE a.uri = :uri ORDER BY e.id",
        uri="mlcycle://bikeshare/scores",
    )
    return [extra if isinstance(extra, dict) else json.loads(extra or "{}") for (extra,) in rows]


def test_a_scoring_run_equals_pyfunc_and_writes_the_store_and_the_table(project, database):
    proc = project.dags_test("scoring_bikeshare", "2011-07-02")
    states = project.task_states("scoring_bikeshare", "2011-07-02")
    assert all(states.get(t) == "success" for t in TASKS), (states, proc.stdout[-6000:])

    checked = project.steps_python(f"""
        import json, mlflow, pandas as pd
        from pathlib import Path
        base = Path({str(project.store / "bikeshare")!r})
        lineage = json.loads((base / "scores" / "date={DAY}" / "lineage.json").read_text())
        scores = pd.read_parquet(base / "scores" / "date={DAY}" / "data.parquet")
        rows = pd.read_parquet(base / lineage["data"]["validated_file"])
        model = mlflow.pyfunc.load_model(lineage["model"]["uri"])
        names = model.metadata.get_input_schema().input_names()
        diff = (scores["prediction"] - model.predict(rows[names])).abs().max()
        print(json.dumps({{"diff": float(diff), "rows": len(scores), "lineage": lineage,
                           "same_times": bool((scores["event_time"] == rows["event_time"]).all())}}))
    """)
    lineage = checked["lineage"]
    assert checked["rows"] == 24 and checked["same_times"] and checked["diff"] <= 1e-6, checked
    assert lineage["model"]["version"] == "1" and lineage["model"]["alias"] == "champion"
    assert lineage["model"]["path"] == "onnx" and lineage["dag_id"] == "scoring_bikeshare"
    assert lineage["code_version"] and lineage["data"]["fingerprint"]

    rows = _rows(database)
    assert len(rows) == 24 and {r[0].isoformat() for r in rows} == {DAY}
    assert {(r[3], r[4]) for r in rows} == {("bikeshare", "1")}
    assert [e["version"] for e in _events(project)] == ["1"]
    event = _events(project)[0]
    assert event["days"] == [DAY] and event["fingerprint"] == lineage["data"]["fingerprint"]
    assert event["code_version"] == lineage["code_version"] and event["rows"] == 24


def test_a_rerun_of_the_interval_changes_nothing(project, database):
    files, table = _scores(project), _rows(database)
    project.dags_test("scoring_bikeshare", "2011-07-02")  # a second run of the same interval
    states = project.task_states("scoring_bikeshare", "2011-07-02")
    assert all(states.get(t) == "success" for t in TASKS), states
    assert _scores(project) == files
    assert _rows(database) == table  # replaced in one transaction by the very same rows
    assert len(_events(project)) == 2  # one event per scored run


def test_a_rejected_batch_is_not_scored_and_the_run_fails_with_the_validation_message(project, tmp_path):
    bad = make_bad_bikeshare(tmp_path, "2011-07-03", "unknown_category")
    proc = project.dags_test("scoring_bikeshare", "2011-07-04", {"pipeline": str(bad)})
    states = project.task_states("scoring_bikeshare", "2011-07-04")
    assert states["validate"] == "failed", states
    assert states["score"] == "upstream_failed" and states["announce"] == "upstream_failed", states
    output = proc.stdout + proc.stderr
    assert "failed the suite" in output and "hurricane" in output
    assert not (project.store / "bikeshare" / "scores" / "date=2011-07-03").exists()
    assert (project.store / "bikeshare" / "quarantine" / "date=2011-07-03").is_dir()
    assert len(_events(project)) == 2


def test_monitoring_watches_the_batch_predictions_and_their_performance(project, tmp_path):
    watch = write_spec_variant(
        BIKESHARE_SPEC, tmp_path / "bikeshare.yaml", model=LEAN_MODEL, monitoring={"source": "scoring"}
    )
    proc = project.dags_test("monitoring_bikeshare", "2011-07-02", {"pipeline": str(watch)})
    states = project.task_states("monitoring_bikeshare", "2011-07-02")
    assert states.get("monitor") == "success", (states, proc.stdout[-4000:])
    figures = json.loads(
        (project.store / "bikeshare" / "reports" / "drift" / f"date={DAY}" / "metrics.json").read_text()
    )
    expected = project.steps_python(f"""
        import json, numpy as np, pandas as pd
        from pathlib import Path
        base = Path({str(project.store / "bikeshare")!r})
        lineage = json.loads((base / "scores" / "date={DAY}" / "lineage.json").read_text())
        scores = pd.read_parquet(base / "scores" / "date={DAY}" / "data.parquet")
        rows = pd.read_parquet(base / lineage["data"]["validated_file"])
        print(json.dumps({{"rmse": float(np.sqrt(((scores["prediction"] - rows["bikers"]) ** 2).mean()))}}))
    """)
    assert figures["source"] == "scoring" and figures["rows"] == 24
    assert figures["performance"]["current"] == pytest.approx(expected["rmse"], rel=1e-9)


def test_a_champion_that_moves_between_runs_is_recorded_by_each_run(project, database):
    """Each run scores with the version its `model` task resolved at the start, and says so: a day
    scored before the champion moved keeps version 1 in its lineage, its table rows and its event."""
    proc = project.dags_test("training_bikeshare", "2011-07-01", {"window_days": 14})
    assert project.task_states("training_bikeshare", "2011-07-01").get("register") == "success", proc.stdout[
        -4000:
    ]
    # v2 is registered; whatever its gate said, make it @champion, as a person repairing the registry would
    project.steps_cli("alias", "--pipeline", "bikeshare", "--alias", "champion", "--version", "2")
    assert project.registry("bikeshare")["aliases"]["champion"] == "2"

    later = "2011-07-05"
    proc = project.dags_test("scoring_bikeshare", "2011-07-06")
    states = project.task_states("scoring_bikeshare", "2011-07-06")
    assert all(states.get(t) == "success" for t in TASKS), (states, proc.stdout[-6000:])

    def lineage(day: str) -> dict:
        return json.loads(
            (project.store / "bikeshare" / "scores" / f"date={day}" / "lineage.json").read_text()
        )

    assert lineage(DAY)["model"]["version"] == "1" and lineage(later)["model"]["version"] == "2"
    versions = {(r[0].isoformat(), r[4]) for r in _rows(database)}
    assert versions == {(DAY, "1"), (later, "2")}, versions
    assert [e["version"] for e in _events(project)] == ["1", "1", "2"]
