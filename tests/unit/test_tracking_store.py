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


_CONNECT = """
import sys
from mlcycle.settings import Settings
from mlcycle.spec import load_spec
from mlcycle.tracking import connect

print(connect(Settings.from_env(), load_spec(sys.argv[1])))
"""

#: The same, killed (SIGKILL) right after MLflow's migrations create one of their last tables: what a
#: step killed by a lost worker in its first seconds on a fresh store does.
_KILLED_IN_MIGRATIONS = (
    """
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "after_cursor_execute")
def killed(conn, cursor, statement, *args):
    if statement.lstrip().upper().startswith("CREATE TABLE SECRETS"):
        os.kill(os.getpid(), signal.SIGKILL)

"""
    + _CONNECT
)


def test_a_step_killed_while_creating_the_store_leaves_none_half_made(tmp_path):
    """The next step finds no store or a whole one, never a half-migrated database that it cannot
    open ("table secrets already exists")."""
    spec_path = make_classification_dataset(tmp_path / "data", days=3)
    env = {**os.environ, **step_env(tmp_path)}
    first = subprocess.run(
        [sys.executable, "-c", _KILLED_IN_MIGRATIONS, str(spec_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == -9, (
        f"the step was not killed in the migrations: nothing was tested\n{first.stderr[-2000:]}"
    )
    again = subprocess.run(
        [sys.executable, "-c", _CONNECT, str(spec_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
