"""The training DAG end to end through `airflow dags test`, against a real local MLflow store.

One Airflow home and one MLflow store for the module; the tests run in order, like a user would:
a first run that sets the champion, a second run that the gate decides, a strict spec that the gate
rejects, a bad batch that stops at validation, and a second data set through the same DAG.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.datasets import (
    BIKESHARE_SPEC,
    EVENT_HISTORY_FEATURES,
    LEAN_MODEL,
    make_bad_bikeshare,
    make_classification_dataset,
    make_events_dataset,
    write_spec_variant,
)
from tests.integration.airflow_env import AirflowProject

pytestmark = pytest.mark.integration

STEPS = ["ingest", "validate", "build_features", "train", "evaluate", "register"]
WINDOW = {"window_days": 14}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> Path:
    """The project's specs folder: bikeshare, and (later) a data set onboarded by its spec alone."""
    folder = tmp_path_factory.mktemp("pipelines")
    write_spec_variant(BIKESHARE_SPEC, folder / "bikeshare.yaml", model=LEAN_MODEL)
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory, pipelines) -> AirflowProject:
    return AirflowProject.create(tmp_path_factory.mktemp("training"), MLCYCLE_PIPELINES_DIR=str(pipelines))


def _fingerprint(project: AirflowProject, start: str, end: str) -> str:
    """The data fingerprint recomputed from the validated partitions of [start, end)."""
    first, stop = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    days = [first + dt.timedelta(days=i) for i in range((stop - first).days)]
    folder = project.store / "bikeshare" / "validated"
    # each day's current validated version, named by its pointer; the bytes are hashed here again
    files = [
        folder / f"date={d}" / json.loads((folder / f"date={d}" / "CURRENT.json").read_text())["file"]
        for d in days
    ]
    hashes = [f"{d}:{hashlib.sha256(f.read_bytes()).hexdigest()}" for d, f in zip(days, files, strict=True)]
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]


