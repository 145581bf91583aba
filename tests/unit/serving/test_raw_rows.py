"""Rows as the source writes them, in: the server derives the spec's features the way ingest does.

Two pipelines, in process (Starlette's TestClient): the generated flight events (local New York
time across the daylight-saving change of 2023-03-12, ``dow``/``hour`` derived from the timestamp,
a ``cancelled == 0`` filter) and the bundled bikeshare (no derivations, extra source columns). The
reference is the fitted Pipeline (and ``mlflow.pyfunc``) on the same rows after ingest's own
derivation (``mlcycle.derive.apply``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.datasets import BIKESHARE_CSV, EVENT_ZONE, make_events_dataset
from tests.unit.serving.conftest import app_client, save_model_folder

JSON_CT = {"content-type": "application/json"}


def _plain(records: list[dict]) -> list[dict]:
    """CSV rows as a JSON client sends them: NaN is null, numpy scalars are plain numbers."""
    return [
        {
            k: (None if isinstance(v, float) and math.isnan(v) else (v.item() if hasattr(v, "item") else v))
            for k, v in r.items()
        }
        for r in records
    ]


def _ingested(spec, raw: pd.DataFrame) -> pd.DataFrame:
    """The source rows after ingest's timestamp and derivation steps (what training reads)."""
    from mlcycle import derive
    from mlcycle.spec import EVENT_TIME
    from mlcycle.timestamps import derive_event_time

    frame = raw.copy()
    frame[EVENT_TIME] = derive_event_time(raw, spec.timestamp).values.array
    out, _ = derive.apply(frame, spec.derivations, spec.timezone, EVENT_TIME)
    return out


@pytest.fixture(scope="module")
def flights(tmp_path_factory):
    """(spec, model folder, raw rows, the same rows ingested) for a small HistGradientBoosting model."""
    from mlcycle.modeling import build_pipeline
    from mlcycle.spec import load_spec

    spec = load_spec(make_events_dataset(tmp_path_factory.mktemp("flights"), start="2023-03-08", days=8))
    raw = pd.read_csv(spec.source.path())
    ingested = _ingested(spec, raw)
    x, y = ingested[spec.feature_names], ingested[spec.target]
    model = build_pipeline(spec).set_params(model__max_iter=30, model__max_leaf_nodes=15).fit(x, y)
    folder = save_model_folder(spec, model, x, x.iloc[:300], tmp_path_factory.mktemp("fmodel") / "model")
    return spec, folder, raw, ingested


def _client(folder, tmp_path_factory):
    return app_client(folder, tmp_path_factory.mktemp("store"), max_body_bytes=4 * 1024 * 1024)


@pytest.fixture(scope="module")
def fclient(flights, tmp_path_factory):
    with _client(flights[1], tmp_path_factory) as c:
        yield c


def post(client, path, payload):
    return client.post(path, content=json.dumps(payload), headers=JSON_CT)


def test_the_schema_carries_the_source_side_of_the_spec(flights):
    from mlcycle.serving.model import read_schema

    schema = read_schema(flights[1])
    assert schema.version == 2
    assert schema.derive == (("dow", "day_of_week"), ("hour", "hour"))  # not `late`: the target
    assert schema.filters == ("cancelled == 0",)
    assert schema.timestamp["column"] == "ts" and schema.timestamp["timezone"] == EVENT_ZONE
    used = {i.name: i.used_by for i in schema.inputs}
    assert used["ts"] == ("derive.dow", "derive.hour") and used["cancelled"] == ("filter[0]",)
    assert used["arr_delay"] == () and schema.derived_features == ["dow", "hour"]


