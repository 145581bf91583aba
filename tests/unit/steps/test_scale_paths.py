"""The paths that keep large windows affordable, each against the plain path it replaces.

- the search's sample: a bounded, reproducible share of every day, in time order;
- train: the search on that sample, the winner refit on every row of the training slice;
- a Parquet source: read column-wise and per day, the same raw partitions as the same rows in CSV,
  only the row groups of the window, only the spec's columns;
- a native timestamp column, declared ``timestamp``, validated as such.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mlcycle.errors import SpecError, ValidationFailed
from mlcycle.modeling import build_pipeline, time_stratified_sample
from mlcycle.sources import reader_for
from mlcycle.spec import EVENT_TIME, load_spec
from mlcycle.steps.ingest import ingest
from mlcycle.steps.validate import validate
from mlcycle.store import Store, days
from mlcycle.timestamps import local_days
from tests.datasets import make_classification_dataset, write_spec_variant
from tests.unit.conftest import day_interval

SIZES = np.array([100, 200, 300, 50, 50, 100, 100, 50, 25, 25])


def test_a_time_stratified_sample_keeps_every_days_share_in_order():
    strata = np.repeat(np.arange(len(SIZES)), SIZES)  # 1,000 rows over 10 days
    positions = time_stratified_sample(strata, 300, seed=3)
    assert len(positions) == 300 and np.all(np.diff(positions) > 0)
    per_day = np.bincount(strata[positions], minlength=len(SIZES))
    assert np.all(np.abs(per_day - SIZES * 0.3) < 1), per_day  # each day its share, rounded
    assert np.array_equal(positions, time_stratified_sample(strata, 300, seed=3))
    assert not np.array_equal(positions, time_stratified_sample(strata, 300, seed=4))
    assert time_stratified_sample(strata, 1_000, seed=3) is None  # everything fits: no sample
    shuffled = np.random.default_rng(0).permutation(strata)  # strata need not be contiguous
    per_day = np.bincount(shuffled[time_stratified_sample(shuffled, 300, seed=3)], minlength=len(SIZES))
    assert np.all(np.abs(per_day - SIZES * 0.3) < 1)


def _feature_table(spec, settings, interval) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The spec's rows as build_features would split them, written as the current feature table."""
    raw = pd.read_csv(spec.source.path())
    raw[EVENT_TIME] = pd.to_datetime(raw["ts"], format="%Y-%m-%dT%H:%M:%SZ", utc=True)
    cutoff = pd.Timestamp(interval.end - dt.timedelta(days=spec.evaluation.holdout_days), tz="UTC")
    train, evaluation = raw[raw[EVENT_TIME] < cutoff], raw[raw[EVENT_TIME] >= cutoff]
    store = Store(settings.store, spec.name)
    with store.new_features(interval.end) as folder:
        train.to_parquet(folder / "train.parquet", index=False)
        evaluation.to_parquet(folder / "eval.parquet", index=False)
        (folder / "manifest.json").write_text(json.dumps({"fingerprint": "f" * 16}))
    return train.reset_index(drop=True), evaluation.reset_index(drop=True)


def test_the_search_runs_on_a_sample_and_the_winner_learns_from_every_row(tmp_path, settings, monkeypatch):
    import mlflow

    from mlcycle.steps.train import train

    monkeypatch.setattr(mlflow.models, "infer_pip_requirements", lambda *a, fallback=None, **k: fallback)
    spec = load_spec(
        write_spec_variant(
            make_classification_dataset(tmp_path / "data", days=60),
            tmp_path / "sampled.yaml",
            model={"search": {"max_rows": 1_000}},
            window={"days": 60},
        )
    )
    interval = day_interval(spec.data_end)
    rows, evaluation = _feature_table(spec, settings, interval)
    assert len(rows) > 1_200
    result = train(spec, settings, interval)
    params = mlflow.get_run(result.run_id).data.params
    assert (params["search_rows"], params["train_rows"]) == ("1000", str(len(rows)))
    # the logged model is the winner fit on every row, not on the search's sample
    best = {
        f"model__{k}": type(getattr(build_pipeline(spec).named_steps["model"], k))(v)
        for k, v in params.items()
        if k in build_pipeline(spec).named_steps["model"].get_params()
    }
    full = build_pipeline(spec).set_params(**best).fit(rows[spec.feature_names], rows[spec.target])
    logged = mlflow.sklearn.load_model(result.model_uri)
    x_eval = evaluation[spec.feature_names]
    assert np.allclose(logged.predict_proba(x_eval), full.predict_proba(x_eval))
    days_of = local_days(rows[EVENT_TIME], spec.timezone)
    sample = rows.iloc[time_stratified_sample(days_of, 1_000, spec.model.seed)]
    on_sample = build_pipeline(spec).set_params(**best).fit(sample[spec.feature_names], sample[spec.target])
    assert not np.allclose(logged.predict_proba(x_eval), on_sample.predict_proba(x_eval))


def _as_parquet(spec_path, tmp_path, extra_column: bool = True, group_rows: int = 24):
    """The classification CSV with three unparseable timestamps, as CSV and as Parquet (a row group
    a day), and a spec for each; the Parquet file also holds a column the spec does not name."""
    spec = load_spec(spec_path)
    frame = pd.read_csv(spec.source.path())
    frame.loc[[5, 100, 200], "ts"] = "not a time"
    csv = tmp_path / "rows.csv"
    frame.to_csv(csv, index=False)
    if extra_column:
        frame["promo_code"] = "none"
    parquet = tmp_path / "rows.parquet"
    frame.to_parquet(parquet, index=False, row_group_size=group_rows)
    specs = {}
    for kind, path in (("csv", csv), ("parquet", parquet)):
        specs[kind] = load_spec(
            write_spec_variant(
                spec_path, tmp_path / f"{kind}.yaml", source={"path": str(path), "format": kind}
            )
        )
    return specs


