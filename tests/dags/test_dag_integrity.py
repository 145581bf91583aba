"""DAG integrity: every DAG file imports cleanly and follows the project's operating rules.

Runs in the Airflow environment. Parsing must not touch the ML stack, connections or Variables.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
HEAVY = ("pandas", "numpy", "sklearn", "mlflow", "great_expectations", "evidently", "scipy", "pyarrow")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)


def test_every_dag_file_imports(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.dags, "no DAG found"


#: Every training DAG runs these tasks, each after the one before it and after nothing else.
TRAINING_ORDER = ["interval", "extract", "ingest", "validate", "build_features", "train", "evaluate", "register",
                  "announce"]
#: Tasks that deliberately do not retry, and why. Every other task of every DAG retries at least once.
NO_RETRY = {"validate": "a rejected batch fails the same way on every try"}
#: No task of a deploy DAG retries: each failure leaves production as it was, and a retry would change it unasked.
NO_RETRY_TAGS = {"deploy"}


def training_dags(dagbag) -> dict:
    """The DAGs tagged ``training`` (one per pipeline spec, or the single ``training`` DAG)."""
    found = {dag_id: dag for dag_id, dag in dagbag.dags.items() if "training" in dag.tags}
    assert found, f"no DAG tagged `training` among {sorted(dagbag.dags)}"
    return found


def test_training_dags_are_wired_in_pipeline_order(dagbag):
    for dag_id, dag in training_dags(dagbag).items():  # from the parsed files: no metadata database
        assert sorted(dag.task_ids) == sorted(TRAINING_ORDER), dag_id
        assert dag.get_task(TRAINING_ORDER[0]).upstream_task_ids == set(), dag_id
        for upstream, downstream in zip(TRAINING_ORDER, TRAINING_ORDER[1:], strict=False):
            assert dag.get_task(downstream).upstream_task_ids == {upstream}, f"{dag_id}: {downstream}"
        assert dag.get_task(TRAINING_ORDER[-1]).downstream_task_ids == set(), dag_id


def test_every_task_retries_unless_it_says_why_not(dagbag):
    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            reuses_validate = dag_id in training_dags(dagbag) or "scoring" in dag.tags  # scoring_<name> too
            if (task.task_id in NO_RETRY and reuses_validate) or NO_RETRY_TAGS & set(dag.tags):
                assert task.retries == 0, f"{dag_id}.{task.task_id}: listed in NO_RETRY but retries"
            else:
                assert task.retries >= 1, f"{dag_id}.{task.task_id} does not retry (retries={task.retries})"
                assert task.retry_delay.total_seconds() > 0, f"{dag_id}.{task.task_id} retries at once"


@pytest.mark.parametrize("rule", ["tags", "owner", "notifier", "doc", "start_date"])
def test_operating_rules(dagbag, rule):
    for dag_id, dag in dagbag.dags.items():
        if rule == "tags":
            assert dag.tags, f"{dag_id} has no tags"
        elif rule == "doc":
            assert dag.doc_md and len(dag.doc_md) > 200, f"{dag_id} has no documentation for the UI"
        elif rule == "start_date":
            assert dag.start_date is not None and dag.start_date.tzinfo is not None
        elif rule == "notifier":
            assert dag.on_failure_callback, f"{dag_id} has no DAG-level failure notifier"
        for task in dag.tasks:
            if rule == "owner":
                assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has no owner"
            elif rule == "notifier":
                assert task.on_failure_callback, f"{dag_id}.{task.task_id} has no failure notifier"


def test_no_cycles(dagbag):
    for dag in dagbag.dags.values():
        dag.check_cycle()  # raises AirflowDagCycleException on a cycle


def test_parsing_imports_no_ml_library_and_touches_no_connection_or_variable(tmp_path):
    """Parse every DAG file in a fresh interpreter with connection and Variable lookups booby-trapped."""
    probe = f"""
import sys
from airflow.sdk import BaseHook, Variable
def trap(*a, **k):
    raise RuntimeError("a connection or Variable was read at parse time")
BaseHook.get_connection = classmethod(trap)
Variable.get = staticmethod(trap)
from airflow.dag_processing.dagbag import BundleDagBag
bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path={str(DAGS)!r})
assert not bag.import_errors, bag.import_errors
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
assert not heavy, f"parsing imported {{heavy}}"
print(len(bag.dags))
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                               "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip().splitlines()[-1]) >= 1


def test_airflow_environment_cannot_import_the_ml_stack():
    """The isolation promise: the Airflow environment has none of the step libraries."""
    for module in ("sklearn", "mlflow", "great_expectations", "evidently", "pandas"):
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
        assert proc.returncode != 0, f"{module} is importable in the Airflow environment"