def test_source_rows_in_give_the_pipelines_answer_on_the_ingested_rows(flights, fclient):
    import mlflow

    spec, folder, raw, ingested = flights
    kept = raw["cancelled"] == 0
    rows = _plain(raw.loc[kept].drop(columns=[]).to_dict("records"))
    expected = ingested[spec.feature_names]
    assert len(rows) == len(expected)
    sunday = raw.loc[kept, "ts"].str.startswith("2023-03-12").to_numpy()
    assert sunday.sum() > 50  # the day of the change of clocks is in
    pipeline = fclient.app.state.server.model.pipeline
    want = pipeline.predict(expected).tolist()
    proba = pipeline.predict_proba(expected)
    answer = post(fclient, "/predict", rows)
    assert answer.status_code == 200, answer.text[:2000]
    body = answer.json()
    assert body["predictions"] == want
    got = np.array([[p[str(c)] for c in pipeline.classes_] for p in body["probabilities"]])
    assert np.max(np.abs(got - proba)) <= 1e-6
    assert mlflow.pyfunc.load_model(str(folder)).predict(expected).tolist() == want
    # one row at a time, and MLflow's protocol in its three shapes
    for i in (0, int(np.flatnonzero(sunday)[0]), len(rows) - 1):
        one = post(fclient, "/predict", rows[i])
        assert one.status_code == 200 and one.json()["predictions"] == [want[i]], one.text
    cols = list(rows[0])
    for payload in (
        {"dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in rows[:50]]}},
        {"dataframe_records": rows[:50]},
        {"inputs": rows[:50]},
        {"inputs": {c: [r[c] for r in rows[:50]] for c in cols}},
    ):
        inv = post(fclient, "/invocations", payload)
        assert inv.status_code == 200 and inv.json()["predictions"] == want[:50], inv.text[:500]


def test_the_day_clocks_go_forward_gives_ingests_local_hour(flights, fclient):
    """2023-03-12 02:30 New York does not exist: ingest moves it to 03:00 EDT; so does the server."""
    spec, _, raw, _ = flights
    row = _plain(raw.loc[raw["cancelled"] == 0].head(1).to_dict("records"))[0]
    fed = {**row, "ts": "2023-03-12 02:30:00"}
    frame = _ingested(spec, pd.DataFrame([fed]))
    assert frame["hour"].tolist() == [3] and frame["dow"].tolist() == [6]
    sent = post(fclient, "/predict", {**fed, "hour": 3, "dow": 6})
    assert sent.status_code == 200, sent.text
    wrong = post(fclient, "/predict", {**fed, "hour": 2})
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["computed"] == 3


def test_old_clients_sending_the_features_keep_working(flights, fclient):
    spec, _, raw, ingested = flights
    features = _plain(ingested[spec.feature_names].head(20).to_dict("records"))
    want = fclient.app.state.server.model.pipeline.predict(ingested[spec.feature_names].head(20)).tolist()
    answer = post(fclient, "/predict", features)
    assert answer.status_code == 200 and answer.json()["predictions"] == want, answer.text[:500]
    # the source row with its derived features, equal to what the server computes: accepted
    kept = raw.loc[raw["cancelled"] == 0].head(20).reset_index(drop=True)
    both = _plain(pd.concat([kept, ingested[["dow", "hour"]].head(20)], axis=1).to_dict("records"))
    answer = post(fclient, "/invocations", {"dataframe_records": both})
    assert answer.status_code == 200 and answer.json()["predictions"] == want, answer.text[:500]


def test_a_derived_column_that_differs_is_refused_naming_both_values(flights, fclient):
    _, _, raw, _ = flights
    row = _plain(raw.loc[raw["cancelled"] == 0].head(1).to_dict("records"))[0]
    local = pd.Timestamp(row["ts"])
    bad = post(fclient, "/predict", {**row, "dow": (local.dayofweek + 1) % 7})
    assert bad.status_code == 422
    body = bad.json()
    assert body["error_code"] == "derived_mismatch"
    (err,) = body["errors"]
    assert (
        err["loc"] == ["dow"]
        and err["input"] == (local.dayofweek + 1) % 7
        and err["computed"] == local.dayofweek
    )
    assert "`dow` is" in body["message"] and "computed from the row by `dow: day_of_week`" in body["message"]
    many = post(fclient, "/invocations", {"dataframe_records": [row, {**row, "hour": 23 - local.hour}]})
    assert many.status_code == 422 and many.json()["errors"][0]["loc"] == ["dataframe_records", 1, "hour"]


def test_a_row_the_spec_filters_out_is_refused_naming_the_rule(flights, fclient):
    _, _, raw, _ = flights
    cancelled = _plain(raw.loc[raw["cancelled"] == 1].head(2).to_dict("records"))
    assert cancelled and cancelled[0]["arr_delay"] is None
    one = post(fclient, "/predict", cancelled[0])
    assert one.status_code == 422 and one.json()["error_code"] == "filtered"
    assert "filter: cancelled == 0" in one.json()["message"]
    assert one.json()["errors"][0]["rule"] == "cancelled == 0"
    inv = post(fclient, "/invocations", {"inputs": cancelled})
    assert inv.status_code == 422 and inv.json()["error_code"] == "BAD_REQUEST"
    assert [e["loc"] for e in inv.json()["errors"]] == [["inputs", 0], ["inputs", 1]]


def test_source_rows_that_cannot_be_read_get_a_422_naming_the_column(flights, fclient):
    _, _, raw, _ = flights
    row = _plain(raw.loc[raw["cancelled"] == 0].head(1).to_dict("records"))[0]
    for ts, kind in (
        ("2023-03-12", "unparseable_timestamp"),
        (None, "unparseable_timestamp"),
        ("12/03/2023 10:00:00", "unparseable_timestamp"),
    ):
        answer = post(fclient, "/predict", {**row, "ts": ts})
        assert answer.status_code == 422, (ts, answer.text)
        assert answer.json()["error_code"] == kind and answer.json()["errors"][0]["loc"] == ["ts"]
    no_time = {k: v for k, v in row.items() if k != "ts"}
    answer = post(fclient, "/predict", no_time)
    assert answer.status_code == 422 and answer.json()["error_code"] == "missing_field"
    assert {e["field"] for e in answer.json()["errors"]} == {"dow", "hour"}
    assert "computed from `ts`" in answer.json()["message"]
    typo = post(fclient, "/predict", {**row, "tss": row["ts"]})
    assert typo.status_code == 422 and typo.json()["error_code"] == "extra_field"
    wrong_type = post(fclient, "/predict", {**row, "cancelled": "no"})
    assert wrong_type.status_code == 422 and wrong_type.json()["errors"][0]["loc"] == ["cancelled"]


def test_computed_features_are_held_to_the_features_range(flights, tmp_path_factory):
    """A computed value outside the feature's declared range is refused like a sent one."""
    from mlcycle.serving.model import read_schema
    from mlcycle.serving.validation import BadRequest, RowValidator

    schema = read_schema(flights[1])
    features = tuple(type(f)(**{**f.__dict__, "max": 5.0}) if f.name == "dow" else f for f in schema.features)
    rows = RowValidator(type(schema)(**{**schema.__dict__, "features": features}))
    sunday = {"ts": "2023-03-12 10:00:00", "zone": "z001", "carrier": "AA", "distance": 100.0, "cancelled": 0}
    with pytest.raises(BadRequest) as err:
        rows.derive(rows.many.validate_python([sunday]))
    assert err.value.reason == "out_of_range" and err.value.errors[0]["loc"] == [0, "dow"]
    assert "computed from the row by `dow: day_of_week`" in err.value.errors[0]["msg"]
    monday = rows.derive(rows.many.validate_python([{**sunday, "ts": "2023-03-13 10:00:00"}]))
    assert (monday[0]["dow"], monday[0]["hour"]) == (0, 10)


def test_openapi_documents_the_source_columns_with_their_types(fclient):
    doc = fclient.get("/openapi.json").json()
    (row,) = [s for name, s in doc["components"]["schemas"].items() if name.endswith("Row")]
    props = row["properties"]
    assert {"ts", "arr_delay", "cancelled", "dow", "hour", "zone"} <= set(props)
    assert set(row["required"]) == {"zone", "carrier", "distance"}
    assert "read by derive.dow, derive.hour" in props["ts"]["description"]
    assert {"type": "string"} in props["ts"]["anyOf"]
    assert {"type": "integer"} in props["cancelled"]["anyOf"] and "filter[0]" in props["cancelled"][
        "description"
    ]
    assert "computed from the source columns by `dow: day_of_week`" in props["dow"]["description"]
    assert props["dow"]["maximum"] == 6


def test_conditions_in_arithmetic_count_as_0_1_at_ingest_and_on_the_server(tmp_path):
    """``(a > 0) + (b > 0)`` counts the conditions that hold (a comparison is 0/1), the same number in
    ingest's derive.apply and in the server's derivation of the same rows; a filter reads the count."""
    from mlcycle import derive
    from mlcycle.serving.schema import FeatureSchema, InputSchema, ServingSchema
    from mlcycle.serving.validation import BadRequest, RowValidator

    rules = {"flags": "(a > 0) + (b > 0)", "sign": "-(a > 0)", "both": "(a > 0) * (b > 0) + 0"}
    problems: list[str] = []
    parsed = derive.parse_derivations(
        {"derive": rules, "filter": ["(a > 0) + (b > 0) < 2"]}, tmp_path, problems
    )
    assert problems == []
    a, b = [-1.0, 2.0, -3.0, 4.0, None, 5.0], [-1.0, -2.0, 3.0, 4.0, 1.0, None]
    frame = pd.DataFrame({"event_time": pd.Timestamp("2024-01-01", tz="UTC"), "a": a, "b": b})
    ingested, _ = derive.apply(frame, derive.Derivations(derive=parsed.derive), "UTC", "event_time")
    want = {"flags": [0, 1, 1, 2, 1, 1], "sign": [0, -1, 0, -1, 0, -1], "both": [0, 0, 0, 1, 0, 0]}
    assert {k: ingested[k].tolist() for k in rules} == want
    assert all(ingested[k].dtype == "int64" for k in rules)
    _, dropped = derive.apply(frame, parsed, "UTC", "event_time")
    assert dropped == {"filter: (a > 0) + (b > 0) < 2": 1}

    used = tuple(f"derive.{k}" for k in rules)
    schema = ServingSchema(
        pipeline="flags",
        task="regression",
        target="y",
        features=tuple(FeatureSchema(k, "integer", "long") for k in rules),
        inputs=(InputSchema("a", "numeric", "double", used), InputSchema("b", "numeric", "double", used)),
        derive=tuple(rules.items()),
        filters=("(a > 0) + (b > 0) < 2",),
    )
    rows = RowValidator(schema)
    sent = [{"a": x, "b": y} for x, y in zip(a, b, strict=True)]
    kept = [r for i, r in enumerate(sent) if i != 3]
    served = rows.derive(rows.many.validate_python([dict(r) for r in kept]))
    assert {k: [r[k] for r in served] for k in rules} == {
        k: [v for i, v in enumerate(want[k]) if i != 3] for k in rules
    }
    one = rows.derive([dict(sent[1])], single=True)[0]
    assert (one["flags"], one["sign"], one["both"]) == (1, -1, 0)
    with pytest.raises(BadRequest) as refused:
        rows.derive([dict(sent[3])], single=True)
    assert refused.value.reason == "filtered"


# --- bikeshare: no derivations, a source row with its other columns


@pytest.fixture(scope="module")
def bclient(bike_model, tmp_path_factory):
    with _client(bike_model[1], tmp_path_factory) as c:
        yield c


def test_bikeshare_source_rows_go_in_as_the_file_holds_them(bike_model, bclient):
    spec, _, _ = bike_model
    raw = pd.read_csv(BIKESHARE_CSV).iloc[2000:2100]
    ingested = _ingested(spec, raw)
    want = bclient.app.state.server.model.pipeline.predict(ingested[spec.feature_names])
    answer = post(bclient, "/predict", _plain(raw.to_dict("records")))  # day, casual, registered, bikers too
    assert answer.status_code == 200, answer.text[:500]
    assert np.max(np.abs(np.asarray(answer.json()["predictions"]) - want)) <= 1e-6
    assert (
        post(bclient, "/predict", {**_plain(raw.head(1).to_dict("records"))[0], "promo": 1}).status_code
        == 422
    )


# --- the one-row path runs without pandas (its cost is measured by scripts/bench_derivation.py)


def test_the_one_row_derivation_uses_no_pandas(flights, fclient, monkeypatch):
    """Deriving one source row (timestamp read in New York time, two calendar parts, the filter, the
    computed features checked) never builds a pandas object: pandas would cost more than the rest of
    the path. The rows include the day the clocks go forward and a time that does not exist."""
    rows = fclient.app.state.server.rows
    _, _, raw, ingested = flights
    kept = raw.loc[raw["cancelled"] == 0].reset_index(drop=True)
    sunday = np.flatnonzero(kept["ts"].str.startswith("2023-03-12").to_numpy())
    picked = sorted({*range(200), *sunday[:150].tolist()})
    sources = _plain(kept.iloc[picked].to_dict("records"))
    sources.append({**sources[0], "ts": "2023-03-12 02:30:00"})  # moved forward to 03:00
    rows.derivation.clock._cache.clear()

    def refuse(*args, **kwargs):
        raise AssertionError("pandas called on the one-row derivation path")

    for name in ("DataFrame", "Series", "to_datetime", "Timestamp", "DatetimeIndex"):
        monkeypatch.setattr(pd, name, refuse)
    derived = [rows.derive([dict(row)], single=True)[0] for row in sources]
    monkeypatch.undo()
    assert len(sunday) > 50
    assert [(r["dow"], r["hour"]) for r in derived[:-1]] == list(
        zip(ingested["dow"].iloc[picked], ingested["hour"].iloc[picked], strict=True)
    )
    assert (derived[-1]["dow"], derived[-1]["hour"]) == (6, 3)
    # nor does the path import pandas where a patched name would not be seen
    probe = "import sys, mlcycle.serving.derivation; print('pandas' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False", "mlcycle.serving.derivation imports pandas"


def test_metadata_says_how_source_rows_are_read(fclient):
    meta = fclient.get("/metadata").json()
    assert meta["derive"] == [
        {"column": "dow", "expression": "day_of_week"},
        {"column": "hour", "expression": "hour"},
    ]
    assert meta["filters"] == ["cancelled == 0"] and meta["timestamp"]["timezone"] == EVENT_ZONE
    assert {c["name"] for c in meta["source_columns"]} == {"ts", "arr_delay", "cancelled"}


# --- one row at a time gives what the same rows give as a batch


def test_rows_one_at_a_time_give_what_the_same_rows_give_as_a_batch():
    """The one-row path (``/predict`` with one object) and a batch go through one evaluator; whatever
    either does to save time, a row's features and its problems are the same both ways: missing
    numbers and text, a division by zero, text compared and listed, the day New York's clocks go
    forward (02:30 does not exist) and the day they go back (01:30 is read as its first occurrence)."""
    from mlcycle.serving.schema import FeatureSchema, InputSchema, ServingSchema
    from mlcycle.serving.validation import RowValidator

    rules = {
        "hour": "hour",
        "dow": "day_of_week",
        "ratio": "a / b",
        "is_x": "t == 'x'",
        "listed": "t in ['x', None] or a > 2",
        "shout": "t + '!'",
    }
    used = tuple(f"derive.{k}" for k in rules)
    schema = ServingSchema(
        pipeline="mixed",
        task="regression",
        target="y",
        features=(
            FeatureSchema("hour", "integer", "long"),
            FeatureSchema("dow", "integer", "long"),
            FeatureSchema("ratio", "numeric", "double", nullable=True),
            FeatureSchema("is_x", "integer", "long"),
            FeatureSchema("listed", "integer", "long"),
            FeatureSchema("shout", "string", "string", nullable=True),
        ),
        inputs=(
            InputSchema("ts", "string", "string", used[:2]),
            InputSchema("a", "numeric", "double", (*used, "filter[0]")),
            InputSchema("b", "numeric", "double", used),
            InputSchema("t", "string", "string", used),
        ),
        derive=tuple(rules.items()),
        filters=("a != 99",),
        timestamp={"kind": "column", "column": "ts", "format": "%Y-%m-%d %H:%M:%S", "timezone": EVENT_ZONE},
    )
    times = [
        "2023-03-12 01:59:00",
        "2023-03-12 02:30:00",
        "2023-03-12 03:00:00",
        "2023-11-05 01:30:00",
        "2023-11-05 02:00:00",
        "2023-07-01 23:59:59",
        "2023-7-1  8:05:00",
    ]
    a_values, b_values, texts = (
        [1.0, None, 3.0, 0.0, 99.0],
        [2.0, 0.0, None, 0.0, 1.0],
        ["x", None, "y", "", "x"],
    )
    sources = [
        {"ts": ts, "a": a_values[i % 5], "b": b_values[(i + 1) % 5], "t": texts[(i + 2) % 5]}
        for i, ts in enumerate(times * 3)
    ]
    rows = RowValidator(schema)
    derivation = rows.derivation
    derivation.clock._cache.clear()
    one = []
    for source in sources:
        row = dict(source)
        one.append((row, derivation.apply([row], single=True)))
    derivation.clock._cache.clear()
    batch = [dict(s) for s in sources]
    errors = derivation.apply(batch)
    for i, (row, problems) in enumerate(one):
        assert row == batch[i], sources[i]
        assert problems == [
            {**e, "loc": [x for j, x in enumerate(e["loc"]) if j != 0]} for e in errors if e["loc"][0] == i
        ], sources[i]
    # the cases the rows are made of, spelled out once
    hour = {r["ts"]: r["hour"] for r, _ in one}
    assert hour["2023-03-12 02:30:00"] == 3  # moved forward to 03:00
    assert hour["2023-11-05 01:30:00"] == 1 and hour["2023-7-1  8:05:00"] == 8
    refused = [r for r, problems in one if problems]
    assert refused and all(r["a"] == 99.0 for r in refused)
    kept = [r for r, problems in one if not problems]
    assert any(r["ratio"] is None for r in kept if r["b"] == 0.0)  # x / 0 is missing, never infinite
    assert all(r["is_x"] == 0 and r["shout"] is None for r in kept if r["t"] is None)
    assert all(r["listed"] == (r["t"] == "x" or (r["a"] or 0) > 2) for r in kept)  # missing text: not listed