def test_a_parquet_source_gives_the_partitions_of_the_same_rows_in_csv(tmp_path, settings, monkeypatch):
    specs = _as_parquet(make_classification_dataset(tmp_path / "data", days=30), tmp_path)
    interval = day_interval(dt.date(2011, 3, 20))
    groups_read: list[list[int]] = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_groups",
        lambda self, groups, **kw: groups_read.append(list(groups)) or real(self, groups, **kw),
    )
    results = {kind: ingest(spec, settings, interval, window_days=5) for kind, spec in specs.items()}
    assert results["csv"].rows == results["parquet"].rows == 5 * 24
    assert (
        results["csv"].dropped
        == results["parquet"].dropped
        == {"unparseable_timestamp": 3, "timestamp_out_of_range": 0, "outside_source_bounds": 0}
    )
    assert groups_read == [list(range(15, 20))]  # the window's five days, a row group each
    for day in days(dt.date(2011, 3, 16), dt.date(2011, 3, 21)):
        from_csv = pd.read_parquet(Store(settings.store, specs["csv"].name).raw(day))
        from_parquet = pd.read_parquet(Store(settings.store, specs["parquet"].name).raw(day))
        assert "promo_code" not in from_parquet  # a column the spec does not name is not read
        pd.testing.assert_frame_equal(from_csv, from_parquet)
        assert len(from_parquet) == 24
    records = [
        json.loads(Store(settings.store, s.name).ingest_record(dt.date(2011, 3, 21)).read_text())
        for s in specs.values()
    ]
    assert records[0]["dropped_examples"] == records[1]["dropped_examples"]
    assert records[0]["source_rows_read"] == records[1]["source_rows_read"] == 720


def test_a_parquet_window_streams_one_local_day_at_a_time(tmp_path):
    spec_path = make_classification_dataset(tmp_path / "data", days=10)
    specs = _as_parquet(spec_path, tmp_path, extra_column=False, group_rows=1_000)
    zoned = load_spec(
        write_spec_variant(
            tmp_path / "parquet.yaml", tmp_path / "zoned.yaml", timestamp={"timezone": "America/New_York"}
        )
    )
    for spec in (specs["parquet"], zoned):
        selection = reader_for(spec).read(dt.date(2011, 3, 3), dt.date(2011, 3, 7))
        batches = list(selection.parts())
        assert len(batches) == 4
        for batch in batches:
            assert len(set(local_days(batch[EVENT_TIME], spec.timezone))) == 1
            assert batch[EVENT_TIME].is_monotonic_increasing
    empty = list(reader_for(specs["parquet"]).read(dt.date(2012, 1, 1), dt.date(2012, 1, 2)).parts())
    assert [len(b) for b in empty] == [0] and EVENT_TIME in empty[0]


def _timestamped(tmp_path, pickup) -> object:
    """The classification data set with a native ``pickup`` column, declared as a timestamp."""
    spec_path = make_classification_dataset(tmp_path / "data", days=10)
    frame = pd.read_csv(load_spec(spec_path).source.path())
    frame["pickup"] = pickup(pd.to_datetime(frame["ts"], format="%Y-%m-%dT%H:%M:%SZ"))
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path, index=False)
    return load_spec(
        write_spec_variant(
            spec_path,
            tmp_path / "ts.yaml",
            source={"path": str(path), "format": "parquet"},
            columns={"pickup": {"type": "timestamp", "role": "ignore"}},
            validation={"suite": str(tmp_path / "derived-from-the-spec.json")},
        )
    )


@pytest.mark.parametrize("zone", [None, "Europe/Paris"])
def test_a_native_timestamp_column_is_declared_and_validated(tmp_path, settings, zone):
    spec = _timestamped(tmp_path, lambda t: t.dt.tz_localize(zone) if zone else t)
    interval = day_interval(dt.date(2011, 3, 5))
    ingest(spec, settings, interval, window_days=2)
    assert validate(spec, settings, interval, window_days=2).validated == 2
    raw = pd.read_parquet(Store(settings.store, spec.name).raw(dt.date(2011, 3, 5)))
    assert raw["pickup"].dtype.kind == "M" and raw["pickup"].dt.tz is None
    # an aware column is kept in UTC: the same instants as the row's timestamp
    shift = pd.Timedelta(hours=1) if zone else pd.Timedelta(0)
    assert (raw["pickup"] + shift == raw[EVENT_TIME].dt.tz_localize(None)).all()


def test_text_in_a_timestamp_column_fails_validation(tmp_path, settings):
    spec = _timestamped(tmp_path, lambda t: t.dt.strftime("%Y-%m-%d %H:%M"))
    interval = day_interval(dt.date(2011, 3, 5))
    ingest(spec, settings, interval, window_days=1)
    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_in_type_list on `pickup`"):
        validate(spec, settings, interval, window_days=1)


def test_a_timestamp_column_is_neither_a_feature_nor_bounded(tmp_path):
    spec_path = make_classification_dataset(tmp_path / "data", days=10)
    for column, problem in (
        ({"type": "timestamp"}, "a timestamp column is not a feature"),
        ({"type": "timestamp", "role": "ignore", "min": 0}, "takes no min, max or values"),
    ):
        with pytest.raises(SpecError, match=problem):
            load_spec(write_spec_variant(spec_path, tmp_path / "bad.yaml", columns={"pickup": column}))
