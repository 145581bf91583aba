"""The lifecycle loop once, on real services: serving -> monitoring -> drift -> retraining -> redeployment.

Airflow runs as in production (PostgreSQL metadata, LocalExecutor, scheduler, dag-processor,
api-server), the deploy DAG starts real containers behind the real nginx proxy, and every link of the
loop is the scheduler's own doing after two commands a person would type:

1. The first champion (trained on early January) is put into production by a manual deploy run.
2. ``mlcycle replay`` sends 2011-01-19, a day that drifted from that champion's training data,
   through the proxy; the production slot logs its predictions under ``predictions/date=2011-01-19``.
3. A monitoring run for that day reads the prediction log (not the validated batch), calls drift and
   emits the drift Asset; ``training_bikeshare`` runs once on it, on the window ending at the drifted
   day; its blessed model moves ``@champion``, whose Asset starts ``deploy_bikeshare``, which puts it
   into production with a blue/green switch.

Traffic goes through the proxy the whole time (a steady load generator from the first deploy to the
end): no request fails, and the answers name version 1, then version 2.

The loop runs with history features on (the riders of the same hour the day before, and of the last
three days): clients send a row's own columns, every container the deploy starts reads the rest from
the online store that ``materialize`` keeps (the training DAG's task after the seeded days), and the
prediction log holds what was fetched.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import pytest

from tests.datasets import BIKESHARE_CSV, BIKESHARE_SPEC, LEAN_MODEL, write_spec_variant
from tests.integration.airflow_env import AirflowProject, free_port
from tests.integration.test_backfill import metadata_db  # noqa: F401 - the fixture
from tests.integration.test_deploy import (  # noqa: F401 - docker_ready: the fixture
    _load_generator,
    _ports,
    _served,
    docker_ready,
    stop_deployment,
)
from tests.integration.test_monitoring_backfill import (
    _asset_triggered,
    _training_windows,
    seed_champion,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.docker]

DRIFTED = dt.date(2011, 1, 19)  # the first drifted day against a champion trained on Jan 2-15
CHAMPION_END = dt.date(2011, 1, 16)
WINDOW_DAYS = 14
STALL = 10 * 60
TRAINING, MONITORING, DEPLOY = "training_bikeshare", "monitoring_bikeshare", "deploy_bikeshare"
#: Short windows: the data starts on 2011-01-01 and the first champion trains on January 2-15.
LOOP_FEATURES = {
    "history": {
        "riders_same_hour_yesterday": {"of": "bikers", "lag": "1d", "entity": ["hr"]},
        "riders_mean_3d": {"of": "bikers", "agg": "mean", "window": "3d"},
    }
}


def _runs(project: AirflowProject, dag_id: str) -> list[dict]:
    return project.runs(dag_id)


def _wait(project: AirflowProject, done, what: str):
    """Poll ``done()`` until it returns something true; fail when nothing changes for STALL seconds."""
    last, changed = None, time.monotonic()
    while True:
        runs = {dag: _runs(project, dag) for dag in (TRAINING, MONITORING, DEPLOY)}
        failed = [r["run_id"] for rs in runs.values() for r in rs if r["state"] == "failed"]
        assert not failed, f"failed runs while waiting for {what}: {failed}\n{project.service_logs()}"
        if result := done(runs):
            return result
        marker = json.dumps({d: sorted((r["run_id"], r["state"]) for r in rs) for d, rs in runs.items()})
        if marker != last:
            last, changed = marker, time.monotonic()
        assert time.monotonic() - changed < STALL, (
            f"no progress for {STALL}s waiting for {what}:\n{project.service_logs()}"
        )
        time.sleep(10)


def _logged_rows(project: AirflowProject, day: dt.date) -> int:
    folder = project.store / "bikeshare" / "predictions" / f"date={day.isoformat()}"
    return project.steps_python(f"""
        import glob, json
        import pyarrow.parquet as pq
        files = glob.glob({str(folder)!r} + "/part-*.parquet")
        print(json.dumps(sum(pq.read_metadata(f).num_rows for f in files)))
    """)


def test_drift_in_served_traffic_retrains_and_redeploys_once(tmp_path, metadata_db, docker_ready):  # noqa: F811
    production, blue, green, staging = _ports(4)
    specs = tmp_path / "specs"
    spec = write_spec_variant(
        BIKESHARE_SPEC,
        specs / "bikeshare.yaml",
        model=LEAN_MODEL,
        window={"days": WINDOW_DAYS, "min_training_rows": 200},
        schedule={"start": (DRIFTED - dt.timedelta(days=2)).isoformat()},
        features=LOOP_FEATURES,
        deploy={
            "production_port": production,
            "slot_ports": [blue, green],
            "staging_port": staging,
            "auto_approve": True,
            "watch_seconds": 3,
            "ready_timeout_seconds": 90,
            "smoke_rows": 100,
            "smoke_requests": 20,
            "latency_budget_ms": 5000,
        },
    )
    namespace = f"t{uuid.uuid4().hex[:8]}"
    project = AirflowProject.create(
        tmp_path / "home",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=metadata_db,
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
        MLCYCLE_PIPELINES_DIR=str(specs),
        MLCYCLE_DEPLOY_NAMESPACE=namespace,
        **AirflowProject.server_settings(free_port()),
    )
    seed_champion(
        project, str(spec), validated_through=DRIFTED, champion_end=CHAMPION_END, window_days=WINDOW_DAYS
    )
    # what the daily training runs' materialize tasks would have left: the online store holds the
    # snapshots the rows of the drifted day need
    project.steps_cli(
        "materialize", "--pipeline", str(spec), "--start", "2011-01-01", "--end", DRIFTED.isoformat()
    )
    load = None
    try:
        with project.serve():
            deadline = time.monotonic() + 180
            for dag_id in (TRAINING, MONITORING, DEPLOY):
                while project.airflow("dags", "unpause", dag_id, check=False).returncode != 0:
                    assert time.monotonic() < deadline, (
                        f"DAG `{dag_id}` never appeared:\n{project.service_logs()}"
                    )
                    time.sleep(3)

            # 1. the first champion into production, by hand
            project.airflow("dags", "trigger", DEPLOY)
            _wait(
                project, lambda runs: [r for r in runs[DEPLOY] if r["state"] == "success"], "the first deploy"
            )
            assert _served(production) == "1"
            load_module = _load_generator()
            rows = project.steps_python(f"""
                import datetime as dt, json
                from pathlib import Path
                from mlcycle.monitoring.replay import _day_rows, _records
                from mlcycle.spec import load_spec
                from mlcycle.store import Store
                spec = load_spec({str(spec)!r})
                frame = _day_rows(spec, Store(Path({str(project.store)!r}), "bikeshare"), dt.date(2011, 1, 18))
                print(json.dumps(_records(frame[spec.row_feature_names])))
            """)
            load = load_module.Load(production, rows, rate=10, threads=4).start()

            # 2. the drifted day's traffic through the proxy, logged by the production slot
            replayed = project.steps_cli(
                "replay",
                "--pipeline",
                str(spec),
                "--date",
                DRIFTED.isoformat(),
                "--rate",
                "20",
                "--url",
                f"http://127.0.0.1:{production}",
            )
            day_rows = json.loads(
                (project.store / "bikeshare" / "validated" / f"date={DRIFTED}" / "CURRENT.json").read_text()
            )["rows"]
            assert replayed["rows"] == replayed["requests"] == day_rows and replayed["rejected"] == 0, (
                replayed
            )
            assert replayed["model_versions"] == ["1"], replayed
            deadline = time.monotonic() + 120  # the slot's log writer writes at least every 10 s
            while _logged_rows(project, DRIFTED) < day_rows:
                assert time.monotonic() < deadline, "the production slot did not log the replayed day"
                time.sleep(3)

            # 3. one monitoring run for that day; the rest is the scheduler's
            project.airflow(
                "backfill",
                "create",
                "--dag-id",
                MONITORING,
                "--from-date",
                DRIFTED.isoformat(),
                "--to-date",
                DRIFTED.isoformat(),
                "--reprocess-behavior",
                "failed",
            )

            def redeployed(runs):
                done = [r for r in runs[DEPLOY] if r["state"] == "success"]
                settled = all(r["state"] in ("success", "failed") for rs in runs.values() for r in rs)
                return runs if len(done) >= 2 and runs[MONITORING] and settled else None

            runs = _wait(project, redeployed, "monitoring, retraining and the second deploy")
            time.sleep(20)  # a second event would turn into a queued run by now
            runs = {dag: _runs(project, dag) for dag in (TRAINING, MONITORING, DEPLOY)}
            figures = load_module.summary(load.stop())
            load = None
            served = _served(production)
    finally:
        if load is not None:
            load.stop()
        stop_deployment(project, spec, namespace)

    metrics = json.loads(
        (project.store / "bikeshare" / "reports" / "drift" / f"date={DRIFTED}" / "metrics.json").read_text()
    )
    # the production slot read the history features from the online store and logged them: the
    # three-day mean for every row, the same hour the day before where that hour has riders (the
    # ice storm of 2011-01-18 left half of its hours without data: those are null, as in training)
    logged = project.steps_python(f"""
        import glob, json
        import pandas as pd
        files = glob.glob({str(project.store / "bikeshare" / "predictions" / f"date={DRIFTED}")!r} + "/part-*.parquet")
        frame = pd.concat([pd.read_parquet(f) for f in files])
        source = pd.read_csv({str(BIKESHARE_CSV)!r})
        hours = set(source.loc[source["day"] == {(DRIFTED - dt.date(2011, 1, 1)).days!r}, "hr"].astype(int))
        known = frame["riders_same_hour_yesterday"].notna()
        print(json.dumps({{"mean_3d": float(frame["riders_mean_3d"].notna().mean()),
                           "yesterday_known_where_it_had_riders": bool((known == frame["hr"].isin(hours)).all()),
                           "yesterday_known": float(known.mean())}}))
    """)
    assert logged["mean_3d"] == 1.0 and logged["yesterday_known_where_it_had_riders"], logged
    assert logged["yesterday_known"] > 0.3, logged
    print(f"\nloop: monitoring {metrics['verdict']['line']}; traffic {figures}")
    assert metrics["source"] == "predictions" and metrics["rows"] == day_rows, metrics["source"]
    assert metrics["decision"]["trigger"] and metrics["model"]["version"] == "1", metrics["decision"]
    assert [r["state"] for r in runs[MONITORING]] == ["success"]
    assert len(runs[TRAINING]) == 1 and _asset_triggered(runs[TRAINING][0]), runs[TRAINING]
    assert runs[TRAINING][0]["state"] == "success"
    windows = _training_windows(project)
    assert windows[runs[TRAINING][0]["run_id"]] == (DRIFTED + dt.timedelta(days=1)).isoformat()
    registry = project.registry("bikeshare")
    assert registry["aliases"].get("champion") == "2" and registry["aliases"].get("production") == "2", (
        registry
    )
    assert sorted(r["state"] for r in runs[DEPLOY]) == ["success", "success"], runs[DEPLOY]
    assert served == "2"
    assert figures["failed"] == 0 and figures["versions"] == ["1", "2"], figures
