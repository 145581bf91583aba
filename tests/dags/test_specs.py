"""One DAG per spec: discovery, the `schedule:` section, its timetable, the `interval` task, bad specs.

Runs in the Airflow environment. The step package reads the same specs in the step environment; the
agreement test runs it there, in a subprocess, and compares.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pendulum
import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException

from pipeline_support.factory import timetable
from pipeline_support.interval import plan_interval
from pipeline_support.specs import SpecProblem, discover, load_entry, read_spec
from tests.conftest import ROOT, STEPS_BIN
from tests.datasets import BIKESHARE_SPEC, make_classification_dataset, write_spec_variant

DAGS = ROOT / "dags"
UTC = dt.UTC


def _dagbag(pipelines: Path, monkeypatch):
    from airflow.dag_processing.dagbag import BundleDagBag

    monkeypatch.setenv("MLCYCLE_PIPELINES_DIR", str(pipelines))
    return BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)


def test_one_training_dag_per_spec_in_the_folder(tmp_path, monkeypatch):
    write_spec_variant(BIKESHARE_SPEC, tmp_path / "bikeshare.yaml")
    make_classification_dataset(tmp_path, days=40, start="2013-03-01", name="events")
    bag = _dagbag(tmp_path, monkeypatch)
    assert bag.import_errors == {}
    assert sorted(bag.dags) == ["deploy_bikeshare", "deploy_events", "monitoring_bikeshare", "monitoring_events", "scoring_bikeshare",
                                "training_bikeshare", "training_events"]
    events = bag.dags["training_events"]
    assert "events" in events.tags and "pipeline `events`" in events.doc_md
    # Training runs on its timetable or on the pipeline's drift Asset.
    assert [a.uri for a in events.timetable.asset_condition.objects] == ["mlcycle://events/drift"]
    # The schedule comes from the spec's data bounds: first day with a full 21-day window, last data day.
    timetable = events.timetable.timetable
    assert (timetable.first.date(), timetable.last.date()) == (
        dt.date(2013, 3, 22),
        dt.date(2013, 4, 9),
    )
    assert events.catchup is False and events.start_date.date() == dt.date(2013, 3, 1) and events.end_date is None


def test_a_broken_spec_is_one_import_error_and_the_others_still_load(tmp_path, monkeypatch):
    write_spec_variant(BIKESHARE_SPEC, tmp_path / "bikeshare.yaml")
    (tmp_path / "typo.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "typo",
                "window": {"data_start": "2011-01-01", "days": 28},
                "schedule": {"intervall": "@daily", "catchup": "yes"},
            }
        )
    )
    (tmp_path / "garbage.yaml").write_text("name: [unclosed\n")
    bag = _dagbag(tmp_path, monkeypatch)
    assert sorted(bag.dags) == ["deploy_bikeshare", "monitoring_bikeshare", "scoring_bikeshare", "training_bikeshare"]
    assert sorted(Path(f).name for f in bag.import_errors) == ["deploy.py", "monitoring.py", "scoring.py", "training.py"]  # one per DAG file
    for error in bag.import_errors.values():
        assert "2 pipeline spec(s) cannot be loaded" in error
        assert f"{tmp_path / 'typo.yaml'}" in error and "schedule.intervall: unknown key" in error
        assert "schedule.catchup: true or false" in error
        assert f"cannot read pipeline spec {tmp_path / 'garbage.yaml'}" in error


def test_two_specs_with_one_name_are_reported_not_merged(tmp_path):
    write_spec_variant(BIKESHARE_SPEC, tmp_path / "a.yaml")
    write_spec_variant(BIKESHARE_SPEC, tmp_path / "b.yaml")
    entries, broken = discover(tmp_path)
    assert [e.path.name for e in entries] == ["a.yaml"]
    assert "name 'bikeshare' is already used by" in broken[tmp_path / "b.yaml"]


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        ({"interval": "@hourly"}, "schedule.interval: @daily or a cron that runs once a day"),
        ({"interval": "0 6 * * 1"}, "schedule.interval"),
        ({"timezone": "Mars/Olympus"}, "schedule.timezone: an IANA time zone name"),
        ({"start": "2011-02-30"}, "schedule.start: an ISO date like 2011-01-01"),
        ({"start": "2010-06-01"}, "is before window.data_start 2011-01-01"),
        ({"end": "2012-06-01"}, "is after window.data_end 2011-12-31"),
        ({"start": "2011-06-01", "end": "2011-05-01"}, "end 2011-05-01 is before start 2011-06-01"),
        ({"catchup": 1}, "schedule.catchup: true or false"),
    ],
)
def test_schedule_problems_name_the_key(tmp_path, schedule, problem):
    spec = write_spec_variant(BIKESHARE_SPEC, tmp_path / "bikeshare.yaml", schedule=schedule)
    with pytest.raises(SpecProblem, match="problem") as err:
        load_entry(spec)
    assert problem in str(err.value) and str(spec) in str(err.value)


@pytest.mark.parametrize(
    ("section", "typo", "problem"),
    [
        ("validation", {"max_restatement_shrnk": 0.5}, "validation.max_restatement_shrnk: unknown key; did you mean"),
        ("serving", {"tolerence": 0.001}, "serving.tolerence: unknown key; did you mean `tolerance`?"),
        ("timestamp", {"timezon": "UTC"}, "timestamp.timezon: unknown key; did you mean `timezone`?"),
        ("schedule", {"intervall": "@daily"}, "schedule.intervall: unknown key; did you mean `interval`?"),
    ],
)
def test_a_typo_in_any_section_fails_the_dag_parse_as_it_fails_the_steps(tmp_path, section, typo, problem):
    """Both sides check keys against one declaration (mlcycle.spec_schema), so the DAG parse, which
    the UI shows first, names a typo in a section it does not use itself."""
    spec = write_spec_variant(BIKESHARE_SPEC, tmp_path / "bikeshare.yaml", **{section: typo})
    with pytest.raises(SpecProblem) as err:
        load_entry(spec)
    assert problem in str(err.value)


def test_a_date_the_steps_refuse_the_dags_refuse_alike(tmp_path):
    spec = write_spec_variant(BIKESHARE_SPEC, tmp_path / "bikeshare.yaml", schedule={"start": "20110301"})
    with pytest.raises(SpecProblem, match=r"schedule.start: an ISO date like 2011-01-01 \(got '20110301'\)"):
        load_entry(spec)


def test_extends_makes_a_variant_with_the_base_paths_resolved(tmp_path):
    variant = ROOT / ".ci" / "bikeshare-ci.yaml"  # relative `extends`, from another folder
    if not variant.exists():
        variant = tmp_path / "ci" / "bikeshare-ci.yaml"
        variant.parent.mkdir()
        variant.write_text(f"extends: {BIKESHARE_SPEC}\nmodel: {{search: {{n_iter: 1, cv_folds: 2}}}}\n")
    merged = read_spec(variant)
    assert merged["model"]["search"]["n_iter"] == 1 and merged["model"]["search"]["space"]
    assert merged["source"]["path"] == str(
        ROOT / "include" / "data" / "bikeshare" / "bikeshare_hourly_2011.csv"
    )
    assert merged["validation"]["suite"] == str(ROOT / "include" / "expectations" / "bikeshare.json")
    assert load_entry(variant).name == "bikeshare"
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\nname: x\n")
    with pytest.raises(SpecProblem, match="goes round in a circle"):
        read_spec(loop)
    with pytest.raises(SpecProblem, match="names no file"):
        (tmp_path / "orphan.yaml").write_text("extends: nowhere.yaml\n")
        read_spec(tmp_path / "orphan.yaml")


def test_the_timetable_serves_only_the_spec_bounds_and_survives_serialization():
    from airflow.timetables.base import TimeRestriction

    entry = load_entry(BIKESHARE_SPEC)
    table = timetable(entry.schedule)
    # Airflow's plugin manager may load plugins/ again under the same module name (another test in
    # this process started it): compare with the class the factory sees now, not one from collection.
    from mlcycle_timetables import PipelineTimetable

    assert isinstance(table, PipelineTimetable)
    early = pendulum.datetime(1970, 1, 1, tz="UTC")
    # catchup on: the first run is the spec's first day, not the DAG's wide start date
    first = table.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(early, None, True)
    )
    assert first.data_interval.start.date() == dt.date(2011, 1, 29)
    # catchup off, today far after the data: nothing to schedule
    assert (
        table.next_dagrun_info(
            last_automated_data_interval=None, restriction=TimeRestriction(early, None, False)
        )
        is None
    )
    # after the last day: nothing more
    last = table.infer_manual_data_interval(run_after=pendulum.datetime(2012, 1, 1, tz="UTC"))
    assert (
        table.next_dagrun_info(
            last_automated_data_interval=last, restriction=TimeRestriction(early, None, True)
        )
        is None
    )
    back = type(table).deserialize(json.loads(json.dumps(table.serialize())))
    assert back == table and back.summary == table.summary


def _plan(entry, start=None, end=None, pipeline=None, run_type="manual", now=None):
    return plan_interval(
        entry,
        pipeline=pipeline,
        window_days=None,
        interval_start=start,
        interval_end=end,
        run_type=run_type,
        now=now or dt.datetime(2026, 11, 23, tzinfo=UTC),
    )


def test_the_interval_task_plans_served_runs_and_explains_the_others(tmp_path):
    entry = load_entry(BIKESHARE_SPEC)
    day = pendulum.datetime(2011, 6, 29, tz="UTC")
    plan = _plan(entry, day, day.add(days=1))
    assert plan == {
        "pipeline": "bikeshare",
        "spec": "bikeshare",
        "start": "2011-06-29",
        "end": "2011-06-30",
        "window_days": None,
    }
    with pytest.raises(AirflowFailException) as err:
        _plan(entry, pendulum.datetime(2013, 2, 28, tz="UTC"), pendulum.datetime(2013, 3, 1, tz="UTC"))
    assert "[2013-02-28, 2013-03-01) is outside what pipeline bikeshare serves" in str(err.value)
    assert "data intervals starting 2011-01-29 to 2011-12-31" in str(err.value)
    assert "a manual run of date D covers [D-1, D)" in str(err.value)
    # No logical date: the latest complete interval the schedule serves, here its last day.
    assert _plan(entry)["start"] == "2011-12-31"
    # A variant of the same pipeline is accepted and passed on by path; another pipeline is not.
    strict = write_spec_variant(BIKESHARE_SPEC, tmp_path / "strict.yaml", evaluation={"threshold": 1})
    assert _plan(entry, day, day.add(days=1), pipeline=str(strict))["spec"] == str(strict)
    other = make_classification_dataset(tmp_path, days=40, start="2011-03-01")
    with pytest.raises(AirflowFailException, match="this DAG runs pipeline 'bikeshare'"):
        _plan(entry, day, day.add(days=1), pipeline=str(other))


def test_make_run_refuses_a_date_the_pipeline_does_not_serve():
    run = [sys.executable, str(ROOT / "scripts" / "pipeline_run.py")]
    ok = subprocess.run([*run, "bikeshare", "2011-06-30"], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and ok.stdout.splitlines()[:2] == ["training_bikeshare", "{}"]
    bad = subprocess.run([*run, "bikeshare", "2013-03-01"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1
    assert "DATE=2013-03-01 is outside what pipeline bikeshare serves" in bad.stderr
    assert "pick DATE from 2011-01-30 to 2012-01-01" in bad.stderr


@pytest.mark.skipif(not (STEPS_BIN / "python").exists(), reason="the step environment is not set up")
def test_the_step_package_reads_the_same_schedule(tmp_path):
    specs = [
        BIKESHARE_SPEC,
        ROOT / "include" / "pipelines" / "bikeshare_postgres.yaml",
        write_spec_variant(
            BIKESHARE_SPEC,
            tmp_path / "v.yaml",
            schedule={
                "interval": "30 6 * * *",
                "timezone": "America/New_York",
                "start": "2011-03-01",
                "end": "2011-10-31",
                "catchup": True,
            },
        ),
    ]
    probe = textwrap.dedent(f"""
        import json
        from mlcycle.spec import load_spec
        out = []
        for path in {[str(p) for p in specs]!r}:
            s = load_spec(path).schedule
            out.append([s.interval, s.timezone, str(s.start), str(s.end), s.catchup])
        print(json.dumps(out))
    """)
    proc = subprocess.run(
        [str(STEPS_BIN / "python"), "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = [
        [
            e.schedule.interval,
            e.schedule.timezone,
            str(e.schedule.start),
            str(e.schedule.end),
            e.schedule.catchup,
        ]
        for e in map(load_entry, specs)
    ]
    assert theirs == ours
    assert ours[2] == ["30 6 * * *", "America/New_York", "2011-03-01", "2011-10-31", True]


def test_the_interval_is_read_in_the_schedules_zone(tmp_path):
    """Midnight in Paris is 22:00 UTC the day before: the run's days are Paris days."""
    spec = write_spec_variant(
        BIKESHARE_SPEC, tmp_path / "bikeshare.yaml", schedule={"timezone": "Europe/Paris"}
    )
    entry = load_entry(spec)
    start = pendulum.datetime(2011, 6, 29, tz="Europe/Paris")
    plan = _plan(entry, start.in_timezone("UTC"), start.add(days=1).in_timezone("UTC"), pipeline=str(spec))
    assert (plan["start"], plan["end"]) == ("2011-06-29", "2011-06-30")
