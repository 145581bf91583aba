"""The monitor step against a real MLflow store, real Evidently and the generated classification set.

One module-scoped champion is trained on 12 days of the generated set (its rows are independent
across days, so every later day has the training distribution). The tests then monitor later days:
the same distribution is not drift, a known shift in the logged predictions is, and each fault
(too few rows, no model, reference gone, a feature missing) skips or fails with its reason and
never records a trigger.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlcycle.errors import NothingToDo
from mlcycle.monitoring.data import MonitoringInputError, ReferenceMissing
from mlcycle.monitoring.step import monitor
from mlcycle.spec import load_spec
from mlcycle.steps.evaluate import evaluate
from mlcycle.steps.features import build_features
from mlcycle.steps.ingest import ingest
from mlcycle.steps.register import register
from mlcycle.steps.train import train
from mlcycle.steps.validate import validate
from mlcycle.store import Store
from tests.datasets import make_classification_dataset
from tests.unit.conftest import START, apply_env, day_interval

WINDOW = 12
TRAIN_END = START + dt.timedelta(days=WINDOW)  # the champion's window: [START, TRAIN_END)
LATER = TRAIN_END + dt.timedelta(days=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):

    tmp = tmp_path_factory.mktemp("monitoring")
    with pytest.MonkeyPatch.context() as mp:
        settings = apply_env(mp, tmp)
        spec = load_spec(make_classification_dataset(tmp / "data", days=22))
        validate_all = day_interval(START + dt.timedelta(days=21))
        ingest(spec, settings, validate_all, 22)
        validate(spec, settings, validate_all, 22)
        last = day_interval(TRAIN_END - dt.timedelta(days=1))
        build_features(spec, settings, last, WINDOW)
        trained = train(spec, settings, last, WINDOW)
        evaluate(spec, settings, last, trained.run_id, trained.model_uri, WINDOW)
        register(spec, settings, trained.run_id, trained.model_uri)
        yield spec, settings, mp


def _ledger(settings, spec) -> dict:
    path = Store(settings.store, spec.name).base / "reports" / "drift" / "ledger.json"
    return json.loads(path.read_text())["days"] if path.exists() else {}


def test_a_day_with_the_training_distribution_is_not_drift_and_its_outputs_are_written(world, caplog):
    spec, settings, _ = world
    caplog.set_level("INFO")
    result = monitor(spec, settings, day_interval(LATER))
    assert result.source == "validated" and result.rows == 24 and not result.trigger
    assert result.status == "ok", result.line
    assert result.model_version == "1" and result.alias == "champion"
    assert result.monitored == ["hour", "x1", "x2", "visits", "color"]
    # Labels arrived with the validated batch: the day's ROC AUC against the hold-out's.
    assert result.metric == "roc_auc" and 0.5 < result.current_score <= 1 and result.holdout_score is not None
    html = Store(settings.store, spec.name).base / result.report_relative
    assert html.name == "report.html" and html.stat().st_size > 10_000
    figures = json.loads((html.parent / "metrics.json").read_text())
    assert {c["column"] for c in figures["columns"]} == set(result.monitored)
    assert any(r.getMessage().startswith("no drift: ") for r in caplog.records)
    assert _ledger(settings, spec)[LATER.isoformat()]["status"] == "ok"

    from mlflow import MlflowClient

    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["mlcycle.monitored_version"] == "1" and run.data.tags["mlcycle.decision"] == "ok"
    assert run.data.metrics["drift_share"] == result.drift_share


def _log_predictions(settings, spec, day: dt.date, frame: pd.DataFrame) -> None:
    folder = Store(settings.store, spec.name).base / "predictions" / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part-test-1-0-000001.parquet")


def test_a_known_shift_in_the_logged_predictions_is_drift_and_triggers_once(world, caplog):
    spec, settings, _ = world
    day = LATER + dt.timedelta(days=1)
    store = Store(settings.store, spec.name)
    shifted = pd.read_parquet(store.validated(day))[spec.feature_names]
    shifted["x1"] = (shifted["x1"] * 0.2 + 0.8).clip(0, 1)  # every value in the top fifth
    shifted["x2"] = shifted["x2"] + 4.0
    shifted["visits"] = shifted["visits"] // 4
    _log_predictions(settings, spec, day, shifted.assign(prediction=1))
    caplog.set_level("INFO")
    first = monitor(spec, settings, day_interval(day))
    assert first.source == "predictions"  # the served rows, not the validated batch
    assert first.status == "drift" and first.trigger and first.episode == day.isoformat()
    assert {"x1", "x2", "visits"} <= set(first.drifted)
    assert any(r.getMessage().startswith("drift: ") for r in caplog.records)
    # Re-running the day returns its recorded decision and logs into the same MLflow run.
    again = monitor(spec, settings, day_interval(day))
    assert (
        again.replayed and again.trigger and again.episode == first.episode and again.run_id == first.run_id
    )
    # The next shifted day continues the episode: recorded, not triggered.
    nxt = day + dt.timedelta(days=1)
    _log_predictions(settings, spec, nxt, shifted.assign(prediction=1))
    follow = monitor(spec, settings, day_interval(nxt))
    assert follow.status == "drift" and not follow.trigger and follow.episode == day.isoformat()


def test_too_few_rows_is_nothing_to_monitor(world):
    spec, settings, _ = world
    strict = dataclasses.replace(spec, monitoring=dataclasses.replace(spec.monitoring, min_rows=25))
    day = LATER + dt.timedelta(days=3)
    with pytest.raises(
        NothingToDo, match="nothing to monitor: .* 24 validated row.*fewer than monitoring.min_rows 25"
    ):
        monitor(strict, settings, day_interval(day))
    assert day.isoformat() not in _ledger(settings, spec)


def test_a_day_without_data_is_nothing_to_monitor(world):
    spec, settings, _ = world
    with pytest.raises(NothingToDo, match="no logged predictions and no validated batch"):
        monitor(spec, settings, day_interval(START + dt.timedelta(days=40)))


def test_a_missing_feature_in_the_served_rows_fails_without_a_decision(world):
    spec, settings, _ = world
    day = LATER + dt.timedelta(days=4)
    rows = pd.read_parquet(Store(settings.store, spec.name).validated(day))[spec.feature_names].drop(
        columns="x2"
    )
    _log_predictions(settings, spec, day, rows.assign(prediction=1))
    with pytest.raises(MonitoringInputError, match="lacks the monitored feature.* x2"):
        monitor(spec, settings, day_interval(day))
    assert day.isoformat() not in _ledger(settings, spec)


def test_no_model_in_production_is_nothing_to_monitor(world, tmp_path):
    spec, _, mp = world
    bare = apply_env(mp, tmp_path)  # a fresh MLflow store: nothing registered
    Store(bare.store, spec.name)
    source = Store(world[1].store, spec.name)
    day = LATER + dt.timedelta(days=5)
    target = Store(bare.store, spec.name)
    target.validated_dir(day).mkdir(parents=True)
    (target.validated_dir(day) / "CURRENT.json").write_text(
        (source.validated_dir(day) / "CURRENT.json").read_text()
    )
    current = source.current_validated(day)
    target.validated_version_path(day, current.sha256).write_bytes(current.path.read_bytes())
    try:
        with pytest.raises(NothingToDo, match="no model of synthclass is in production yet"):
            monitor(spec, bare, day_interval(day))
    finally:
        apply_env(mp, world[1].home.parent)


def test_a_reference_whose_partitions_are_gone_fails_and_triggers_nothing(world):
    spec, settings, _ = world
    store = Store(settings.store, spec.name)
    gone = store.current_validated(START + dt.timedelta(days=3))
    kept = gone.path.read_bytes()
    gone.path.unlink()
    day = LATER + dt.timedelta(days=6)
    try:
        with pytest.raises(ReferenceMissing, match="training data of synthclass version 1 .* is gone"):
            monitor(spec, settings, day_interval(day))
    finally:
        gone.path.write_bytes(kept)
    assert day.isoformat() not in _ledger(settings, spec)
