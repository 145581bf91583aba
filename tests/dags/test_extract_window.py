"""The extract task's copy of the window arithmetic agrees with the step package's, case by case.

``dags/pipeline_support/extract.py`` cannot import the step package (the Airflow environment has no
pandas), so it repeats ``mlcycle.steps._common.training_window``. This test computes both over a few
hundred generated cases: the Airflow side here, the step side in one subprocess of the step
environment, and compares every answer.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess

import pytest

from pipeline_support.extract import training_window
from tests.conftest import ROOT, STEPS_BIN

STEP_SIDE = """
import dataclasses, datetime as dt, json, sys
from mlcycle.spec import load_spec
from mlcycle.steps._common import Interval, training_window
spec = load_spec(sys.argv[1])
answers = []
for case in json.load(sys.stdin):
    d = lambda v: dt.date.fromisoformat(v) if v else None
    variant = dataclasses.replace(spec, data_start=d(case["data_start"]), data_end=d(case["data_end"]),
                                  window_days=case["days"])
    end = d(case["end"])
    start, stop = training_window(variant, Interval(end - dt.timedelta(days=1), end), case["window_days"])
    answers.append([start.isoformat(), stop.isoformat()])
print(json.dumps(answers))
"""


def _cases(n: int = 400, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    base = dt.date(2011, 1, 1)
    cases = []
    for _ in range(n):
        data_start = base + dt.timedelta(days=rng.randint(0, 60))
        data_end = None if rng.random() < 0.25 else data_start + dt.timedelta(days=rng.randint(0, 400))
        cases.append(
            {
                "data_start": data_start.isoformat(),
                "data_end": data_end and data_end.isoformat(),
                "days": rng.randint(1, 400),
                "end": (data_start + dt.timedelta(days=rng.randint(-30, 500))).isoformat(),
                "window_days": None if rng.random() < 0.4 else rng.randint(1, 400),
            }
        )
    # the edges: an interval ending on data_end + 1, on data_start, one day past each
    for offset in (-1, 0, 1, 2):
        cases.append(
            {
                "data_start": "2011-01-01",
                "data_end": "2011-12-31",
                "days": 28,
                "end": (dt.date(2012, 1, 1) + dt.timedelta(days=offset)).isoformat(),
                "window_days": None,
            }
        )
        cases.append(
            {
                "data_start": "2011-01-01",
                "data_end": "2011-12-31",
                "days": 28,
                "end": (dt.date(2011, 1, 1) + dt.timedelta(days=offset)).isoformat(),
                "window_days": 7,
            }
        )
    return cases


@pytest.mark.skipif(not (STEPS_BIN / "python").exists(), reason="no step environment (make setup)")
def test_extract_and_the_steps_compute_the_same_training_window():
    cases = _cases()
    proc = subprocess.run(
        [str(STEPS_BIN / "python"), "-c", STEP_SIDE, str(ROOT / "include" / "pipelines" / "bikeshare.yaml")],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(steps) == len(cases)
    disagree = []
    for case, step_answer in zip(cases, steps, strict=True):
        window = {"days": case["days"], "data_start": case["data_start"], "data_end": case["data_end"]}
        start, stop = training_window(window, dt.date.fromisoformat(case["end"]), case["window_days"])
        if [start.isoformat(), stop.isoformat()] != step_answer:
            disagree.append((case, [start.isoformat(), stop.isoformat()], step_answer))
    assert not disagree, f"{len(disagree)} of {len(cases)} cases differ, e.g. {disagree[:3]}"
    assert len({tuple(a) for a in steps}) > 200, "the cases do not exercise the arithmetic"


def test_the_spec_default_of_28_days_applies_when_neither_says():
    start, stop = training_window({"data_start": "2011-01-01"}, dt.date(2011, 6, 1), None)
    assert (start, stop) == (dt.date(2011, 5, 4), dt.date(2011, 6, 1))
