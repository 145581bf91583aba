"""Source rows through the real serving image: the server derives the spec's features as ingest does.

For the generated flight events (local New York time across the daylight-saving change of
2023-03-12, ``dow``/``hour`` derived from the timestamp, a ``cancelled == 0`` filter), the bundled
bikeshare (no derivations; the file's other columns sent along) and the generated classification set
(a classifier; its label column sent along), trained by the real steps and
registered: the rows of the source file, exactly as it holds them, sent to the image built by
``mlcycle serving-image``, get what ``mlflow.pyfunc`` predicts for the same rows after the pipeline's
own derivation (``mlcycle.derive.apply``). A row the filter drops gets a 422 naming the rule; a
derived column that differs from the computed one gets a 422 naming both values.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.datasets import (
    BIKESHARE_SPEC,
    LEAN_MODEL,
    make_classification_dataset,
    make_events_dataset,
    write_spec_variant,
)
from tests.integration.airflow_env import free_port
from tests.integration.test_serving import (
    _close,
    _env,
    _http,
    _probe,
    _run_serving_container,
    _step,
    _train_champion,
    _wait,
)

pytestmark = [pytest.mark.integration, pytest.mark.docker]


def _source_reference(env: dict[str, str], spec: Path, name: str, column: str, prefix: str) -> dict:
    """The source rows of one local day (as JSON records, nulls for empty cells), the rows a filter
    drops, and what MLflow's pyfunc predicts for the kept ones after ingest's own derivation."""
    return _probe(
        env,
        f"""
import json, math
import mlflow, pandas as pd
from mlcycle import derive
from mlcycle.spec import load_spec, EVENT_TIME
from mlcycle.timestamps import derive_event_time
spec = load_spec({str(spec)!r})
raw = pd.read_csv(spec.source.path())
raw = raw[raw[{column!r}].astype(str).str.startswith({prefix!r})].reset_index(drop=True)
frame = raw.copy()
frame[EVENT_TIME] = derive_event_time(raw, spec.timestamp).values.array
derived, _ = derive.apply(frame.assign(_row=range(len(frame))), spec.derivations, spec.timezone, EVENT_TIME)
pred = mlflow.pyfunc.load_model("models:/{name}@champion").predict(derived[spec.feature_names])
plain = lambda df: [{{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}}
                    for r in json.loads(df.to_json(orient="records"))]
kept = set(derived["_row"])
print(json.dumps({{"rows": plain(raw.loc[sorted(kept)]), "dropped": plain(raw.loc[[i for i in range(len(raw)) if i not in kept]]),
                  "derived": plain(derived[[c for c in spec.feature_names]]),
                  "predictions": [p.item() if hasattr(p, "item") else p for p in pred]}}))
""",
    )


def _cases(tmp: Path) -> dict[str, tuple]:
    flights = make_events_dataset(tmp / "flights", start="2023-02-27", days=21)
    bike = write_spec_variant(BIKESHARE_SPEC, tmp / "bikeshare.yaml", model=LEAN_MODEL, window={"days": 14})
    return {
        # the day clocks go forward in New York, in the evaluation window
        "flights": (flights, dt.date(2023, 3, 14), 14, "flights", True, "ts", "2023-03-12"),
        "bikeshare": (bike, dt.date(2011, 6, 30), 14, "bikeshare", False, "day", "180"),
        # a classifier (logistic regression) on a categorical and an hour column; the label and the
        # ignored timestamp string sent along
        "synthclass": (
            make_classification_dataset(tmp / "synth", days=30),
            dt.date(2011, 3, 25),
            14,
            "synthclass",
            True,
            "ts",
            "2011-03-20",
        ),
    }


@pytest.mark.parametrize("case", ["flights", "bikeshare", "synthclass"])
def test_source_rows_in_answer_like_mlflow_on_the_derived_rows(case, tmp_path, docker_engine):
    spec, end, window, name, classification, column, prefix = _cases(tmp_path)[case]
    env = _env(tmp_path / "home")
    _train_champion(env, spec, end, window)
    ref = _source_reference(env, spec, name, column, prefix)
    assert ref["rows"], "no source rows for the day"
    tag = f"mlcycle-serving-{name}-raw-test:{uuid.uuid4().hex[:8]}"
    _step(
        env, "serving-image", "--pipeline", str(spec), "--model-uri", f"models:/{name}@champion", "--tag", tag
    )
    port = free_port()
    container = f"serving-raw-test-{uuid.uuid4().hex[:8]}"
    try:
        _run_serving_container(tag, container, port, "-e", "MLCYCLE_SERVING_LOG=off")
        base = f"http://127.0.0.1:{port}"
        _wait(f"{base}/ready", 120)

        status, body = _http(f"{base}/predict", ref["rows"])
        assert status == 200, body
        _close(ref["predictions"], body["predictions"], classification)
        singles = [_http(f"{base}/predict", row)[1]["predictions"][0] for row in ref["rows"][:20]]
        _close(ref["predictions"][:20], singles, classification)
        for payload in (
            {"dataframe_records": ref["rows"]},
            {"inputs": ref["rows"]},
            {
                "dataframe_split": {
                    "columns": list(ref["rows"][0]),
                    "data": [list(r.values()) for r in ref["rows"]],
                }
            },
        ):
            status, body = _http(f"{base}/invocations", payload)
            assert status == 200, body
            _close(ref["predictions"], body["predictions"], classification)
        # an older client: the features only, derived ones included
        status, body = _http(f"{base}/predict", ref["derived"])
        assert status == 200, body
        _close(ref["predictions"], body["predictions"], classification)

        if case == "flights":
            assert ref["dropped"], "the day holds cancelled flights"
            status, body = _http(f"{base}/predict", ref["dropped"][0])
            assert status == 422 and body["error_code"] == "filtered" and "cancelled == 0" in body["message"]
            row, derived = ref["rows"][0], ref["derived"][0]
            status, body = _http(f"{base}/predict", {**row, "dow": (derived["dow"] + 1) % 7})
            assert status == 422 and body["error_code"] == "derived_mismatch", body
            assert body["errors"][0]["computed"] == derived["dow"]
            status, body = _http(f"{base}/predict", {**row, "dow": derived["dow"], "hour": derived["hour"]})
            assert status == 200, body
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
