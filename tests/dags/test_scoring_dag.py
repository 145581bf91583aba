"""The scoring DAGs as parsed: one per spec with a `scoring:` section, the version resolved first."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)


def test_one_scoring_dag_per_spec_with_a_scoring_section(dagbag):
    from pipeline_support.specs import discover

    entries, _ = discover()
    expected = {f"scoring_{e.name}" for e in entries if e.scoring is not None}
    assert "scoring_bikeshare" in expected
    assert {d for d in dagbag.dags if d.startswith("scoring_")} == expected
    assert not any(f"scoring_{e.name}" in dagbag.dags for e in entries if e.scoring is None)


def test_the_version_is_resolved_first_and_a_rejected_batch_stops_the_run(dagbag):
    dag = dagbag.dags["scoring_bikeshare"]
    up = {t.task_id: t.upstream_task_ids for t in dag.tasks}
    assert up == {
        "interval": set(),
        "model": {"interval"},
        "extract": {"interval", "model"},
        "ingest": {"extract"},
        "validate": {"ingest"},
        "score": {"validate"},
        "load_postgres": {"interval", "score"},
        "announce": {"score", "load_postgres"},
    }
    score = dag.get_task("score")
    assert "xcom_pull(task_ids='model')['version']" in " ".join(score.command)
    assert dag.get_task("model").command[:1] == ["score"] and "--resolve" in dag.get_task("model").command
    assert dag.get_task("validate").retries == 0
    assert [o.uri for o in dag.get_task("announce").outlets] == ["mlcycle://bikeshare/scores"]
    assert dag.params["window_days"] == 1  # ingest and validate read the interval's day only
