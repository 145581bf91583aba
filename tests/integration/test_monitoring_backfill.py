"""The lifecycle loop under a real scheduler: a monitoring backfill drives retraining.

Airflow runs as in production (PostgreSQL metadata, LocalExecutor, separate scheduler, dag-processor
and api-server). The bikeshare store holds validated days for January to March (what the daily
training runs would have left) and a first champion trained on early January. The backfill of
``monitoring_bikeshare`` over ten days of winter must:

- detect K >= 1 drift episodes (the drift ledger in the store names each episode's first day);
- start exactly K drift-triggered runs of ``training_bikeshare`` (the Asset, not one per drifted day);
- never run two training runs at once;
- train each triggered run on the window that ends at its episode's first drifted day (the MLflow
  run's ``mlcycle.window_end`` tag), not at the wall clock.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import pytest

from tests.datasets import BIKESHARE_SPEC, LEAN_MODEL, write_spec_variant
from tests.integration.airflow_env import AirflowProject, free_port
from tests.integration.test_backfill import metadata_db  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

#: Logical dates, both included: ten days of winter. With the drift share lowered to 0.4 (DRIFT_SHARE),
#: 2011-01-19 starts an episode (three of four columns moved) and 2011-01-22 to 24 (two of four) drift
#: too, inside the cooldown: they join the episode instead of starting one, so exactly one retrain.
#: Steps start warm (mlcycle.warm): a day costs about 8 s instead of 20 on two cores, most of a cold
#: monitor step being its imports. =30 for a month (a second episode from 2011-02-07 with the
#: bundled share), =60 for two, into spring.
DAYS = int(os.environ.get("MLCYCLE_MONITORING_BACKFILL_DAYS") or 10)
#: The share of monitored columns that must drift for a day to drift (the bundled spec's is 0.5).
DRIFT_SHARE = 0.4
FROM = dt.date(2011, 1, 16)
TO = FROM + dt.timedelta(days=DAYS - 1)
CHAMPION_END = FROM  # the first champion is trained on the 14 days before the first monitored day
WINDOW_DAYS = 14
STALL = 10 * 60
MONITORING, TRAINING = "monitoring_bikeshare", "training_bikeshare"


def seed_champion(
    project: AirflowProject, spec: str, validated_through: dt.date, champion_end: dt.date, window_days: int
) -> None:
    """Validated days of 2011 up to ``validated_through``, and a first champion (v1) trained on the
    ``window_days`` before ``champion_end``: what earlier daily training runs would have left."""
    span = [
        "--pipeline",
        spec,
        "--start",
        validated_through.isoformat(),
        "--end",
        (validated_through + dt.timedelta(days=1)).isoformat(),
        "--window-days",
        str((validated_through - dt.date(2011, 1, 1)).days + 1),
    ]
    project.steps_cli("ingest", *span)
    project.steps_cli("validate", *span)
    one = [
        "--pipeline",
        spec,
        "--start",
        (champion_end - dt.timedelta(days=1)).isoformat(),
        "--end",
        champion_end.isoformat(),
        "--window-days",
        str(window_days),
    ]
    project.steps_cli("build_features", *one)
    trained = project.steps_cli("train", *one)
    project.steps_cli("evaluate", *one, "--run-id", trained["run_id"], "--model-uri", trained["model_uri"])
    registered = project.steps_cli(
        "register",
        "--pipeline",
        spec,
        "--run-id",
        trained["run_id"],
        "--model-uri",
        trained["model_uri"],
    )
    assert registered["blessed"], registered


def _runs(project: AirflowProject, dag_id: str) -> list[dict]:
    return project.runs(dag_id)


def _asset_triggered(run: dict) -> bool:
    """A run the drift asset started (`list-runs` names the run type only in the run id)."""
    return run["run_id"].startswith("asset_triggered__")


def _training_windows(project: AirflowProject) -> dict[str, str]:
    """Airflow run id -> the training window's end, from the MLflow training runs' tags."""
    return project.steps_python("""
        import json
        from mlflow import MlflowClient
        c = MlflowClient()
        exp = c.get_experiment_by_name("bikeshare")
        runs = c.search_runs([exp.experiment_id], filter_string="tags.`mlcycle.pipeline` = 'bikeshare'")
        print(json.dumps({r.data.tags.get("airflow.run_id"): r.data.tags.get("mlcycle.window_end") for r in runs}))
    """)


def test_monitoring_backfill_triggers_one_retrain_per_drift_episode(tmp_path, metadata_db, capsys):  # noqa: F811
    specs = tmp_path / "specs"
    spec = write_spec_variant(
        BIKESHARE_SPEC,
        specs / "bikeshare.yaml",
        model=LEAN_MODEL,
        window={"days": WINDOW_DAYS, "min_training_rows": 200},
        schedule={"start": (FROM - dt.timedelta(days=1)).isoformat()},
        monitoring={"drift_share": DRIFT_SHARE},
    )
    project = AirflowProject.create(
        tmp_path / "home",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=metadata_db,
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
        MLCYCLE_PIPELINES_DIR=str(specs),
        **AirflowProject.server_settings(free_port()),
    )
    seeded = time.monotonic()
    seed_champion(project, str(spec), TO, CHAMPION_END, WINDOW_DAYS)
    seed_wall = time.monotonic() - seeded
    store = project.store / "bikeshare"

    with project.serve():
        deadline = time.monotonic() + 180
        for dag_id in (TRAINING, MONITORING):
            while project.airflow("dags", "unpause", dag_id, check=False).returncode != 0:
                assert time.monotonic() < deadline, (
                    f"DAG `{dag_id}` never appeared:\n{project.service_logs()}"
                )
                time.sleep(3)

        started = time.monotonic()
        project.airflow(
            "backfill",
            "create",
            "--dag-id",
            MONITORING,
            "--from-date",
            FROM.isoformat(),
            "--to-date",
            TO.isoformat(),
            "--max-active-runs",
            "1",
            "--reprocess-behavior",
            "failed",
        )

        last, changed = None, time.monotonic()
        while True:
            monitoring, training = _runs(project, MONITORING), _runs(project, TRAINING)
            finished = (
                len(monitoring) == DAYS
                and all(r["state"] in ("success", "failed") for r in monitoring)
                and all(r["state"] in ("success", "failed") for r in training)
            )
            if finished:
                time.sleep(20)  # an event emitted by the last day may still be turning into a queued run
                training = _runs(project, TRAINING)
                if all(r["state"] in ("success", "failed") for r in training):
                    break
            marker = tuple(sorted((r["run_id"], r["state"]) for r in monitoring + training))
            if marker != last:
                last, changed = marker, time.monotonic()
            assert time.monotonic() - changed < STALL, f"no progress for {STALL}s:\n{project.service_logs()}"
            time.sleep(20)  # each poll is two `airflow` processes: poll gently on a shared machine
        wall = time.monotonic() - started

        failed = [r["run_id"] for r in monitoring + training if r["state"] != "success"]
        assert not failed, f"failed runs: {failed}\n{project.service_logs()}"

    ledger = json.loads((store / "reports" / "drift" / "ledger.json").read_text())["days"]
    # Every day has its decision, but for days with fewer rows than monitoring.min_rows (skipped: 2011-01-27).
    monitored = [(FROM + dt.timedelta(days=i)).isoformat() for i in range(DAYS)]
    rows = {
        d: json.loads((store / "validated" / f"date={d}" / "CURRENT.json").read_text())["rows"]
        for d in monitored
    }
    assert sorted(ledger) == [d for d in monitored if rows[d] >= 12], sorted(set(monitored) - set(ledger))
    drifted = sorted(d for d, e in ledger.items() if e["status"] != "ok")
    episodes = sorted(d for d, e in ledger.items() if e["trigger"])
    assert all(ledger[d]["episode"] == d for d in episodes)
    k = len(episodes)
    triggered = sorted((r for r in training if _asset_triggered(r)), key=lambda r: r["start_date"])
    windows = _training_windows(project)
    ends = [windows.get(r["run_id"]) for r in triggered]

    with capsys.disabled():
        print(
            f"\nmonitoring backfill of {DAYS} days: {wall:.0f} s wall ({DAYS / wall * 60:.1f} days/min; seeding "
            f"{seed_wall:.0f} s); drifted days {len(drifted)}, drift episodes K={k} (first days {episodes}), "
            f"drift-triggered training runs {len(triggered)} (window ends {ends})"
        )

    assert k >= 1, f"no drift episode in {DAYS} days of winter; ledger: {ledger}"
    assert len(drifted) > k, "every drifted day was its own episode: the test would not tell episodes apart"
    joined = [d for d in drifted if not ledger[d]["trigger"]]
    assert all(ledger[d]["episode"] in episodes and ledger[d]["episode"] < d for d in joined), ledger
    assert len(triggered) == k, [r["run_id"] for r in training]
    assert all(_asset_triggered(r) for r in training), "a training run not caused by drift"
    for a, b in zip(triggered, triggered[1:], strict=False):  # one at a time
        assert a["end_date"] <= b["start_date"], (a, b)
    # Each triggered run trained on the window ending at its episode's first drifted day (its interval end).
    assert ends == [(dt.date.fromisoformat(d) + dt.timedelta(days=1)).isoformat() for d in episodes]
    # Every monitoring day left its report and metrics next to it.
    for day in ledger:
        folder = store / "reports" / "drift" / f"date={day}"
        assert (folder / "report.html").stat().st_size > 10_000 and (folder / "metrics.json").is_file(), day
