"""History features through the steps: ingest brings the lookback into the store, build_features adds
the features to both slices, materialize writes the snapshot tables they equal, day by day and
idempotently. The flight events of the tests, by zone, in New York time across a daylight-saving
change.

The partitions are published straight to the validated store (what validate does once the suite
passes), as in test_features.py.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

from mlcycle.errors import NothingToDo
from mlcycle.spec import EVENT_TIME, load_spec
from mlcycle.steps._common import Interval
from mlcycle.steps.features import build_features
from mlcycle.steps.ingest import ingest
from mlcycle.steps.materialize import history_file, materialize
from mlcycle.store import Store, days, file_sha256
from tests.datasets import EVENT_HISTORY_FEATURES, make_events_dataset, write_spec_variant
from tests.unit.conftest import day_interval

FIRST = dt.date(2023, 2, 27)
LAST = dt.date(2023, 3, 19)  # 21 days of events: the window of a run for LAST is 14 days, the lookback 7
FEATURES = EVENT_HISTORY_FEATURES


@pytest.fixture
def spec(tmp_path):
    base = make_events_dataset(tmp_path / "data", start=FIRST.isoformat(), days=21)
    return load_spec(
        write_spec_variant(
            base, tmp_path / "data" / "flights_history.yaml", name="flights_history", features=FEATURES
        )
    )


def _publish(spec, settings, last=LAST):
    result = ingest(spec, settings, day_interval(last))
    store = Store(settings.store, spec.name)
    for day in days(dt.date.fromisoformat(result.window_start), dt.date.fromisoformat(result.window_end)):
        store.publish(day)
    return store, result


def test_ingest_brings_the_lookback_and_the_features_equal_the_materialized_snapshots(spec, settings):
    store, ingested = _publish(spec, settings)
    assert ingested.window_start == FIRST.isoformat()  # 14 days of window + 7 of lookback
    features = build_features(spec, settings, day_interval(LAST))
    folder = store.features_dir(LAST + dt.timedelta(days=1))
    table = pd.concat([pd.read_parquet(folder / "train.parquet"), pd.read_parquet(folder / "eval.parquet")])
    # the lookback is in the store: no unknown window (an hour and carrier without flights has no mean)
    assert table[["late_share_7d", "flights_7d", "carrier_delay_max_2d"]].notna().all().all()
    assert features.train_rows + features.eval_rows == len(table)
    window = days(LAST - dt.timedelta(days=13), LAST + dt.timedelta(days=1))
    done = materialize(spec, settings, Interval(window[0] - dt.timedelta(days=1), window[-1]))
    assert done.rows == {"by_zone": 100 * 14, "by_carrier": 4 * 14, "by_hour_carrier": 24 * 4 * 14}
    for view, entity in (
        ("by_zone", ["zone"]),
        ("by_carrier", ["carrier"]),
        ("by_hour_carrier", ["hour", "carrier"]),
    ):
        snapshots = pd.concat(
            pd.read_parquet(history_file(store, view, d))
            for d in days(window[0] - dt.timedelta(days=1), window[-1])
        )
        local = table[EVENT_TIME].dt.tz_convert(spec.timezone)
        midnight = local.dt.floor("D", ambiguous=True, nonexistent="shift_forward").dt.tz_convert("UTC")
        joined = table.assign(snapshot_time=midnight.dt.as_unit("ns")).merge(
            snapshots, on=[*entity, "snapshot_time"], suffixes=("", "_offline"), validate="many_to_one"
        )
        assert len(joined) == len(table)
        names = [f.name for f in spec.history.of_entity(tuple(entity))]
        for name in names:
            np.testing.assert_allclose(joined[name], joined[f"{name}_offline"], err_msg=name)


def test_materializing_a_day_again_writes_the_same_bytes_and_a_missing_day_is_skipped(spec, settings):
    store, _ = _publish(spec, settings)
    day = dt.date(2023, 3, 12)  # clocks go forward in New York
    materialize(spec, settings, day_interval(day))
    first = file_sha256(history_file(store, "by_zone", day))
    again = materialize(spec, settings, day_interval(day))
    assert file_sha256(history_file(store, "by_zone", day)) == first and again.days == [day.isoformat()]
    table = pd.read_parquet(history_file(store, "by_zone", day))
    assert set(table.snapshot_time) == {pd.Timestamp("2023-03-13", tz="America/New_York").tz_convert("UTC")}
    with pytest.raises(NothingToDo, match="no day of"):
        materialize(spec, settings, day_interval(LAST + dt.timedelta(days=3)))


def test_feast_point_in_time_join_and_online_store_equal_what_training_and_serving_get(spec, settings):
    """The skew test: Feast's historical retrieval over the materialized snapshot files gives every
    training row exactly its build_features values, and after the last day is materialized the online
    store holds, per entity, the vector every row of the next day was trained with."""
    from mlcycle.feature_store import FeatureRepo

    store, _ = _publish(spec, settings)
    build_features(spec, settings, day_interval(LAST))
    folder = store.features_dir(LAST + dt.timedelta(days=1))
    table = pd.concat(
        [pd.read_parquet(folder / "train.parquet"), pd.read_parquet(folder / "eval.parquet")],
        ignore_index=True,
    )
    first = LAST - dt.timedelta(days=14)  # the day before the window: its snapshot is the window's first
    materialize(spec, settings, Interval(first, LAST))  # up to the eve of the last day
    repo = FeatureRepo(spec, store.base)
    sample = table.sample(400, random_state=1).reset_index(drop=True)
    offline = repo.historical(sample)
    for name in spec.history.names:
        np.testing.assert_allclose(
            offline[name].to_numpy(dtype=float), sample[name].to_numpy(dtype=float), err_msg=name
        )
    last_day = table[table[EVENT_TIME].dt.tz_convert(spec.timezone).dt.date == LAST]
    for entity in spec.history.entities:
        rows = last_day.drop_duplicates(list(entity)).head(20)
        online = repo.online_features(entity, rows[list(entity)].to_dict("records"))
        for f in spec.history.of_entity(entity):
            np.testing.assert_allclose(
                online[f.name].to_numpy(dtype=float), rows[f.name].to_numpy(dtype=float), err_msg=f.name
            )

    # Feast's own UI and registry API (`mlcycle feature-ui`) show the views with their definitions
    from fastapi.testclient import TestClient

    from mlcycle.feature_store import ui_app

    with TestClient(ui_app(spec, store.base)) as ui:
        assert spec.name in ui.get("/projects-list.json").text
        views = ui.get("/api/v1/feature_views", params={"project": spec.name})
        assert views.status_code == 200, views.text
        assert {"by_zone", "by_carrier", "by_hour_carrier"} <= set(
            re.findall(r'"name":\s*"(by_[a-z_]+)"', views.text)
        )
        assert "late_share_7d: share of late == 1 over 7d by zone" in views.text


def test_a_backfill_day_by_day_leaves_the_stores_as_one_run_over_the_week(tmp_path, spec, monkeypatch):
    """Seven one-day runs, then a re-run of an older day: the offline files and the online store are
    those of one run over the seven days (the online store is never moved back to an older day)."""
    from mlcycle.feature_store import FeatureRepo
    from tests.unit.conftest import apply_env

    week = days(dt.date(2023, 3, 8), dt.date(2023, 3, 15))
    states = []
    for label, intervals in (
        ("one run", [Interval(week[0], week[-1] + dt.timedelta(days=1))]),
        ("day by day", [day_interval(d) for d in (*week, week[2])]),
    ):
        settings = apply_env(monkeypatch, tmp_path / label)
        store, _ = _publish(spec, settings)
        for interval in intervals:
            materialize(spec, settings, interval)
        repo = FeatureRepo(spec, store.base)
        online = {
            ("zone",): repo.online_features(("zone",), [{"zone": "z001"}, {"zone": "z050"}]),
            ("carrier",): repo.online_features(("carrier",), [{"carrier": "AA"}, {"carrier": "WN"}]),
        }
        states.append(({d: file_sha256(history_file(store, "by_zone", d)) for d in week}, online))
    assert states[0][0] == states[1][0]
    for entity in states[0][1]:
        pd.testing.assert_frame_equal(states[0][1][entity], states[1][1][entity])


@pytest.mark.parametrize("online", ["sqlite", "redis"])
def test_the_server_builds_from_the_online_store_the_vector_training_used(
    spec, settings, tmp_path, online, request, monkeypatch, caplog
):
    """The skew test at the server, with either online store (Feast writes it, the server reads it
    without Feast): rows of the day after the last materialized one, sent without history features,
    are answered exactly as the Pipeline answers their training vectors (history values from
    build_features); /metadata shows what was fetched and how fresh; a client cannot send a history
    feature. A Redis that does not answer gets 503, not predictions from fills."""
    from mlcycle.modeling import build_pipeline
    from tests.unit.serving.conftest import app_client, save_model_folder

    if online == "redis":
        monkeypatch.setenv("MLCYCLE_ONLINE_STORE", request.getfixturevalue("redis_url"))
    store, _ = _publish(spec, settings)
    build_features(spec, settings, day_interval(LAST))
    folder = store.features_dir(LAST + dt.timedelta(days=1))
    train, evaluation = pd.read_parquet(folder / "train.parquet"), pd.read_parquet(folder / "eval.parquet")
    model = build_pipeline(spec).set_params(model__max_iter=30)
    model.fit(train[spec.feature_names], train[spec.target])
    saved = save_model_folder(
        spec, model, train[spec.feature_names], evaluation[spec.feature_names], tmp_path / "model"
    )
    materialize(spec, settings, Interval(LAST - dt.timedelta(days=3), LAST))  # through the eve of LAST
    rows = evaluation[evaluation[EVENT_TIME].dt.tz_convert(spec.timezone).dt.date == LAST].head(40)
    sent = [
        {
            c.name: (v.item() if hasattr(v, "item") else v)
            for c, v in zip(spec.row_feature_columns, r, strict=True)
        }
        for r in rows[spec.row_feature_names].itertuples(index=False)
    ]
    expected = model.predict_proba(rows[spec.feature_names])
    with app_client(saved, store.root, max_body_bytes=1 << 20) as client:
        answer = client.post("/predict", json=sent)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(
            [p["1"] for p in answer.json()["probabilities"]], expected[:, 1], atol=1e-6
        )
        meta = client.get("/metadata").json()["history"]
        assert meta["online_store"]["kind"] == online
        assert {v["name"] for v in meta["views"]} == {"by_zone", "by_carrier", "by_hour_carrier"}
        newest = pd.Timestamp(LAST, tz=spec.timezone).tz_convert("UTC")
        assert pd.Timestamp(meta["freshness"]["by_zone"]["newest_snapshot"]) == newest
        assert 'mlcycle_history_feature_age_seconds{view="by_zone"}' in client.get("/metrics").text
        refused = client.post("/predict", json=[{**sent[0], "late_share_7d": 0.5}])
        assert refused.status_code == 422 and "late_share_7d" in refused.text
    if online == "redis":
        monkeypatch.setenv("MLCYCLE_ONLINE_STORE", "redis://127.0.0.1:9/0")  # nothing listens on port 9
        with app_client(saved, store.root, max_body_bytes=1 << 20) as client:
            down = client.post("/predict", json=sent[:2])
            assert down.status_code == 503, down.text
            assert down.json()["error_code"] == "ONLINE_STORE_UNAVAILABLE"
            assert "redis://127.0.0.1:9/0" in down.json()["message"]
            assert (
                client.get("/metadata").json()["history"]["freshness"]["by_zone"]["newest_snapshot"] is None
            )
        assert "holds no history snapshot yet" in caplog.text  # said when the server starts


def test_the_redis_field_hash_is_feasts():
    """The server's MurmurHash3 of ``<view>:<feature>`` equals the mmh3 field names Feast writes."""
    from mlcycle.feature_store import _import_feast
    from mlcycle.serving.online import redis_field

    _import_feast()  # as materialize imports it: without its process-wide side effects
    from feast.infra.online_stores.helpers import _mmh3

    for view, feature in [("a", ""), ("by_zone", "late_share_7d"), ("g", "ü€x"), ("v" * 7, "f" * 13)]:
        for cut in range(len(feature) + 1):
            assert redis_field(view, feature[:cut]) == _mmh3(f"{view}:{feature[:cut]}")


