"""evaluate.decide: the gate, a pure function of the two scores and the spec's evaluation section."""

from __future__ import annotations

import dataclasses

import pytest

from mlcycle.spec import EvaluationSpec, load_spec
from mlcycle.steps.evaluate import decide
from tests.datasets import BIKESHARE_SPEC

BASE = load_spec(BIKESHARE_SPEC)


def _spec(metric: str, greater_is_better: bool, threshold: float, tolerance: float):
    return dataclasses.replace(BASE, evaluation=EvaluationSpec(
        metric=metric, greater_is_better=greater_is_better, threshold=threshold, tolerance=tolerance,
        holdout_days=7))


RMSE = _spec("rmse", False, threshold=200.0, tolerance=0.25)  # lower is better
AUC = _spec("roc_auc", True, threshold=0.25, tolerance=0.5)  # higher is better (binary-exact numbers)


@pytest.mark.parametrize(("spec", "candidate", "blessed"), [
    (RMSE, 150.0, True), (RMSE, 200.0, True), (RMSE, 200.5, False),
    (AUC, 0.9, True), (AUC, 0.25, True), (AUC, 0.2, False),
])
def test_first_run_only_the_threshold_decides(spec, candidate, blessed):
    ok, reasons = decide(spec, candidate, None)
    assert ok is blessed
    assert reasons[-1] == "no champion yet: first run, the threshold alone decides"
    assert ("meets" if blessed else "misses") in reasons[0]


@pytest.mark.parametrize(("candidate", "blessed"), [
    (90.0, True),     # better than the champion
    (125.0, True),    # worse, but exactly at the tolerance bound: 100 + 25% of 100
    (125.01, False),  # just beyond it
    (199.0, False),   # under the threshold, far worse than the champion
])
def test_lower_is_better_against_the_champion(candidate, blessed):
    ok, reasons = decide(RMSE, candidate, 100.0)
    assert ok is blessed
    assert "the candidate must be at most 125.0000" in reasons[1]
    assert reasons[1].endswith("yes" if blessed else "no")


@pytest.mark.parametrize(("candidate", "blessed"), [
    (0.8, True),         # better than the champion
    (0.375, True),       # exactly at the bound: 0.75 - 50% of 0.75
    (0.3749, False),     # just beyond it
])
def test_higher_is_better_against_the_champion(candidate, blessed):
    ok, reasons = decide(AUC, candidate, 0.75)
    assert ok is blessed
    assert "the candidate must be at least 0.3750" in reasons[1]


def test_the_threshold_binds_even_when_the_champion_is_worse():
    strict = _spec("roc_auc", True, threshold=0.9, tolerance=0.0)
    ok, reasons = decide(strict, 0.85, 0.6)
    assert ok is False and "misses the threshold (at least 0.9)" in reasons[0] and reasons[1].endswith("yes")


def test_zero_tolerance_allows_ties_only():
    exact = _spec("rmse", False, threshold=1000.0, tolerance=0.0)
    assert decide(exact, 100.0, 100.0)[0] is True
    assert decide(exact, 100.0001, 100.0)[0] is False


def test_tolerance_is_towards_worse_for_a_negative_champion_score():
    r2 = _spec("r2", True, threshold=-10.0, tolerance=0.5)
    assert decide(r2, -0.75, -0.5)[0] is True  # allowed: -0.5 - 0.25
    assert decide(r2, -0.76, -0.5)[0] is False


def test_decide_is_pure():
    before = dataclasses.asdict(RMSE.evaluation)
    assert decide(RMSE, 120.0, 100.0) == decide(RMSE, 120.0, 100.0)
    assert dataclasses.asdict(RMSE.evaluation) == before
