"""`mlcycle draft-spec` on generated data: what the profile finds, and messages that name the fix."""

from __future__ import annotations

import functools
import http.server
import json
import threading

import numpy as np
import pandas as pd
import pytest
import yaml

from mlcycle.cli import main
from mlcycle.draft import draft_spec, read_data
from mlcycle.errors import SpecError
from mlcycle.spec import load_spec
from mlcycle.spec_schema import PipelineSpecSchema
from tests.datasets import make_classification_dataset, make_events_dataset


def test_events_get_no_key_a_filtered_label_and_their_leaks_left_out(tmp_path, capsys, monkeypatch):
    csv = make_events_dataset(tmp_path / "data", days=5).with_suffix(".csv")
    monkeypatch.chdir(tmp_path)  # --out relative to where the user is, not where `make run` runs
    code = main(
        [
            "draft-spec",
            str(csv),
            "--target",
            "late",
            "--label",
            "late: arr_delay > 15",
            "--timezone",
            "America/New_York",
            "--out",
            "specs",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert f"make run PIPELINE={tmp_path / 'specs' / 'flights.yaml'} DATE=" in result["next"], result["next"]
    raw = yaml.safe_load(open(result["spec"]))
    assert raw["key"] == [] and raw["filter"] == ["notnull(arr_delay)"] and raw["task"] == "classification"
    assert raw["columns"]["arr_delay"]["role"] == "ignore" and raw["columns"]["cancelled"]["role"] == "ignore"
    assert raw["columns"]["zone"]["values"][:2] == ["z000", "z001"]
    assert raw["timestamp"] == {
        "kind": "column",
        "column": "ts",
        "format": "%Y-%m-%d %H:%M:%S",
        "timezone": "America/New_York",
    }
    assert "# the label `late` is computed from it" in open(result["spec"]).read()
    spec = load_spec(result["spec"])  # loads as written
    PipelineSpecSchema.model_validate(raw)  # and satisfies the published JSON Schema's declaration
    assert set(spec.feature_names) == {"zone", "carrier", "distance", "hour", "day_of_week"}


def test_one_row_per_timestamp_keeps_the_default_key(tmp_path):
    spec_path = make_classification_dataset(tmp_path, days=10)
    frame, source = read_data(str(spec_path.with_suffix(".csv")))
    draft = draft_spec(frame, source, target="label", name="clf")
    assert "key" not in draft.spec and draft.spec["task"] == "classification"
    assert draft.spec["columns"]["label"] == {"type": "categorical", "values": [0, 1], "role": "target"}
    assert draft.spec["window"]["data_start"] == "2011-03-01" and draft.spec["window"]["days"] == 9


def test_a_csv_at_an_http_url_is_drafted_with_an_http_source(tmp_path):
    csv = make_classification_dataset(tmp_path, days=3).with_suffix(".csv")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(csv.parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]  # keep the test output quiet
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{csv.name}"
        frame, source = read_data(url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert source == {"kind": "http", "url": url, "format": "csv"}
    assert frame.equals(pd.read_csv(csv))
    draft = draft_spec(frame, source, target="label", name="clf")
    assert draft.spec["source"] == source and draft.spec["task"] == "classification"
    assert draft.spec["window"]["data_start"] == "2011-03-01"


def test_a_column_almost_equal_to_the_target_is_flagged():
    times = pd.date_range("2024-01-01", periods=24 * 20, freq="h").strftime("%Y-%m-%d %H:%M:%S")
    y = pd.Series(range(len(times))) % 97 * 1.5
    frame = pd.DataFrame({"ts": times, "x": (y * 7) % 13, "copy": y * 2 + 1, "y": y})
    draft = draft_spec(frame, {"kind": "file", "path": "x.csv", "format": "csv"}, target="y", name="r")
    assert draft.spec["columns"]["copy"]["role"] == "ignore" and "leak" in draft.comments["copy"]


def test_a_column_that_moves_with_what_the_label_reads_is_flagged():
    """A departure delay for a label read from the arrival delay: measured with the outcome."""
    rng = np.random.default_rng(3)
    times = pd.date_range("2024-01-01", periods=24 * 20, freq="h").strftime("%Y-%m-%d %H:%M:%S")
    arrival = rng.normal(10, 30, len(times))
    frame = pd.DataFrame(
        {
            "ts": times,
            "dep_delay": 0.9 * arrival + rng.normal(0, 8, len(times)),  # correlation about 0.96
            "taxi_out": 0.3 * arrival + rng.normal(0, 30, len(times)),  # about 0.3: a feature
            "distance": rng.integers(100, 2000, len(times)),
            "arr_delay": arrival,
        }
    )
    draft = draft_spec(
        frame,
        {"kind": "file", "path": "f.csv", "format": "csv"},
        target="late",
        label="late: arr_delay > 15",
        name="f",
    )
    columns = draft.spec["columns"]
    assert columns["dep_delay"]["role"] == "ignore"
    assert "with `arr_delay`, which the label `late` reads" in draft.comments["dep_delay"]
    assert "known at prediction time" in draft.comments["dep_delay"]
    assert columns["taxi_out"].get("role") != "ignore" and columns["distance"].get("role") != "ignore"
    assert columns["arr_delay"]["role"] == "ignore"  # read by the label itself


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "nope"}, "--target 'nope' is not a column"),
        ({"target": "late", "label": "late arr_delay > 15"}, "write it as '<name>: <expression>'"),
        (
            {"target": "late", "label": "late: delay > 15"},
            "--label reads delay, which the data does not have",
        ),
        ({"target": "label", "timezone": "Mars/Olympus"}, "is not an IANA time zone"),
    ],
)
def test_mistakes_name_the_fix(tmp_path, kwargs, message):
    frame, source = read_data(str(make_classification_dataset(tmp_path, days=3).with_suffix(".csv")))
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("'", "'")):
        draft_spec(frame, source, name="x", **kwargs)
