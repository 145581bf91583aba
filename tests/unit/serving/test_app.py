"""The API in-process (Starlette's TestClient runs the lifespan): answers, bad inputs, metrics.

Bad input must never give a 5xx: hand-picked cases name each bad field; generated cases
(hypothesis, any JSON in any field, rows mixed with valid ones) must get a 2xx or a 4xx.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.serving.conftest import app_client

JSON_CT = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(bike_model, tmp_path_factory):
    _, folder, x_eval = bike_model
    store = tmp_path_factory.mktemp("store")
    with app_client(folder, store, log_enabled=True, max_body_bytes=256 * 1024) as c:
        c.rows = x_eval.to_dict("records")
        c.x_eval = x_eval
        c.app_server = c.app.state.server
        yield c


def post(client, path, payload):
    return client.post(path, content=json.dumps(payload), headers=JSON_CT)


def test_predict_one_row_and_many_equal_the_pipeline(client):
    one = post(client, "/predict", client.rows[0])
    assert one.status_code == 200
    body = one.json()
    assert body["request_id"] == one.headers["x-request-id"] and body["model_version"]
    many = post(client, "/predict", client.rows)
    expected = client.app_server.model.pipeline.predict(client.x_eval)
    assert np.max(np.abs(np.asarray(many.json()["predictions"]) - expected)) <= 1e-6
    assert body["predictions"][0] == pytest.approx(expected[0], abs=1e-6)


@pytest.mark.parametrize(
    "payload", ["dataframe_split", "dataframe_records", "instances", "inputs", "columns"]
)
def test_invocations_speak_mlflows_protocol(client, payload):
    rows = client.rows[:7]
    cols = list(rows[0])
    body = {
        "dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in rows]},
        "dataframe_records": rows,
        "instances": rows,
        "inputs": rows,
        "columns": {c: [r[c] for r in rows] for c in cols},
    }[payload]
    key = "inputs" if payload == "columns" else payload
    answer = post(client, "/invocations", {key: body})
    assert answer.status_code == 200, answer.text
    expected = client.app_server.model.pipeline.predict(client.x_eval.head(7))
    assert np.max(np.abs(np.asarray(answer.json()["predictions"]) - expected)) <= 1e-6
    assert list(answer.json()) == ["predictions"]


def _bad(rows, **changes):
    row = dict(rows[0])
    for key, value in changes.items():
        if value is ...:
            row.pop(key)
        else:
            row[key] = value
    return row


BAD = {
    "missing": ({"hr": ...}, 422, ["hr"]),
    "extra": ({"promo": "x"}, 422, ["promo"]),
    "mistyped": ({"temp": "warm", "hr": "noon"}, 422, ["temp", "hr"]),
    "out_of_range": ({"windspeed": 1.7, "hr": 24}, 422, ["windspeed", "hr"]),
    "below_minimum": ({"temp": -0.01, "hr": -1}, 422, ["temp", "hr"]),
    "unknown_category": ({"weathersit": "hurricane", "season": 5}, 422, ["weathersit", "season"]),
    "bool_for_number": ({"temp": True}, 422, ["temp"]),
    "bool_for_integer": ({"hr": False}, 422, ["hr"]),
    "bool_for_a_category_of_numbers": ({"workingday": False, "season": True}, 422, ["workingday", "season"]),
    "fraction_for_integer": ({"hr": 5.5}, 422, ["hr"]),
    "null_not_allowed": ({"hr": None}, 422, ["hr"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_rows_get_422_naming_every_bad_field(client, case):
    changes, status, fields = BAD[case]
    answer = post(client, "/predict", _bad(client.rows, **changes))
    assert answer.status_code == status, answer.text
    assert sorted({e["field"] for e in answer.json()["errors"]}) == sorted(fields)
    # The same row inside a list names its index too.
    listed = post(client, "/predict", [client.rows[0], _bad(client.rows, **changes)])
    assert listed.status_code == status and all(e["loc"][0] == 1 for e in listed.json()["errors"])


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"temp": 0.0, "hr": 0}, 200),
        ({"temp": 1.0, "hr": 23}, 200),  # each field's bounds are allowed
        ({"temp": -1e-9}, 422),
        ({"temp": 1 + 1e-9}, 422),  # and nothing beyond them
    ],
)
def test_a_fields_minimum_and_maximum_are_inclusive(client, changes, status):
    answer = post(client, "/predict", _bad(client.rows, **changes))
    assert answer.status_code == status, answer.text


@pytest.mark.parametrize(
    "body,ctype,status",
    [
        (b'{"temp": NaN}', "application/json", 422),
        (b'{"temp": Infinity}', "application/json", 422),
        (b"[]", "application/json", 422),
        (b"{nope", "application/json", 400),
        (b"", "application/json", 400),
        (b'"a string"', "application/json", 422),
        (b"season=1", "application/x-www-form-urlencoded", 415),
        (b"{}", "", 415),
        (b"[" + b"{}," * 100000 + b"{}]", "application/json", 413),
    ],
)
def test_malformed_bodies_get_4xx(client, body, ctype, status):
    answer = client.post("/predict", content=body, headers={"content-type": ctype} if ctype else {})
    assert answer.status_code == status, answer.text
    assert answer.json()["message"]


def test_a_whole_valued_float_is_the_integer_it_is(client):
    """JSON Schema's `integer` includes 5.0: the row model takes it as 5 (the same prediction)."""
    as_int = post(client, "/predict", _bad(client.rows, hr=5, workingday=1))
    as_float = post(client, "/predict", _bad(client.rows, hr=5.0, workingday=1.0))
    assert as_int.status_code == as_float.status_code == 200, as_float.text
    assert as_float.json()["predictions"] == as_int.json()["predictions"]
    assert post(client, "/predict", _bad(client.rows, hr=23.0)).status_code == 200
    assert post(client, "/predict", _bad(client.rows, hr=24.0)).status_code == 422  # the bounds still hold


