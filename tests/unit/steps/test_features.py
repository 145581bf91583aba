"""build_features: the validated window split by time (no leakage), and a clear NotEnoughData.

To stay fast, these tests publish ingested partitions straight to the validated store (what
validate does once the suite passes) instead of running Great Expectations.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from mlcycle.errors import NotEnoughData, StepError
from mlcycle.spec import EVENT_TIME, load_spec
from mlcycle.steps.features import build_features
from mlcycle.steps.ingest import ingest
from mlcycle.store import Store, days, write_parquet
from tests.datasets import write_spec_variant
from tests.unit.conftest import day_interval

LAST = dt.date(2011, 3, 21)  # the window of a run for LAST, 21 days: 2011-03-01 to 2011-03-21


def _publish_window(spec, settings, last=LAST, window_days=None, skip=()):
    result = ingest(spec, settings, day_interval(last), window_days=window_days)
    store = Store(settings.store, spec.name)
    for day in days(dt.date.fromisoformat(result.window_start), dt.date.fromisoformat(result.window_end)):
        if day not in skip:
            store.publish(day)
    return store


def test_time_split_has_no_leakage(clf_spec, settings):
    store = _publish_window(clf_spec, settings)
    result = build_features(clf_spec, settings, day_interval(LAST))
    folder = store.features_dir(LAST + dt.timedelta(days=1))
    assert result.path == str(folder)
    train, evaluation = pd.read_parquet(folder / "train.parquet"), pd.read_parquet(folder / "eval.parquet")
    assert train[EVENT_TIME].max() < evaluation[EVENT_TIME].min()
    # The evaluation slice is exactly the last holdout_days (5) of the window.
    assert sorted(evaluation[EVENT_TIME].dt.date.unique()) == days(dt.date(2011, 3, 17), dt.date(2011, 3, 22))
    assert (result.train_rows, result.eval_rows) == (16 * 24, 5 * 24) == (len(train), len(evaluation))
    # Every spec column (ts is ignored as a feature but kept: a champion of another spec may need it)
    assert list(train.columns) == ["ts", *clf_spec.feature_names, "label", EVENT_TIME]
    assert train[EVENT_TIME].is_monotonic_increasing
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["split_at"] == "2011-03-17T00:00:00+00:00" and manifest["fingerprint"] == result.fingerprint
    assert len(manifest["partitions"]) == 21 and manifest["missing_days"] == []


def test_the_fingerprint_names_the_validated_bytes(clf_spec, settings):
    store = _publish_window(clf_spec, settings)
    first = build_features(clf_spec, settings, day_interval(LAST))
    assert build_features(clf_spec, settings, day_interval(LAST)).fingerprint == first.fingerprint
    restated = dt.date(2011, 3, 3)
    changed = pd.read_parquet(store.raw(restated))
    changed.loc[0, "x1"] = 0.5
    write_parquet(changed, store.raw(restated))
    store.publish(restated)
    second = build_features(clf_spec, settings, day_interval(LAST))
    assert second.fingerprint != first.fingerprint and second.path != first.path
    manifest = json.loads((Path(second.path) / "manifest.json").read_text())
    assert manifest["partitions"][2]["file"] == str(store.validated(restated).relative_to(store.base))


def test_a_models_fingerprint_resolves_to_the_same_bytes_after_a_restatement(clf_spec, settings):
    store = _publish_window(clf_spec, settings)
    first = build_features(clf_spec, settings, day_interval(LAST))
    before = {p: p.read_bytes() for p in store.files_for_fingerprint(first.fingerprint)}
    assert len(before) == 21
    restated = dt.date(2011, 3, 3)
    write_parquet(pd.read_parquet(store.raw(restated)).head(20), store.raw(restated))
    store.publish(restated)  # the day's current version changes ...
    assert build_features(clf_spec, settings, day_interval(LAST)).fingerprint != first.fingerprint
    # ... and the first fingerprint still names the very bytes it was built from.
    after = store.files_for_fingerprint(first.fingerprint)
    assert {p: p.read_bytes() for p in after} == before
    assert pd.concat(pd.read_parquet(p) for p in after).shape[0] == first.train_rows + first.eval_rows


def test_a_validated_file_changed_outside_the_pipeline_is_refused(clf_spec, settings):
    store = _publish_window(clf_spec, settings)
    write_parquet(pd.read_parquet(store.raw(dt.date(2011, 3, 3))).head(3), store.validated(dt.date(2011, 3, 3)))
    with pytest.raises(StepError, match="no longer holds the bytes its name says"):
        build_features(clf_spec, settings, day_interval(LAST))


def test_days_without_a_validated_partition_are_left_out_and_listed(clf_spec, settings, caplog):
    hole = dt.date(2011, 3, 10)
    store = _publish_window(clf_spec, settings, skip={hole})
    result = build_features(clf_spec, settings, day_interval(LAST))
    assert result.train_rows + result.eval_rows == 20 * 24
    manifest = json.loads((store.features_dir(LAST + dt.timedelta(days=1)) / "manifest.json").read_text())
    assert manifest["missing_days"] == ["2011-03-10"]
    assert "no validated partition: 2011-03-10" in caplog.text


def test_not_enough_data_says_what_to_do(tmp_path, clf_spec, settings):
    spec = load_spec(write_spec_variant(clf_spec.path, tmp_path / "big.yaml", window={"min_training_rows": 5000}))
    _publish_window(spec, settings)
    with pytest.raises(NotEnoughData) as info:
        build_features(spec, settings, day_interval(LAST))
    message = str(info.value)
    assert "holds 504 validated rows" in message and "at least 5000 (window.min_training_rows)" in message
    assert "Widen the window (param window_days) or backfill earlier dates" in message
    assert not Store(settings.store, spec.name).features_dir(LAST + dt.timedelta(days=1)).exists()


def test_no_validated_data_at_all(clf_spec, settings):
    with pytest.raises(NotEnoughData, match="holds 0 validated rows"):
        build_features(clf_spec, settings, day_interval(LAST))


def test_a_window_shorter_than_the_holdout_leaves_no_training_slice(clf_spec, settings, tmp_path):
    spec = load_spec(write_spec_variant(clf_spec.path, tmp_path / "small.yaml", window={"min_training_rows": 10}))
    _publish_window(spec, settings, window_days=3)
    with pytest.raises(NotEnoughData, match=r"empty slice \(train 0 rows, evaluation 72 rows\)"):
        build_features(spec, settings, day_interval(LAST), window_days=3)
