"""The words a rejected batch or window leaves behind, exactly: each failed expectation once with
the days it failed on, long observed values cut (whole in failures.json), and a rejected window's
quarantine (its failures.json and report) and message."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

from mlcycle.steps.validate import _OBSERVED_CHARS, _expectation_lines, _reject_window
from mlcycle.store import Store

WINDOW = [dt.date(2011, 3, 1) + dt.timedelta(days=i) for i in range(5)]


def _failed(day: dt.date, expectation: str, observed: str, success: bool = False) -> dict:
    return {"partition": day.isoformat(), "results": [{"success": success, "expectation": expectation,
                                                      "observed": observed}]}  # fmt: skip


def test_one_day_is_named_by_its_date():
    lines = _expectation_lines([_failed(WINDOW[2], "temp within [0, 1]", "3 of 24 rows unexpected")], WINDOW)
    assert lines == ["  2011-03-03: temp within [0, 1]: 3 of 24 rows unexpected"]


def test_passing_results_are_not_listed():
    assert _expectation_lines([_failed(WINDOW[0], "x", "fine", success=True)], WINDOW) == []


def test_the_same_failure_on_several_days_is_one_line_naming_the_days():
    failed = [_failed(day, "hr not null", "1 of 24 rows unexpected") for day in WINDOW[:2]]
    (line,) = _expectation_lines(failed, WINDOW)
    assert line.endswith(": hr not null: 1 of 24 rows unexpected")  # same observation: no suffix
    assert not line.startswith("  2011-03-01:")  # several days, named together


def test_different_observations_name_the_first_day_and_point_to_failures_json():
    failed = [_failed(WINDOW[0], "hr not null", "1 of 24"), _failed(WINDOW[1], "hr not null", "2 of 24")]
    (line,) = _expectation_lines(failed, WINDOW)
    assert line.endswith(": hr not null: 1 of 24 (on 2011-03-01; the other days' in failures.json)")


def test_a_long_observation_is_cut_at_the_limit_and_kept_whole_elsewhere():
    exact = "x" * _OBSERVED_CHARS
    assert _expectation_lines([_failed(WINDOW[0], "e", exact)], WINDOW) == [f"  2011-03-01: e: {exact}"]
    (line,) = _expectation_lines([_failed(WINDOW[0], "e", exact + "y")], WINDOW)
    assert line == f"  2011-03-01: e: {exact}... (whole in failures.json)"


def test_a_rejected_window_is_quarantined_with_its_failures_and_report(tmp_path):
    store = Store(tmp_path / "store", "bikeshare")
    failures = [{"success": False, "expectation": "rows dropped by ingest as unparsable: at most 1.00%",
                 "observed": "40 of 1000 source rows (4.00%)"}]  # fmt: skip
    report = tmp_path / "report.html"
    summary = {"window": "2011-03-01 to 2011-03-05"}
    error = _reject_window(SimpleNamespace(name="bikeshare"), store, SimpleNamespace(start=WINDOW[0]), "try-1",
                           report, summary, failures)  # fmt: skip
    assert str(error) == (
        "the window 2011-03-01 to 2011-03-05 of bikeshare is rejected, nothing was published:\n"
        "  rows dropped by ingest as unparsable: at most 1.00%: 40 of 1000 source rows (4.00%)\n"
        f"Fix the source (or raise the share in the spec). Report: {report}"
    )
    assert error.failures == failures and error.report == str(report)
    (folder,) = [p.parent for p in (tmp_path / "store").rglob("failures.json")]
    assert json.loads((folder / "failures.json").read_text()) == {
        "pipeline": "bikeshare",
        "window": "2011-03-01 to 2011-03-05",
        "failures": failures,
    }
    quarantined = (folder / "report.html").read_text()
    assert "bikeshare: window rejected" in quarantined and str(folder) in quarantined
    assert "40 of 1000 source rows" in quarantined
    assert "Validation of bikeshare: window rejected" in report.read_text()