def test_monitoring_calls_the_online_store_stale_past_max_age(spec, settings):
    from mlcycle.steps.materialize import online_freshness

    store, _ = _publish(spec, settings)
    midnight = lambda day: pd.Timestamp(day, tz=spec.timezone).to_pydatetime()  # noqa: E731
    assert online_freshness(spec, store, midnight(LAST))["stale"]  # nothing materialized yet
    materialize(spec, settings, day_interval(LAST - dt.timedelta(days=1)))
    fresh = online_freshness(spec, store, midnight(LAST))
    assert (fresh["age_seconds"], fresh["stale"]) == (0.0, False)
    assert not online_freshness(spec, store, midnight(LAST + dt.timedelta(days=2)))["stale"]  # max_age 2d
    late = online_freshness(spec, store, midnight(LAST + dt.timedelta(days=3)))
    assert late["stale"] and "more than features.max_age (2d)" in late["why"]


def test_a_store_in_object_storage_keeps_the_feast_registry_and_snapshots_in_the_bucket(
    spec, tmp_path, monkeypatch, s3_env, redis_url
):
    """Where workers share no disk (the compose stack): the store in a bucket, the online store in
    Redis. materialize writes the snapshot files and Feast's registry to the bucket and each entity's
    newest snapshot to Redis, which Feast and the server read alike."""
    import uuid

    from mlcycle.feature_store import FeatureRepo, serving_history
    from mlcycle.serving.online import locate, open_online
    from mlcycle.settings import Settings
    from tests.conftest import s3_client
    from tests.unit.conftest import apply_env

    apply_env(monkeypatch, tmp_path)
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    bucket, prefix = s3_env["MLCYCLE_TEST_S3_BUCKET"], f"tests/{uuid.uuid4().hex}"
    monkeypatch.setenv("MLCYCLE_STORE", f"s3://{bucket}/{prefix}")
    monkeypatch.setenv("MLCYCLE_ONLINE_STORE", redis_url)
    settings = Settings.from_env()
    store, _ = _publish(spec, settings)
    result = materialize(spec, settings, day_interval(LAST - dt.timedelta(days=1)))
    assert result.online["loaded"]
    keys = {o["Key"] for o in s3_client(s3_env).list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert f"{prefix}/flights_history/feast/registry.db" in keys
    assert f"{prefix}/flights_history/history/by_zone/date={LAST - dt.timedelta(days=1)}/data.parquet" in keys

    repo = FeatureRepo(spec, store.base)
    assert {v.name for v in repo.store.list_feature_views()} == {"by_zone", "by_carrier", "by_hour_carrier"}
    zones = [{"zone": "z001"}, {"zone": "z002"}]
    by_feast = repo.online_features(("zone",), zones)
    history = serving_history(spec)
    served = open_online(history, locate(history, None))
    assert served.kind == "redis"
    served = served.add(zones)
    for name in ("late_share_7d", "flights_7d"):
        assert by_feast[name].notna().all(), by_feast
        np.testing.assert_allclose([r[name] for r in served], by_feast[name].to_numpy(dtype=float))


def test_an_online_store_that_does_not_answer_fails_materialize_as_transient_and_says_what_to_do(
    spec, settings, monkeypatch
):
    """A Redis that is down: a clear, retryable error without the URL's password, and the day's offline
    snapshots already written (a retry only has the online store left to load)."""
    from mlcycle.errors import ServiceUnavailable, failure_class

    store, _ = _publish(spec, settings)
    monkeypatch.setenv("MLCYCLE_ONLINE_STORE", "redis://:s3cret@127.0.0.1:9/0")  # nothing listens on port 9
    day = LAST - dt.timedelta(days=1)
    with pytest.raises(ServiceUnavailable) as caught:
        materialize(spec, settings, day_interval(day))
    message = str(caught.value)
    assert "redis://127.0.0.1:9/0 did not answer" in message and "s3cret" not in message, message
    assert "MLCYCLE_ONLINE_STORE" in message and failure_class(caught.value) == "transient"
    assert history_file(store, "by_zone", day).is_file()
