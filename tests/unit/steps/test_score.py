"""The score step on the generated classification data set, against a real MLflow registry.

One module fixture trains and registers a small classifier through the real steps; the tests then
score single days: the predictions against the model loaded through ``mlflow.pyfunc``, both
inference paths, byte-identical re-runs, a rejected batch, and a champion that moves between runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mlcycle.errors import NothingToDo, StepError
from mlcycle.spec import load_spec
from mlcycle.steps.evaluate import evaluate
from mlcycle.steps.features import build_features
from mlcycle.steps.ingest import ingest
from mlcycle.steps.register import register
from mlcycle.steps.score import resolve_version, score, scores_dir
from mlcycle.steps.train import train
from mlcycle.steps.validate import validate
from mlcycle.store import Store, write_parquet
from tests.datasets import make_classification_dataset, write_spec_variant
from tests.unit.conftest import apply_env, day_interval

WINDOW = 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):

    tmp = tmp_path_factory.mktemp("score")
    with pytest.MonkeyPatch.context() as mp:
        settings = apply_env(mp, tmp)
        mp.setenv("MLCYCLE_DATA_DOCS", "off")
        base = make_classification_dataset(tmp / "data", days=30)
        spec = load_spec(
            write_spec_variant(
                base,
                tmp / "data" / "synthclass.yaml",
                window={"min_training_rows": 100},
                scoring={"batch_rows": 7, "postgres": {"conn_id": "unused", "table": "scores"}},
            )
        )
        interval = day_interval(dt.date(2011, 3, 20))
        ingest(spec, settings, interval, WINDOW)
        validate(spec, settings, interval, WINDOW)
        build_features(spec, settings, interval, WINDOW)
        run = train(spec, settings, interval, WINDOW)
        evaluate(spec, settings, interval, run.run_id, run.model_uri, WINDOW)
        register(spec, settings, run.run_id, run.model_uri)
        yield SimpleNamespace(
            spec=spec,
            settings=settings,
            tmp=tmp,
            mp=mp,
            model_uri=run.model_uri,
            store=Store(settings.store, spec.name),
        )


def _validated(trained, day: dt.date):
    interval = day_interval(day)
    ingest(trained.spec, trained.settings, interval, 1)
    validate(trained.spec, trained.settings, interval, 1)
    return interval


def test_a_day_is_scored_as_mlflow_pyfunc_scores_it_with_lineage(trained):
    import mlflow

    day = dt.date(2011, 3, 22)
    interval = _validated(trained, day)
    result = score(trained.spec, trained.settings, interval)
    folder = scores_dir(trained.store, day)
    scores = pd.read_parquet(folder / "data.parquet")
    rows = pd.read_parquet(trained.store.current_validated(day).path)

    assert result.version == "1" and result.rows == len(rows) == len(scores) == 24
    assert list(scores.columns) == [
        "event_time",
        "prediction",
        "proba_0",
        "proba_1",
        "model_name",
        "model_version",
        "run_id",
    ]
    assert (scores["event_time"].to_numpy() == rows["event_time"].to_numpy()).all()
    assert set(scores["model_version"]) == {"1"} and set(scores["run_id"]) == {"unit__run_1"}
    model = mlflow.pyfunc.load_model("models:/synthclass/1")
    features = rows[trained.spec.feature_names]
    assert (scores["prediction"].to_numpy() == model.predict(features)).all()
    proba = model.get_raw_model().predict_proba(features)
    assert np.abs(scores[["proba_0", "proba_1"]].to_numpy() - proba).max() <= 1e-6
    # batch_rows 7: four row groups of at most 7 rows, the memory bound of the step
    import pyarrow.parquet as pq

    assert pq.ParquetFile(folder / "data.parquet").metadata.num_row_groups == 4
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["model"]["version"] == "1" and lineage["model"]["alias"] == "champion"
    assert lineage["code_version"] == "0.0.0+gtest" and lineage["data"]["fingerprint"] == result.fingerprint
    assert lineage["data"]["validated_sha256"] == trained.store.current_validated(day).sha256
    assert trained.store.files_for_fingerprint(result.fingerprint) == [
        trained.store.current_validated(day).path
    ]
    load = pd.read_csv(folder / "load.csv")
    assert list(load.columns) == ["date", *scores.columns] and set(load["date"]) == {day.isoformat()}


def test_a_rerun_gives_the_same_bytes_and_both_paths_agree(trained, monkeypatch):
    day = dt.date(2011, 3, 22)
    score(trained.spec, trained.settings, _validated(trained, day), "1", "champion")  # in any test order
    folder = scores_dir(trained.store, day)
    before = {name: (folder / name).read_bytes() for name in ("data.parquet", "load.csv", "lineage.json")}
    again = dataclasses.replace(trained.settings, run_id="unit__run_2")  # another Airflow run of the interval
    first = score(trained.spec, again, day_interval(day), "1", "champion")
    assert {name: (folder / name).read_bytes() for name in before} == before, "a re-run changed the partition"
    assert first.path == "onnx" and first.rows == 24
    (folder / "lineage.json").unlink()  # no record of the first run: scored again, to the same data bytes
    first = score(trained.spec, trained.settings, day_interval(day), "1", "champion")
    assert (folder / "data.parquet").read_bytes() == before["data.parquet"]
    assert (folder / "load.csv").read_bytes() == before["load.csv"]

    monkeypatch.setenv("MLCYCLE_SCORING_PATH", "pipeline")
    onnx = pd.read_parquet(folder / "data.parquet")
    exact = score(trained.spec, trained.settings, day_interval(day), "1", "champion")
    assert (first.path, exact.path) == ("onnx", "pipeline")
    monkeypatch.setenv("MLCYCLE_SCORING_PATH", "")
    pipeline = pd.read_parquet(folder / "data.parquet")
    assert (onnx["prediction"] == pipeline["prediction"]).all()
    assert (
        np.abs(onnx[["proba_0", "proba_1"]].to_numpy() - pipeline[["proba_0", "proba_1"]].to_numpy()).max()
        <= 1e-6
    )


def test_a_batch_shared_among_sessions_scores_as_one(trained, monkeypatch):
    from mlcycle.steps import score as step

    day = dt.date(2011, 3, 22)
    interval = _validated(trained, day)  # in any test order
    whole = score(trained.spec, trained.settings, interval, "1", "champion")
    before = pd.read_parquet(scores_dir(trained.store, day) / "data.parquet")
    monkeypatch.setenv("MLCYCLE_THREADS", "3")
    monkeypatch.setattr(step, "PARALLEL_MIN_ROWS", 2)  # every 7-row batch split among three sessions
    (scores_dir(trained.store, day) / "lineage.json").unlink()
    shared = score(trained.spec, trained.settings, interval, "1", "champion")
    after = pd.read_parquet(scores_dir(trained.store, day) / "data.parquet")
    assert whole.path == shared.path == "onnx"
    pd.testing.assert_frame_equal(before, after)


def test_batches_run_in_bounded_chunks_read_ahead_and_written_in_order(trained, monkeypatch):
    """Each ONNX run holds at most CHUNK_ROWS rows; with the next batch read ahead and the previous one
    written behind, on one thread or shared among sessions, the partition is the one a batch at a time gives."""
    from mlcycle.steps import score as step

    day = dt.date(2011, 3, 22)
    interval = _validated(trained, day)  # in any test order
    score(trained.spec, trained.settings, interval, "1", "champion")
    before = pd.read_parquet(scores_dir(trained.store, day) / "data.parquet")
    sizes: list[int] = []
    encode = step._onnx_inputs
    monkeypatch.setattr(
        step, "_onnx_inputs", lambda model, frame: (sizes.append(len(frame)), encode(model, frame))[1]
    )
    monkeypatch.setattr(step, "CHUNK_ROWS", 3)
    for threads, shared_from in (("1", 20_000), ("2", 2)):
        monkeypatch.setenv("MLCYCLE_THREADS", threads)
        monkeypatch.setattr(step, "PARALLEL_MIN_ROWS", shared_from)
        sizes.clear()
        (scores_dir(trained.store, day) / "lineage.json").unlink()
        result = score(trained.spec, trained.settings, interval, "1", "champion")
        after = pd.read_parquet(scores_dir(trained.store, day) / "data.parquet")
        assert result.path == "onnx" and sum(sizes) == 24
        assert max(sizes) <= 3, f"an ONNX run of {max(sizes)} rows with CHUNK_ROWS 3 ({threads} thread(s))"
        pd.testing.assert_frame_equal(before, after)


def test_a_rejected_batch_is_not_scored(trained):
    day = dt.date(2011, 3, 23)
    interval = _validated(trained, day)
    raw = trained.store.raw(day)
    bad = pd.read_parquet(raw).assign(color="ultraviolet")  # what a rejected re-ingest leaves in raw/
    write_parquet(bad, raw)
    with pytest.raises(StepError, match="is not its validated version: it was rejected"):
        score(trained.spec, trained.settings, interval)
    assert not (scores_dir(trained.store, day) / "data.parquet").exists()
    with pytest.raises(StepError, match="no validated partition for 2011-03-24"):
        score(trained.spec, trained.settings, day_interval(dt.date(2011, 3, 24)))


def test_a_champion_that_moves_during_a_backfill_each_run_records_its_version(trained):
    import mlflow
    from mlflow import MlflowClient

    days = [dt.date(2011, 3, 25), dt.date(2011, 3, 26)]
    for day in days:
        _validated(trained, day)
    # run 1 resolves its version at its start; the champion moves before its score task runs
    fixed = resolve_version(trained.spec, trained.settings)
    v2 = mlflow.register_model(trained.model_uri, "synthclass").version
    MlflowClient().set_registered_model_alias("synthclass", "champion", str(v2))
    first = score(trained.spec, trained.settings, day_interval(days[0]), fixed.version, fixed.alias)
    # run 2 starts after the move
    moved = resolve_version(trained.spec, trained.settings)
    second = score(trained.spec, trained.settings, day_interval(days[1]), moved.version, moved.alias)

    assert (fixed.version, moved.version) == ("1", str(v2)) and (first.version, second.version) == (
        "1",
        str(v2),
    )
    recorded = [
        json.loads((scores_dir(trained.store, d) / "lineage.json").read_text())["model"]["version"]
        for d in days
    ]
    assert recorded == ["1", str(v2)]
    assert set(pd.read_parquet(scores_dir(trained.store, days[1]) / "data.parquet")["model_version"]) == {
        str(v2)
    }
    # @production, once the deploy DAG sets it, wins over @champion
    MlflowClient().set_registered_model_alias("synthclass", "production", "1")
    try:
        assert resolve_version(trained.spec, trained.settings).alias == "production"
    finally:  # the module's other tests score with @champion at version 1, in any order
        MlflowClient().delete_registered_model_alias("synthclass", "production")
        MlflowClient().set_registered_model_alias("synthclass", "champion", "1")


def test_monitoring_watches_the_batch_predictions_with_their_performance(trained):
    """``monitoring.source: scoring``: the scored rows with their predictions, and performance from them."""
    from mlcycle.modeling import score as metric
    from mlcycle.monitoring.data import current_data

    spec = dataclasses.replace(
        trained.spec, monitoring=dataclasses.replace(trained.spec.monitoring, source="scoring")
    )
    day = dt.date(2011, 3, 22)
    score(trained.spec, trained.settings, _validated(trained, day), "1", "champion")  # in any test order
    current = current_data(spec, trained.store, day, day + dt.timedelta(days=1))
    scores = pd.read_parquet(scores_dir(trained.store, day) / "data.parquet")
    assert current.source == "scoring" and len(current.frame) == 24
    assert (current.frame["prediction"].to_numpy() == scores["prediction"].to_numpy()).all()
    assert current.labelled is not None and len(current.labelled) == 24
    from mlcycle.monitoring.step import _Recorded

    recorded = metric(
        spec, _Recorded(current.labelled), current.labelled[spec.feature_names], current.labelled[spec.target]
    )
    from sklearn.metrics import roc_auc_score

    assert recorded == pytest.approx(roc_auc_score(current.labelled[spec.target], scores["proba_1"]))
    with pytest.raises(NothingToDo, match="no batch predictions"):
        current_data(spec, trained.store, dt.date(2011, 3, 28), dt.date(2011, 3, 29))


def test_no_model_yet_is_nothing_to_do(trained):
    other = dataclasses.replace(
        trained.spec, model=dataclasses.replace(trained.spec.model, registered_name="no_such_model")
    )
    with pytest.raises(NothingToDo, match="nothing to score with: no_such_model has no version"):
        resolve_version(other, trained.settings)
