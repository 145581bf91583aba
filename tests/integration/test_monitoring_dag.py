"""The monitoring DAG through `airflow dags test`, after a training run, as `make run` leaves the project.

A champion is trained by ``training_bikeshare`` (one-candidate search); then ``monitoring_bikeshare``
runs for a day of its training window (validated, labelled: drift and performance are judged, the
report and the ledger are written, and ``retrain_trigger`` follows the decision) and for a day with
no data (``monitor`` is skipped with "nothing to monitor", so is ``retrain_trigger``: no event).
"""

from __future__ import annotations

import json

import pytest

from tests.datasets import BIKESHARE_SPEC, LEAN_MODEL, write_spec_variant
from tests.integration.airflow_env import AirflowProject

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> AirflowProject:
    pipelines = tmp_path_factory.mktemp("pipelines")
    write_spec_variant(BIKESHARE_SPEC, pipelines / "bikeshare.yaml", model=LEAN_MODEL)
    project = AirflowProject.create(
        tmp_path_factory.mktemp("monitoring"), MLCYCLE_PIPELINES_DIR=str(pipelines)
    )
    project.dags_test("training_bikeshare", "2011-06-30", {"window_days": 14})
    states = project.task_states("training_bikeshare", "2011-06-30")
    assert states["register"] == "success", states
    return project


def test_a_day_of_the_training_window_is_monitored_and_the_trigger_follows_the_decision(project):
    proc = project.dags_test("monitoring_bikeshare", "2011-06-25")  # a manual run covers [06-24, 06-25)
    states = project.task_states("monitoring_bikeshare", "2011-06-25")
    assert states["interval"] == states["monitor"] == "success", (states, proc.stdout[-4000:])
    ledger = json.loads((project.store / "bikeshare" / "reports" / "drift" / "ledger.json").read_text())[
        "days"
    ]
    decision = ledger["2011-06-24"]
    assert states["retrain_trigger"] == ("success" if decision["trigger"] else "skipped"), (states, decision)
    assert decision["line"].split(":")[0] in ("drift", "decay", "no drift")
    folder = project.store / "bikeshare" / "reports" / "drift" / "date=2011-06-24"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["source"] == "validated" and metrics["model"]["alias"] == "champion"
    assert metrics["model"]["window_end"] == "2011-06-30" and (folder / "report.html").stat().st_size > 10_000
    assert metrics["performance"]["current"] is not None  # labels arrived with the validated batch


def test_a_day_without_data_is_skipped_and_emits_nothing(project):
    project.dags_test("monitoring_bikeshare", "2011-09-02")
    states = project.task_states("monitoring_bikeshare", "2011-09-02")
    assert states == {"interval": "success", "monitor": "skipped", "retrain_trigger": "skipped"}, states
    ledger = json.loads((project.store / "bikeshare" / "reports" / "drift" / "ledger.json").read_text())[
        "days"
    ]
    assert "2011-09-01" not in ledger