def test_the_openapi_row_schema_states_each_fields_bounds(client):
    """The integer bounds are JSON Schema's `minimum`/`maximum`, which clients and fuzzers read."""
    doc = client.get("/openapi.json").json()
    row = next(v for k, v in doc["components"]["schemas"].items() if k.endswith("Row"))
    hr = row["properties"]["hr"]
    assert (hr["type"], hr["minimum"], hr["maximum"]) == ("integer", 0, 23)
    assert "ge" not in hr and "le" not in hr


def test_nan_names_the_field(client):
    answer = client.post(
        "/predict", content=json.dumps(_bad(client.rows, temp=math.nan)).encode(), headers=JSON_CT
    )
    assert answer.status_code == 422 and [e["field"] for e in answer.json()["errors"]] == ["temp"]


def test_too_many_rows_is_refused(client):
    limit = client.app_server.schema.max_rows
    answer = post(
        client, "/invocations", {"dataframe_split": {"columns": ["hr"], "data": [[1]] * (limit + 1)}}
    )
    assert answer.status_code in (413, 400)


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["hr"], "data": [[1, 2]]}},
        {"dataframe_records": [], "inputs": []},
        {"nothing": 1},
        [1, 2],
        {"inputs": {"hr": [1, 2], "temp": [0.1]}},
        {"instances": 3},
        {"inputs": [{}], "params": [None]},
        {"inputs": [{}], "params": None},
    ],
)
def test_bad_invocations_get_400_like_mlflow(client, payload):
    answer = post(client, "/invocations", payload)
    assert answer.status_code in (400, 422) and answer.json()["error_code"] == "BAD_REQUEST"


def _split(client, rows=2, **changes):
    cols = list(client.rows[0])
    split = {"columns": cols, "data": [[r[c] for c in cols] for r in client.rows[:rows]]}
    return {"dataframe_split": split | changes}


