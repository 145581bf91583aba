"""The drift Asset between the DAGs: which decision emits an event, and which interval a triggered run trains on."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException

from pipeline_support.drift import drift_asset, trigger_extra, triggering_end
from pipeline_support.interval import plan_interval
from pipeline_support.specs import load_entry
from tests.datasets import BIKESHARE_SPEC

RESULT = {
    "pipeline": "bikeshare",
    "start": "2011-03-10",
    "end": "2011-03-11",
    "status": "drift",
    "trigger": True,
    "reasons": ["data drift: 3 of 4 features drifted"],
    "report": "/s/report.html",
    "model_version": "3",
    "why": "new drift episode: retrain triggered",
}


def test_only_a_trigger_decision_makes_an_event_and_its_extra_names_the_interval_end():
    assert trigger_extra(None) is None
    assert trigger_extra({**RESULT, "trigger": False}) is None  # drift inside an episode: recorded only
    assert trigger_extra({**RESULT, "replayed": True}) is None  # a re-run day: its event went out before
    extra = trigger_extra(RESULT)
    assert extra["interval_end"] == "2011-03-11" and extra["pipeline"] == "bikeshare"
    assert extra["reasons"] == RESULT["reasons"] and extra["report"] == "/s/report.html"
    assert drift_asset("bikeshare").uri == "mlcycle://bikeshare/drift"


def _events(*ends: str, asset=None):
    return {asset or drift_asset("bikeshare"): [SimpleNamespace(extra={"interval_end": e}) for e in ends]}


def test_a_triggered_run_takes_the_latest_drifted_interval_end_of_its_events():
    assert triggering_end("bikeshare", None) is None
    assert triggering_end("bikeshare", _events("2011-03-11", asset=drift_asset("other"))) is None
    end, extras = triggering_end("bikeshare", _events("2011-03-11", "2011-03-19"))
    assert end == dt.date(2011, 3, 19) and len(extras) == 2


def _plan(entry, triggered_end, start=None, end=None):
    return plan_interval(
        entry,
        pipeline=None,
        window_days=None,
        interval_start=start,
        interval_end=end,
        run_type="asset_triggered",
        now=dt.datetime(2026, 11, 23, tzinfo=dt.UTC),
        triggered_end=triggered_end,
    )


def test_the_drifted_interval_end_wins_over_the_run_s_own_dates_and_the_wall_clock():
    entry = load_entry(BIKESHARE_SPEC)
    run_day = pendulum.datetime(2026, 11, 22, tz="UTC")  # an asset-triggered run's own interval: today
    plan = _plan(entry, dt.date(2011, 3, 11), run_day, run_day.add(days=1))
    assert (plan["start"], plan["end"]) == ("2011-03-10", "2011-03-11")
    assert _plan(entry, dt.date(2011, 3, 11))["end"] == "2011-03-11"  # no logical date at all
    with pytest.raises(AirflowFailException, match="outside what pipeline bikeshare serves"):
        _plan(entry, dt.date(2011, 1, 2))


def test_the_monitor_task_links_its_report(monkeypatch):
    from pipeline_support.links import result_report_url

    result = {
        "pipeline": "bikeshare",
        "report": "/store/bikeshare/reports/drift/date=2011-03-10/report.html",
        "report_relative": "reports/drift/date=2011-03-10/report.html",
    }
    monkeypatch.setenv("MLCYCLE_STORE", "/elsewhere")
    assert result_report_url(result) == Path(result["report"]).as_uri()
    monkeypatch.setenv("MLCYCLE_STORE", "/store")
    monkeypatch.setenv("MLCYCLE_REPORTS_URL", "http://reports.local/")
    assert (
        result_report_url(result)
        == "http://reports.local/bikeshare/reports/drift/date=2011-03-10/report.html"
    )
    assert result_report_url({"pipeline": "bikeshare"}) == ""


def test_a_run_without_a_logical_date_takes_the_latest_complete_day_of_the_schedule_s_zone(tmp_path):
    """At 00:30 UTC it is still the evening before in Los Angeles: that day is not complete there,
    so the run covers the day before it, not the UTC day that just ended."""
    from tests.datasets import write_spec_variant

    spec = write_spec_variant(BIKESHARE_SPEC, tmp_path / "bikeshare.yaml",
                              schedule={"timezone": "America/Los_Angeles", "end": "2030-12-31"},
                              window={"data_end": "2030-12-31"})  # fmt: skip
    entry = load_entry(spec)

    def plan(now: dt.datetime) -> tuple[str, str]:
        got = plan_interval(entry, pipeline=None, window_days=None, interval_start=None, interval_end=None,
                            run_type="manual", now=now)  # fmt: skip
        return got["start"], got["end"]

    assert plan(dt.datetime(2026, 11, 23, 0, 30, tzinfo=dt.UTC)) == ("2026-11-21", "2026-11-22")
    assert plan(dt.datetime(2026, 11, 23, 8, 30, tzinfo=dt.UTC)) == (
        "2026-11-22",
        "2026-11-23",
    )  # 00:30 there
    utc = load_entry(write_spec_variant(BIKESHARE_SPEC, tmp_path / "utc.yaml", schedule={"end": "2030-12-31"},
                                        window={"data_end": "2030-12-31"}))  # fmt: skip
    got = plan_interval(utc, pipeline=None, window_days=None, interval_start=None, interval_end=None,
                        run_type="manual", now=dt.datetime(2026, 11, 23, 0, 30, tzinfo=dt.UTC))  # fmt: skip
    assert (got["start"], got["end"]) == ("2026-11-22", "2026-11-23")
