"""Steps that first touch a fresh embedded MLflow store at the same moment all succeed: one creates
its tables and the experiment, the others find them. Real processes on a real SQLite store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.datasets import make_classification_dataset
from tests.unit.conftest import step_env

STEPS = 4

_CHILD = """
import pathlib, sys, time
from mlcycle.settings import Settings
from mlcycle.spec import load_spec
from mlcycle.tracking import connect

settings, spec = Settings.from_env(), load_spec(sys.argv[1])
pathlib.Path(sys.argv[2]).touch()
while not pathlib.Path(sys.argv[3]).exists():
    time.sleep(0.005)
print(connect(settings, spec))
"""


def test_steps_first_touching_a_fresh_store_at_once_all_connect(tmp_path):
    spec_path = make_classification_dataset(tmp_path / "data", days=3)
    env = {**os.environ, **step_env(tmp_path)}
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(spec_path), str(tmp_path / f"ready{i}"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(STEPS)
    ]
    try:
        while not all((tmp_path / f"ready{i}").exists() for i in range(STEPS)):
            assert all(p.poll() is None for p in procs), [p.stderr.read()[-2000:] for p in procs if p.poll()]
            time.sleep(0.05)
        go.touch()  # all imported and parsed: they race for the store from here
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failures = [err[-2000:] for p, (_, err) in zip(procs, results, strict=True) if p.returncode]
    assert not failures, failures
    assert len({out.strip() for out, _ in results}) == 1, "the steps created more than one experiment"
