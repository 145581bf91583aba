"""`mlcycle draft-spec` on generated data: what the profile finds, and messages that name the fix."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from mlcycle.cli import main
from mlcycle.draft import draft_spec, read_data
from mlcycle.errors import SpecError
from mlcycle.spec import load_spec
from mlcycle.spec_schema import PipelineSpecSchema
from tests.datasets import make_classification_dataset, make_events_dataset


def test_events_get_no_key_a_filtered_label_and_their_leaks_left_out(tmp_path, capsys):
    csv = make_events_dataset(tmp_path / "data", days=5).with_suffix(".csv")
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
            str(tmp_path / "specs"),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
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


def test_a_column_almost_equal_to_the_target_is_flagged():
    times = pd.date_range("2024-01-01", periods=24 * 20, freq="h").strftime("%Y-%m-%d %H:%M:%S")
    y = pd.Series(range(len(times))) % 97 * 1.5
    frame = pd.DataFrame({"ts": times, "x": (y * 7) % 13, "copy": y * 2 + 1, "y": y})
    draft = draft_spec(frame, {"kind": "file", "path": "x.csv", "format": "csv"}, target="y", name="r")
    assert draft.spec["columns"]["copy"]["role"] == "ignore" and "leak" in draft.comments["copy"]


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
