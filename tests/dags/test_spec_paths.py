"""Any spec path runs: `make run PIPELINE=/any/folder/new.yaml` gets that spec its own DAGs.

``MLCYCLE_PIPELINES_DIR`` lists folders and spec files separated by ``:``; `scripts/pipeline_run.py`
(what `make run` asks) adds a spec of a new name as a file entry, so the DAG processor builds its DAGs
where the file is. Before, the path was only passed as the Param of a DAG that did not exist, and
`airflow dags test` failed with "Dag 'training_<name>' could not be found".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline_support.specs import discover, resolve_spec
from tests.conftest import ROOT
from tests.datasets import BIKESHARE_SPEC, make_classification_dataset, write_spec_variant

DAGS = ROOT / "dags"


def _plan(pipeline: str, date: str, env_dirs: str) -> list[str]:
    env = {**os.environ, "MLCYCLE_PIPELINES_DIR": env_dirs}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pipeline_run.py"), pipeline, date],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_a_spec_of_a_new_name_in_any_folder_gets_its_own_dags(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import BundleDagBag

    specs = tmp_path / "specs"
    specs.mkdir()
    write_spec_variant(BIKESHARE_SPEC, specs / "bikeshare.yaml")
    elsewhere = make_classification_dataset(tmp_path / "elsewhere" / "deep", days=30, name="shop_events")
    (elsewhere.parent / "not_a_spec.yaml").write_text("just: notes\n")  # a neighbour that must stay out

    dag_id, conf, dirs, logical = _plan(str(elsewhere), "2011-03-25", str(specs))
    assert (dag_id, json.loads(conf)) == ("training_shop_events", {})
    assert dirs == f"{specs}{os.pathsep}{elsewhere}"

    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", dirs)
    bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)
    assert bag.import_errors == {}, bag.import_errors
    assert {"training_shop_events", "training_bikeshare", "monitoring_shop_events"} <= set(bag.dags)
    assert resolve_spec("shop_events") == elsewhere.resolve()  # named, found in the file entry


def test_a_variant_keeping_a_known_name_runs_through_that_dag(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    write_spec_variant(BIKESHARE_SPEC, specs / "bikeshare.yaml")
    variant = write_spec_variant(
        BIKESHARE_SPEC, tmp_path / "ci" / "bikeshare-ci.yaml", model={"search": {"n_iter": 1}}
    )
    dag_id, conf, dirs, _ = _plan(str(variant), "2011-06-30", str(specs))
    assert (dag_id, json.loads(conf), dirs) == ("training_bikeshare", {"pipeline": str(variant)}, str(specs))
    assert _plan("bikeshare", "2011-06-30", str(specs)) == [
        "training_bikeshare",
        "{}",
        str(specs),
        "2011-06-30T00:00:00+00:00",
    ]


def test_several_folders_and_a_name_used_twice(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    make_classification_dataset(one, days=30, name="alpha")
    make_classification_dataset(two, days=30, name="beta")
    write_spec_variant(one / "alpha.yaml", two / "alpha_again.yaml")  # the same `name: alpha`
    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", f"{one}{os.pathsep}{two}")
    entries, broken = discover()
    assert sorted(e.name for e in entries) == ["alpha", "beta"]
    assert list(broken) == [(two / "alpha_again.yaml").resolve()]
    assert "already used by" in broken[(two / "alpha_again.yaml").resolve()]


@pytest.mark.parametrize(
    ("interval", "zone", "logical"),
    [
        ("@daily", "America/Los_Angeles", "2011-06-30T00:00:00-07:00"),
        ("30 6 * * *", "America/New_York", "2011-06-30T06:30:00-04:00"),
        ("@daily", "Asia/Tokyo", "2011-06-30T00:00:00+09:00"),
        ("@daily", "UTC", "2011-06-30T00:00:00+00:00"),
    ],
)
def test_make_run_gives_a_logical_date_that_covers_the_day_before_in_the_schedule_s_zone(
    tmp_path, interval, zone, logical
):
    """`make run DATE=2011-06-30` must train on 2011-06-29 of the pipeline's own calendar. The real
    timetable infers a manual run's interval from the logical date `scripts/pipeline_run.py` prints;
    a bare date (UTC midnight) would give Los Angeles 2011-06-28."""
    import pendulum

    from pipeline_support.factory import timetable
    from pipeline_support.interval import plan_interval
    from pipeline_support.specs import load_entry

    spec = write_spec_variant(
        BIKESHARE_SPEC,
        tmp_path / "specs" / "bikeshare.yaml",
        schedule={"interval": interval, "timezone": zone},
    )
    lines = _plan(str(spec), "2011-06-30", str(spec.parent))
    assert lines[3] == logical
    entry = load_entry(spec)
    inferred = timetable(entry.schedule).infer_manual_data_interval(run_after=pendulum.parse(lines[3]))
    plan = plan_interval(
        entry,
        pipeline=None,
        window_days=None,
        interval_start=inferred.start,
        interval_end=inferred.end,
        run_type="manual",
        now=inferred.end,
    )
    assert (plan["start"], plan["end"]) == ("2011-06-29", "2011-06-30")
    if zone == "America/Los_Angeles":  # what a bare date gave before
        midnight_utc = timetable(entry.schedule).infer_manual_data_interval(
            run_after=pendulum.parse("2011-06-30")
        )
        assert midnight_utc.start.in_timezone(zone).date().isoformat() == "2011-06-28"
