"""The deploy DAGs as parsed: one per spec, on its champion asset, wired staging -> approval -> blue/green."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS)


def test_one_deploy_dag_per_training_dag_on_its_champion_asset(dagbag):
    training = {d.removeprefix("training_") for d in dagbag.dags if d.startswith("training_")}
    deploy = {d.removeprefix("deploy_") for d in dagbag.dags if d.startswith("deploy_")}
    assert training and deploy == training
    for name in deploy:
        dag = dagbag.dags[f"deploy_{name}"]
        assets = [a.uri for a in dag.timetable.asset_condition.objects]
        assert assets == [f"mlcycle://{name}/champion"], assets
        assert dag.max_active_runs == 1
        announce = dagbag.dags[f"training_{name}"].get_task("announce")
        assert [o.uri for o in announce.outlets] == [f"mlcycle://{name}/champion"]


def test_the_deploy_is_wired_staging_approval_rollout_watch_record(dagbag):
    dag = next(d for i, d in dagbag.dags.items() if i.startswith("deploy_"))
    up = {t.task_id: t.upstream_task_ids for t in dag.tasks}
    assert up == {
        "resolve": set(),
        "build": {"resolve"},
        "staging": {"build"},
        "route": {"resolve", "staging"},
        "approve": {"route"},
        "auto_approved": {"route"},
        "rollout": {"approve", "auto_approved"},
        "watch": {"rollout"},
        "record": {"watch"},
    }
    assert dag.get_task("rollout").trigger_rule == "none_failed_min_one_success"
    assert (
        dag.get_task("approve").ignore_downstream_trigger_rules is True
    )  # a rejection skips everything after
    assert set(dag.params) == {"pipeline", "version", "target", "auto_approve"}
