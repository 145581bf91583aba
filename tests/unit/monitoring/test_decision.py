"""The decision: drift, decay, neither; and one trigger per drift episode, with a cool-down."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from mlcycle.monitoring.decision import Figures, Ledger, decide_and_record, judge
from mlcycle.spec import MonitoringSpec

CONFIG = MonitoringSpec(
    columns=("a", "b", "c", "d"), drift_share=0.3, performance_tolerance=0.2, cooldown_days=5
)


def test_drift_when_the_share_of_drifted_features_is_above_drift_share():
    verdict = judge(Figures(drifted=("a", "b"), monitored=4), CONFIG)
    assert verdict.drift and not verdict.decay and verdict.status == "drift"
    assert verdict.line.startswith("drift: 2 of 4 features drifted (share 0.50 > 0.3): a, b")


def test_a_share_at_the_threshold_is_not_drift():
    config = MonitoringSpec(columns=("a", "b", "c", "d"), drift_share=0.25)
    verdict = judge(Figures(drifted=("a",), monitored=4), config)
    assert not verdict.drift and verdict.status == "ok" and verdict.line.startswith("no drift: 1 of 4")


def test_decay_when_the_metric_is_worse_than_at_training_by_more_than_the_tolerance():
    worse = Figures(drifted=(), monitored=4, metric="rmse", current_score=130.0, holdout_score=100.0)
    verdict = judge(worse, CONFIG)
    assert verdict.decay and not verdict.drift and verdict.status == "decay"
    assert "performance decay: rmse 130 against 100 at training (+30% > 20%)" in verdict.reasons[0]
    within = Figures(drifted=(), monitored=4, metric="rmse", current_score=115.0, holdout_score=100.0)
    assert not judge(within, CONFIG).decay


def test_decay_of_a_metric_where_greater_is_better():
    figures = Figures(
        drifted=(), monitored=4, metric="r2", current_score=0.5, holdout_score=0.8, greater_is_better=True
    )
    assert judge(figures, CONFIG).decay
    better = Figures(
        drifted=(), monitored=4, metric="r2", current_score=0.9, holdout_score=0.8, greater_is_better=True
    )
    assert not judge(better, CONFIG).decay


def test_no_labels_no_decay_and_the_line_says_so():
    verdict = judge(Figures(drifted=(), monitored=4, metric="rmse"), CONFIG)
    assert not verdict.decay and "performance not measured" in verdict.line


def _drift():
    return judge(Figures(drifted=("a", "b", "c"), monitored=4), CONFIG)


def _calm():
    return judge(Figures(drifted=(), monitored=4), CONFIG)


def _run(ledger: Ledger, pattern: str, start=dt.date(2011, 2, 1)) -> list[str]:
    """Decide one day per character (D drift, . calm); return the days that triggered."""
    triggered = []
    for i, mark in enumerate(pattern):
        day = start + dt.timedelta(days=i)
        decision = ledger.decide(day, _drift() if mark == "D" else _calm(), CONFIG.cooldown_days)
        if decision.trigger:
            triggered.append(day.isoformat())
    return triggered


def test_consecutive_drift_days_are_one_episode_with_one_trigger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.json")
    assert _run(ledger, "..DDDDDDDDDDDD..") == [
        "2011-02-03"
    ]  # twelve drifted days, longer than the cool-down
    assert {e["episode"] for e in ledger.days.values() if e["status"] == "drift"} == {"2011-02-03"}


def test_drift_back_within_the_cooldown_joins_the_episode_and_after_it_starts_a_new_one(tmp_path):
    ledger = Ledger(tmp_path / "ledger.json")
    # drift 02-01, calm, drift again 02-04 (3 days after: inside 5), calm, drift 02-08 (7 days: new episode)
    assert _run(ledger, "D..D...D") == ["2011-02-01", "2011-02-08"]
    assert "within cooldown_days 5" in ledger.days["2011-02-04"]["why"]


def test_a_cooldown_of_zero_triggers_every_separate_episode(tmp_path):
    zero = Ledger(tmp_path / "zero.json")
    triggered = []
    for i, mark in enumerate("D.D.DD"):
        day = dt.date(2011, 2, 1) + dt.timedelta(days=i)
        if zero.decide(day, _drift() if mark == "D" else _calm(), 0).trigger:
            triggered.append(day.day)
    assert triggered == [1, 3, 5]


def test_no_drift_never_triggers(tmp_path):
    assert _run(Ledger(tmp_path / "ledger.json"), "." * 20) == []


def test_rerunning_a_day_returns_its_recorded_decision_and_no_second_trigger(tmp_path):
    day = dt.date(2011, 2, 3)
    first = decide_and_record(tmp_path, day, _drift(), 5, report="r.html")
    again = decide_and_record(tmp_path, day, _drift(), 5, report="r.html")
    assert first.trigger and not first.replayed
    assert again.replayed and again.trigger == first.trigger and again.episode == first.episode
    # Even a different verdict on a re-run keeps the recorded decision (what was triggered stays so).
    assert decide_and_record(tmp_path, day, _calm(), 5).trigger
    record = json.loads((tmp_path / "ledger.json").read_text())["days"]
    assert list(record) == ["2011-02-03"] and record["2011-02-03"]["report"] == "r.html"
    # The next day continues the episode, and re-deciding the first day does not move it.
    assert not decide_and_record(tmp_path, day + dt.timedelta(days=1), _drift(), 5).trigger


@pytest.mark.parametrize("pattern, expected", [("DD.DD", 1), ("D......D", 2), ("", 0)])
def test_episodes_counted_from_the_ledger(tmp_path, pattern, expected):
    ledger = Ledger(tmp_path / "ledger.json")
    _run(ledger, pattern)
    assert len({e["episode"] for e in ledger.days.values() if e["episode"]}) == expected


# --- the words of each decision, exactly: they are what a person reads in the log and the ledger ----


def test_the_line_names_at_most_six_drifted_features_and_the_comparison():
    config = MonitoringSpec(
        columns=tuple("abcdefgh"), drift_share=0.5, performance_tolerance=0.2, cooldown_days=5
    )
    seven = judge(Figures(drifted=tuple("abcdefg"), monitored=8), config)
    assert seven.line.startswith("drift: 7 of 8 features drifted (share 0.88 > 0.5): a, b, c, d, e, f, ...;")
    six = judge(Figures(drifted=tuple("abcdef"), monitored=8), config)
    assert "(share 0.75 > 0.5): a, b, c, d, e, f;" in six.line
    calm = judge(Figures(drifted=("a",), monitored=8), config)
    assert calm.line == (
        "no drift: 1 of 8 features drifted (share 0.12 <= 0.5): a; performance not measured (no labelled rows)"
    )
    none = judge(Figures(drifted=(), monitored=8), config)
    assert none.line.startswith("no drift: 0 of 8 features drifted (share 0.00 <= 0.5);")
    assert seven.reasons == ("data drift: 7 of 8 features drifted (share 0.88 > 0.5): a, b, c, d, e, f, ...",)


def test_a_decay_is_named_with_both_scores_and_the_tolerance():
    verdict = judge(
        Figures(drifted=(), monitored=4, metric="rmse", current_score=15.0, holdout_score=10.0), CONFIG
    )
    assert verdict.status == "decay" and verdict.line == (
        "decay: 0 of 4 features drifted (share 0.00 <= 0.3); rmse 15 vs 10 at training (+50%, tolerance 20%)"
    )
    assert verdict.reasons == ("performance decay: rmse 15 against 10 at training (+50% > 20%)",)


def test_decay_needs_both_scores_and_survives_a_zero_holdout_score():
    from mlcycle.monitoring.decision import decay_of

    assert decay_of(Figures(drifted=(), monitored=1, current_score=None, holdout_score=1.0)) is None
    assert decay_of(Figures(drifted=(), monitored=1, current_score=1.0, holdout_score=None)) is None
    assert decay_of(
        Figures(drifted=(), monitored=1, current_score=1e-12, holdout_score=0.0)
    ) == pytest.approx(1.0)


def test_each_decision_says_why_in_the_ledger(tmp_path):
    ledger = Ledger(tmp_path / "ledger.json")
    _run(ledger, "D.D.....D.")
    why = {day[-2:]: entry["why"] for day, entry in ledger.days.items()}
    assert why["01"] == "new drift episode: retrain triggered"
    assert why["02"] == "no drift and no decay: nothing to trigger"
    assert why["03"] == (
        "joins the drift episode that began 2011-02-01 (2 day(s) ago, within cooldown_days 5): "
        "recorded, no retrain triggered"
    )
    assert why["09"] == "new drift episode (8 days after the last one, began 2011-02-01): retrain triggered"
    _run(ledger, "DD", start=dt.date(2011, 3, 1))
    assert ledger.days["2011-03-02"]["why"] == (
        "continues the drift episode that began 2011-03-01: recorded, no retrain triggered"
    )


def test_a_replayed_decision_is_the_recorded_one_field_by_field(tmp_path):
    day = dt.date(2011, 2, 3)
    first = decide_and_record(tmp_path, day, _drift(), 5)
    again = decide_and_record(tmp_path, day, _calm(), 5)
    assert again.replayed and dataclasses.replace(again, replayed=False) == first
    assert json.loads((tmp_path / "ledger.json").read_text())["days"][day.isoformat()]["report"] == ""
    within = decide_and_record(tmp_path, day + dt.timedelta(days=2), _drift(), 5)
    assert not within.trigger and "within cooldown_days 5" in within.why


def test_a_ledger_written_before_reasons_were_recorded_still_replays(tmp_path):
    day = dt.date(2011, 2, 3)
    old = {
        "status": "drift",
        "trigger": True,
        "episode": day.isoformat(),
        "why": "new drift episode: retrain triggered",
    }
    (tmp_path / "ledger.json").write_text(json.dumps({"days": {day.isoformat(): old}}))
    replay = decide_and_record(tmp_path, day, _calm(), 5)
    assert replay.replayed and replay.trigger and replay.reasons == ()
    fresh = decide_and_record(tmp_path, day + dt.timedelta(days=1), _drift(), 5)
    entry = json.loads((tmp_path / "ledger.json").read_text())["days"][fresh.day]
    assert entry["line"] == _drift().line and entry["reasons"] == list(_drift().reasons)