def test_a_column_named_twice_is_refused(client):
    body = _split(client)
    cols = body["dataframe_split"]["columns"]
    body["dataframe_split"]["columns"] = [*cols, cols[0]]
    body["dataframe_split"]["data"] = [[*row, row[0]] for row in body["dataframe_split"]["data"]]
    answer = post(client, "/invocations", body)
    assert answer.status_code == 400, answer.text
    assert repr(cols[0]) in answer.json()["message"]
    assert answer.json()["errors"][0]["type"] == "duplicate_column"


@pytest.mark.parametrize("index", [[0, 1, 2], [0], "0,1"])
def test_an_index_that_does_not_match_the_rows_is_refused(client, index):
    answer = post(client, "/invocations", _split(client, index=index))
    assert answer.status_code == 400 and "index" in answer.json()["message"], answer.text


def test_a_matching_index_is_accepted(client):
    assert post(client, "/invocations", _split(client, index=[7, 8])).status_code == 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_rows_never_give_5xx(client, data):
    row = dict(client.rows[0])
    for name in data.draw(st.lists(st.sampled_from(sorted(row)), max_size=4, unique=True)):
        row[name] = data.draw(json_values)
    if data.draw(st.booleans()):
        row.pop(data.draw(st.sampled_from(sorted(row))))
    body = data.draw(st.sampled_from([row, [client.rows[1], row], {"dataframe_records": [row]}]))
    path = "/invocations" if isinstance(body, dict) and "dataframe_records" in body else "/predict"
    answer = client.post(path, content=json.dumps(body).encode(), headers=JSON_CT)
    assert answer.status_code < 500, answer.text
    assert answer.status_code in (200, 400, 413, 422)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_generated_bodies_never_give_5xx(client, raw):
    for path in ("/predict", "/invocations"):
        assert client.post(path, content=raw, headers=JSON_CT).status_code < 500


def test_openapi_documents_each_feature(client):
    doc = client.get("/openapi.json").json()
    row = doc["components"]["schemas"]["BikeshareRow"]
    assert row["properties"]["season"]["enum"] == [1, 2, 3, 4]
    assert row["properties"]["hr"]["minimum"] == 0 and row["properties"]["hr"]["maximum"] == 23
    assert row["additionalProperties"] is False and "temp" in row["required"]


def test_health_ready_metadata_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["inference_path"] == "onnx"
    meta = client.get("/metadata").json()
    assert meta["inference_path"] == "onnx" and meta["onnx_max_abs_diff"] <= 1e-6 and meta["signature"]
    assert meta["serving_code_version"] and [f["name"] for f in meta["features"]][:2] == ["season", "mnth"]
    post(client, "/predict", _bad(client.rows, hr=...))
    post(client, "/predict", client.rows[0])
    text = client.get("/metrics").text
    assert 'mlcycle_requests_total{endpoint="/predict",status="200"}' in text
    assert 'mlcycle_rejected_requests_total{reason="missing_field"}' in text
    assert "mlcycle_request_latency_seconds_bucket" in text and "mlcycle_model_info{" in text
    assert "mlcycle_prediction_bucket" in text


def test_openapi_lists_the_codes_and_content_types_really_returned(client):
    doc = client.get("/openapi.json").json()
    for path in ("/predict", "/invocations"):
        codes = set(doc["paths"][path]["post"]["responses"])
        assert {"200", "400", "413", "415", "422", "503"} <= codes, (path, codes)
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    body = doc["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    keys = [next(iter(branch["required"])) for branch in body["oneOf"]]
    assert keys == ["dataframe_split", "dataframe_records", "instances", "inputs"]
    assert all(branch["additionalProperties"] is False for branch in body["oneOf"])
    # what the server answers is what the document says: a 415 with the documented body
    answer = client.post("/invocations", content=b"{}", headers={"content-type": "text/csv"})
    assert answer.status_code == 415 and {"error_code", "message"} <= set(answer.json())