def _code_version() -> str:
    """What the steps record: the package version and, in a git checkout, the commit."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{version}+g{sha}" if sha else version


def _run(
    project: AirflowProject, date: str, conf: dict, dag_id: str = "training_bikeshare"
) -> dict[str, str]:
    proc = project.dags_test(dag_id, date, conf)
    states = project.task_states(dag_id, date)
    if any(states.get(t) != "success" for t in STEPS) and "bad" not in str(conf):
        print(proc.stdout[-6000:], proc.stderr[-3000:])
    return states


def test_first_run_takes_the_first_run_path_and_sets_the_champion(project):
    states = _run(project, "2011-06-30", {"pipeline": "bikeshare", **WINDOW})
    assert all(states[t] == "success" for t in STEPS), states

    registry = project.registry("bikeshare")
    assert [v["version"] for v in registry["versions"]] == ["1"]
    assert registry["aliases"] == {"champion": "1", "challenger": "1"}
    tags = registry["versions"][0]["tags"]
    assert tags["mlcycle.window_start"] == "2011-06-16" and tags["mlcycle.window_end"] == "2011-06-30"
    assert tags["mlcycle.data_fingerprint"] == _fingerprint(project, "2011-06-16", "2011-06-30")
    assert tags["mlcycle.code_version"] == _code_version()
    assert tags["airflow.dag_id"] == "training_bikeshare"
    assert tags["airflow.run_id"].startswith("manual__")
    assert tags["gate.first_run"] == "true" and tags["gate.blessed"] == "true"
    # `@champion` moved: `announce` emitted the champion asset once, naming the version (deploys run on it)
    assert states["announce"] == "success"
    assert project.champion_events("bikeshare") == [
        {"pipeline": "bikeshare", "model_name": "bikeshare", "version": "1"}
    ]

    run = project.run_tags(registry["versions"][0]["run_id"])
    assert "no champion yet" in run["tags"]["gate.reason"]
    assert "holdout_rmse" in run["metrics"] and "gate_candidate_rmse" in run["metrics"]
    assert {"plots/feature_importance.png", "plots/residuals.png"} <= set(run["artifacts"])
    assert any(name.startswith("bikeshare-train-") for name in run["inputs"])
    report = project.store / "bikeshare" / "reports" / "validation" / "end=2011-06-30" / "report.html"
    assert "passed" in report.read_text()


def test_second_run_registers_a_new_version_and_the_gate_promotes_it(project, tmp_path):
    # A candidate may be up to twice the champion's RMSE: a retrained model on one more day of the
    # same data is well within that, so the outcome is known (the strict test below is the refusal).
    lenient = write_spec_variant(
        BIKESHARE_SPEC, tmp_path / "bikeshare_lenient.yaml", model=LEAN_MODEL, evaluation={"tolerance": 1.0}
    )
    states = _run(project, "2011-07-01", {"pipeline": str(lenient), **WINDOW})
    assert all(states[t] == "success" for t in STEPS), states

    registry = project.registry("bikeshare")
    assert [v["version"] for v in registry["versions"]] == ["1", "2"]
    assert registry["aliases"] == {"champion": "2", "challenger": "2"}
    v2 = registry["versions"][1]
    assert v2["tags"]["gate.first_run"] == "false" and v2["tags"]["gate.blessed"] == "true"
    assert v2["tags"]["gate.champion_version"] == "1"
    assert states["announce"] == "success"
    assert [e["version"] for e in project.champion_events("bikeshare")] == ["1", "2"]
    run = project.run_tags(v2["run_id"])
    candidate, champion = run["metrics"]["gate_candidate_rmse"], run["metrics"]["gate_champion_rmse"]
    assert candidate <= 120 and candidate <= champion * 2, (candidate, champion)
    v1_run = project.run_tags(registry["versions"][0]["run_id"])
    assert champion != v1_run["metrics"]["gate_candidate_rmse"], (
        "the champion was not re-scored on this run's slice"
    )


def test_a_strict_spec_makes_the_gate_reject_and_the_champion_stays(project, tmp_path):
    strict = write_spec_variant(
        BIKESHARE_SPEC,
        tmp_path / "bikeshare_strict.yaml",
        model=LEAN_MODEL,
        evaluation={"threshold": 1.0, "tolerance": 0.0},
    )
    champion_before = project.registry("bikeshare")["aliases"]["champion"]
    events_before = project.champion_events("bikeshare")
    states = _run(project, "2011-07-02", {"pipeline": str(strict), **WINDOW})
    assert all(states[t] == "success" for t in STEPS), states
    assert states["announce"] == "skipped" and project.champion_events("bikeshare") == events_before

    registry = project.registry("bikeshare")
    newest = registry["versions"][-1]
    assert newest["version"] == "3" and newest["tags"]["gate.blessed"] == "false"
    assert "misses the threshold" in newest["tags"]["gate.reason"]
    assert registry["aliases"] == {"champion": champion_before, "challenger": "3"}


def test_a_spec_that_drops_a_feature_still_gates_against_the_champion(project, tmp_path):
    """The champion was trained with `windspeed`; the new spec no longer uses it. Each model is scored
    on the columns of its own signature, so the gate still compares both on the same rows."""
    slimmer = write_spec_variant(
        BIKESHARE_SPEC,
        tmp_path / "bikeshare_slim.yaml",
        model=LEAN_MODEL,
        columns={"windspeed": {"role": "ignore"}},
        evaluation={"tolerance": 1.0},
        monitoring={"columns": ["temp", "atemp", "hum"]},
    )
    champion_before = project.registry("bikeshare")["aliases"]["champion"]
    states = _run(project, "2011-07-03", {"pipeline": str(slimmer), **WINDOW})
    assert all(states[t] == "success" for t in STEPS), states
    newest = project.registry("bikeshare")["versions"][-1]
    run = project.run_tags(newest["run_id"])
    assert "gate_champion_rmse" in run["metrics"], run["tags"]["gate.reason"]
    assert (
        f"champion {'rmse'}" in run["tags"]["gate.reason"]
        and newest["tags"]["gate.champion_version"] == champion_before
    )


def test_a_bad_batch_stops_at_validation_and_nothing_is_registered(project, tmp_path):
    bad = make_bad_bikeshare(tmp_path, "2011-07-03", "unknown_category")
    before = project.registry("bikeshare")
    states = _run(project, "2011-07-04", {"pipeline": str(bad), **WINDOW, "bad": True})

    assert states["ingest"] == "success"
    assert states["validate"] == "failed"
    assert all(states[t] == "upstream_failed" for t in STEPS[2:]), states
    assert project.registry("bikeshare") == before, "a rejected batch changed the registry"
    quarantined = project.store / "bikeshare" / "quarantine" / "date=2011-07-03"
    attempts = list(quarantined.iterdir())
    assert attempts, "the rejected batch was not kept for inspection"
    assert (attempts[0] / "data.parquet").exists()
    assert "hurricane" in (attempts[0] / "failures.json").read_text()
    assert "expect_column_values_to_be_in_set" in (attempts[0] / "report.html").read_text()
    assert not (project.store / "bikeshare" / "validated" / "date=2011-07-03").exists()


def test_a_second_data_set_needs_only_a_spec(project, pipelines):
    make_classification_dataset(pipelines, days=40, start="2011-03-01")  # its spec lands in the specs folder
    states = _run(project, "2011-04-05", {"window_days": 21}, dag_id="training_synthclass")
    assert all(states[t] == "success" for t in STEPS), states

    registry = project.registry("synthclass")
    assert registry["aliases"] == {"champion": "1", "challenger": "1"}
    run = project.run_tags(registry["versions"][0]["run_id"])
    assert run["metrics"]["holdout_roc_auc"] > 0.7
    assert "plots/confusion_matrix.png" in run["artifacts"]


def test_an_event_data_set_of_another_decade_in_local_time_needs_only_its_spec(project, pipelines):
    """Events (no key), a derived label, a filter, a 100-value categorical, New York time, 2023, and
    history features by zone and carrier (a rolling share of late flights among them): the training
    DAG reads the lookback from the store, trains on the features, materializes the interval into the
    offline and online stores (Feast), and the monitoring DAG judges the features with the rest and
    the online store's age."""
    base = make_events_dataset(pipelines / "events", start="2023-02-27", days=21)
    write_spec_variant(
        base,
        pipelines / "flights.yaml",
        features=EVENT_HISTORY_FEATURES,
        schedule={"start": "2023-03-13"},  # before the default: the first 7 days only warm up
    )
    states = _run(project, "2023-03-16", {}, dag_id="training_flights")
    assert all(states[t] == "success" for t in [*STEPS, "materialize"]), states

    registry = project.registry("flights")
    assert registry["aliases"] == {"champion": "1", "challenger": "1"}
    tags = registry["versions"][0]["tags"]
    assert (tags["mlcycle.window_start"], tags["mlcycle.window_end"]) == ("2023-03-01", "2023-03-15")
    run = project.run_tags(registry["versions"][0]["run_id"])
    # The whole classification metric set, and the gate's metric named.
    assert {f"holdout_{m}" for m in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")} <= set(
        run["metrics"]
    )
    assert run["metrics"]["holdout_roc_auc"] > 0.7
    assert run["params"]["gate_metric"] == "roc_auc"
    store = project.store / "flights"
    # The day clocks went forward is one local day of 23 hours, like any other partition.
    assert (store / "validated" / "date=2023-03-12").exists()
    manifest = json.loads(next((store / "features").glob("end=2023-03-15/*/manifest.json")).read_text())
    assert (
        set(manifest["history"]) == set(EVENT_HISTORY_FEATURES["history"])
        and manifest["window_start"] == "2023-03-01"
    )
    assert manifest["partitions"][0]["date"] == "2023-02-27"  # the lookback, clipped to the data's first day
    assert (store / "history" / "by_zone" / "date=2023-03-14" / "data.parquet").is_file()
    assert (store / "feast" / "online.db").is_file()
    # The registered classifier gives probabilities through pyfunc, as the README documents.
    proba = project.steps_python(f"""
        import datetime as dt, json, mlflow, pandas as pd
        from pathlib import Path
        from mlcycle.store import Store
        folder = Store(Path({str(project.store)!r}), "flights").features_dir(dt.date(2023, 3, 15))
        rows = pd.read_parquet(folder / "eval.parquet").head(5)
        model = mlflow.pyfunc.load_model("models:/flights@champion")
        p = model.get_raw_model().predict_proba(rows[model.metadata.get_input_schema().input_names()])
        print(json.dumps({{"shape": list(p.shape), "sums": [round(float(x), 9) for x in p.sum(axis=1)],
                           "labels": [int(x) for x in model.predict(rows[model.metadata.get_input_schema().input_names()])]}}))
    """)
    assert proba["shape"] == [5, 2] and proba["sums"] == [1.0] * 5 and set(proba["labels"]) <= {0, 1}

    proc = project.dags_test("monitoring_flights", "2023-03-15")
    states = project.task_states("monitoring_flights", "2023-03-15")
    assert states["monitor"] == "success", (states, proc.stdout[-5000:])
    metrics = json.loads(next((store / "reports" / "drift").glob("date=*/metrics.json")).read_text())
    monitored = {c["column"] for c in metrics["columns"]}
    assert set(EVENT_HISTORY_FEATURES["history"]) <= monitored, monitored
    assert metrics["online_store"]["stale"] is False, metrics["online_store"]
