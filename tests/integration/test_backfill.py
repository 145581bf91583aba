"""A real backfill: the scheduler, not `dags test`, runs the training DAG over two days.

Airflow runs as in production: its metadata database is a fresh PostgreSQL database, the
LocalExecutor runs the tasks, and scheduler, dag-processor and api-server (the Execution API the task
processes report to) are separate processes. The backfill is created from the CLI, as an operator
would. While the first day trains, the scheduler is SIGKILLed with everything under it (its
executor's workers, the task process, the `mlcycle train` step), as a host that dies would, and a
new scheduler is started: the backfill resumes by itself (the new scheduler resets the dead one's
`running` task and runs it again; that try ends the MLflow run the killed one left RUNNING). Every
run must succeed, the store must hold exactly one partition per day with no leftovers, no MLflow
run is left RUNNING, and clearing one day makes the scheduler re-run it into byte-identical
partitions.

Task logs go to object storage (remote logging with the Amazon provider, the connection
``mlcycle_s3``, a real SeaweedFS): with the local log folder deleted, the API server still shows every
task's log, read back from the bucket, as it would on a host where no task ran.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.datasets import BIKESHARE_SPEC, LEAN_MODEL, write_spec_variant
from tests.integration.airflow_env import AirflowProject, _json_output, free_port, fresh_database

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FROM, TO = dt.date(2011, 3, 1), dt.date(2011, 3, 2)  # logical dates, both included: 2 daily runs
DAYS = (TO - FROM).days + 1
WINDOW_DAYS = 14
#: The older day, cleared after the newer one ran: its partitions are restated under a later champion.
RERUN = FROM
#: One run at a time, in date order: each day's candidate is gated against the champion the previous
#: day left (Airflow's default for a backfill is 10 concurrent runs, whatever the DAG's max_active_runs).
MAX_ACTIVE_RUNS = 1
#: Longest time without any progress (a run's state changing, a partition written) before failing.
STALL = 10 * 60
DAG_ID = "training_bikeshare"
TASKS = {"interval", "extract", "ingest", "validate", "build_features", "train", "evaluate", "register"}
#: Runs only when the gate moved ``@champion`` (it emits the champion asset); skipped otherwise.
ANNOUNCE = "announce"
#: The task the scheduler is killed during, in the first run.
KILLED_DURING = "train"
#: How often the scheduler looks for task instances of a dead scheduler (Airflow's default is 300 s;
#: docs/operations.md): a new scheduler resets the killed one's `running` task once that scheduler's
#: last heartbeat is ``scheduler_health_check_threshold`` (30 s) old, and runs it again.
ORPHAN_CHECK_SECONDS = 10


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


@pytest.fixture
def metadata_db(postgres_dsn):
    """A fresh, empty database for Airflow's metadata on the local server; dropped afterwards."""
    with fresh_database(postgres_dsn, "airflow_bf") as url:
        yield url


def _runs(project: AirflowProject) -> list[dict]:
    return project.runs(DAG_ID)


def _progress(runs: list[dict]) -> tuple:
    """What changes while a backfill makes progress: each run's state and end."""
    return tuple(sorted((r["run_id"], r["state"], r.get("end_date") or "") for r in runs))


def _wait_until(project: AirflowProject, done, what: str, stall: float = STALL) -> list[dict]:
    """Poll until ``done(runs)``; fail only when nothing has progressed for ``stall`` seconds.

    A busy machine makes the whole slower, not stuck: a fixed total deadline fails healthy runs there,
    while a stalled scheduler is caught just as surely by the absence of progress. Progress is any
    change of a run's state, or a task of the running run finishing (its partitions appear).
    """
    last, changed = None, time.monotonic()
    while True:
        runs = _runs(project)
        if done(runs):
            return runs
        marker = (
            _progress(runs),
            sum(1 for _ in project.store.rglob("*.parquet")) if project.store.exists() else 0,
        )
        if marker != last:
            last, changed = marker, time.monotonic()
        elif time.monotonic() - changed > stall:
            raise AssertionError(
                f"{what}: no progress for {stall:.0f}s; runs: "
                f"{[(r['run_id'], r['state']) for r in runs]}\n{project.service_logs()}"
            )
        time.sleep(5)


def _kill_scheduler_during(project: AirflowProject, task_id: str, stall: float = STALL) -> tuple[str, int]:
    """Wait until ``task_id`` of the earliest run is running, then SIGKILL the scheduler and all
    under it; the run id and how many processes were killed. Fails when no run makes progress."""
    last, changed = None, time.monotonic()
    while True:
        rows = project._metadata(
            "SELECT ti.run_id, ti.state FROM task_instance ti JOIN dag_run r "
            "ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id "
            "WHERE ti.dag_id = :dag AND ti.task_id = :task ORDER BY r.logical_date LIMIT 1",
            dag=DAG_ID,
            task=task_id,
        )
        if rows and rows[0][1] == "running":
            time.sleep(2)  # into the step itself, past the task's start-up
            return rows[0][0], project.kill_service("scheduler")
        assert not rows or rows[0][1] in (None, "scheduled", "queued"), (rows, project.service_logs())
        marker = (rows, sum(1 for _ in project.store.rglob("*.parquet")) if project.store.exists() else 0)
        if marker != last:
            last, changed = marker, time.monotonic()
        assert time.monotonic() - changed < stall, f"`{task_id}` never started:\n{project.service_logs()}"
        time.sleep(0.5)


def _partition_hashes(store: Path) -> dict[str, str]:
    return {
        str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
        for kind in ("raw", "validated", "features")
        for p in sorted((store / kind).rglob("*"))
        if p.is_file()
    }


def remote_logging(s3_env: dict[str, str], folder: str) -> dict[str, str]:
    """Airflow settings that keep task logs under ``folder`` (s3://...) through the connection ``mlcycle_s3``."""
    return {
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
        "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": folder,
        "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "mlcycle_s3",
        "AIRFLOW_CONN_MLCYCLE_S3": json.dumps(
            {
                "conn_type": "aws",
                "login": s3_env["AWS_ACCESS_KEY_ID"],
                "password": s3_env["AWS_SECRET_ACCESS_KEY"],
                "extra": {"endpoint_url": s3_env["AWS_ENDPOINT_URL_S3"], "region_name": s3_env["AWS_REGION"]},
            }
        ),
    }


def test_scheduler_backfill_on_postgres_with_local_executor(tmp_path, metadata_db, s3_env, capsys):
    spec = write_spec_variant(BIKESHARE_SPEC, tmp_path / "specs" / "bikeshare.yaml", model=LEAN_MODEL)
    logs = f"s3://{s3_env['MLCYCLE_TEST_S3_BUCKET']}/tests/{uuid.uuid4().hex}/logs"
    project = AirflowProject.create(
        tmp_path / "home",
        **remote_logging(s3_env, logs),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=metadata_db,
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
        AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL=str(ORPHAN_CHECK_SECONDS),
        **AirflowProject.server_settings(free_port()),
    )
    assert "postgresql" in project.airflow("config", "get-value", "database", "sql_alchemy_conn").stdout
    store = project.store / "bikeshare"

    with project.serve():
        deadline = time.monotonic() + 180  # the dag-processor has to parse and serialise the DAG first
        while project.airflow("dags", "unpause", DAG_ID, check=False).returncode != 0:
            assert time.monotonic() < deadline, f"DAG `{DAG_ID}` never appeared:\n{project.service_logs()}"
            time.sleep(3)

        started = time.monotonic()
        project.airflow(
            "backfill",
            "create",
            "--dag-id",
            DAG_ID,
            "--from-date",
            FROM.isoformat(),
            "--to-date",
            TO.isoformat(),
            "--max-active-runs",
            str(MAX_ACTIVE_RUNS),
            "--dag-run-conf",
            json.dumps({"pipeline": str(spec), "window_days": WINDOW_DAYS}),
        )
        killed_run, killed = _kill_scheduler_during(project, KILLED_DURING)
        project.start_service("scheduler")
        runs = _wait_until(
            project,
            lambda rs: len(rs) == DAYS and all(r["state"] in ("success", "failed") for r in rs),
            f"backfill of {DAYS} days after the scheduler was killed",
        )
        wall = time.monotonic() - started
        # The killed try was reset as an orphan of the dead scheduler and run again, which finished the run.
        tries = project._metadata(
            "SELECT try_number, state FROM task_instance WHERE dag_id = :dag AND run_id = :run AND task_id = :task",
            dag=DAG_ID,
            run=killed_run,
            task=KILLED_DURING,
        )
        assert tries and tries[0][0] >= 2 and tries[0][1] == "success", (tries, project.service_logs())
        # ... and that try closed the MLflow run the killed one left behind: none is left RUNNING.
        running = project.steps_python("""
            import json
            from mlflow import MlflowClient
            c = MlflowClient()
            ids = [e.experiment_id for e in c.search_experiments()]
            print(json.dumps([r.info.run_id for r in c.search_runs(ids, "attributes.status = 'RUNNING'")]))
        """)
        assert running == [], (running, project.service_logs())

        # Every run succeeded, one per day, all created by the backfill.
        assert sorted(r["logical_date"][:10] for r in runs) == [
            d.isoformat() for d in _days(FROM, TO + dt.timedelta(1))
        ]
        assert all(r["run_id"].startswith("backfill__") for r in runs), runs
        failed = [r["run_id"] for r in runs if r["state"] != "success"]
        assert not failed, f"failed runs: {failed}\n{project.service_logs()}"
        for run in runs:  # a run whose tasks were skipped is `success` too: every task must have run
            rows = _json_output(
                project.airflow("tasks", "states-for-dag-run", DAG_ID, run["run_id"], "-o", "json").stdout
            )
            states = {r["task_id"]: r["state"] for r in rows}
            assert states.pop(ANNOUNCE) in ("success", "skipped"), (run, rows)
            assert states == dict.fromkeys(TASKS, "success"), (run, rows)
        ordered = sorted(runs, key=lambda r: r["logical_date"])
        if MAX_ACTIVE_RUNS == 1:  # one at a time, oldest first
            assert all(a["end_date"] <= b["start_date"] for a, b in zip(ordered, ordered[1:], strict=False))
        # The validate task's "Report" button opens the run's Data Docs page, served by the API server.
        api = project.env["AIRFLOW__API__BASE_URL"].rstrip("/")
        with urllib.request.urlopen(
            f"{api}/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(ordered[0]['run_id'])}"
            "/taskInstances/validate/links",
            timeout=30,
        ) as response:
            report = json.loads(response.read())["extra_links"]["Report"]
        assert report.startswith(f"{api}/mlcycle/reports/bikeshare/reports/validation/data_docs/"), report
        with urllib.request.urlopen(report, timeout=30) as response:
            assert "Great Expectations" in response.read().decode()
        # Every task's log is in the bucket; without the local copies the API server reads it from there.
        uploaded = project.steps_python(f"""
            import json, os
            os.environ.update({dict(s3_env)!r})
            from mlcycle.objects import objects_for
            print(json.dumps(objects_for({logs!r}).keys("")))
        """)
        assert sum(f"run_id={r['run_id']}/task_id=train/" in k for r in runs for k in uploaded) >= DAYS, (
            uploaded
        )
        shutil.rmtree(Path(project.env["AIRFLOW_HOME"]) / "logs")
        with urllib.request.urlopen(
            f"{api}/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(ordered[-1]['run_id'])}"
            "/taskInstances/train/logs/1?full_content=true",
            timeout=60,
        ) as response:
            shown = json.dumps(json.loads(response.read())["content"])
        assert "mlcycle.steps.train" in shown and logs.removeprefix("s3://") in shown, shown[-3000:]
        span = (
            max(dt.datetime.fromisoformat(r["end_date"]) for r in runs)
            - min(dt.datetime.fromisoformat(r["start_date"]) for r in runs)
        ).total_seconds()

        # One partition per day: the union of the runs' training windows, no duplicates, no temp files.
        windows = set()
        for day in _days(FROM, TO + dt.timedelta(1)):
            end = day + dt.timedelta(days=1)
            windows |= set(_days(end - dt.timedelta(days=WINDOW_DAYS), end))
        expected = sorted(f"date={d.isoformat()}" for d in windows)
        for kind in ("raw", "validated"):
            folders = sorted(p.name for p in (store / kind).iterdir())
            assert folders == expected, (kind, folders)
        for folder in expected:
            assert [p.name for p in (store / "raw" / folder).iterdir()] == ["data.parquet"], folder
            # One validated version per day (the same bytes as raw), and the pointer naming it.
            names = sorted(p.name for p in (store / "validated" / folder).iterdir())
            raw_sha = hashlib.sha256((store / "raw" / folder / "data.parquet").read_bytes()).hexdigest()
            assert names == sorted(["CURRENT.json", f"{raw_sha[:16]}.parquet"]), folder
        features = sorted(p.name for p in (store / "features").iterdir())
        assert features == [
            f"end={(d + dt.timedelta(1)).isoformat()}" for d in _days(FROM, TO + dt.timedelta(1))
        ]
        assert not [p for p in store.rglob("*") if p.name.endswith((".tmp", "-tmp"))]
        assert not (store / "quarantine").exists()

        # Clear one day: the scheduler runs it again and rewrites the same bytes.
        before = _partition_hashes(store)
        rerun_raw = store / "raw" / f"date={RERUN.isoformat()}" / "data.parquet"
        written = rerun_raw.stat().st_mtime_ns
        (rerun_run,) = [r for r in runs if r["logical_date"].startswith(RERUN.isoformat())]
        project.airflow(
            "tasks",
            "clear",
            DAG_ID,
            "--start-date",
            RERUN.isoformat(),
            "--end-date",
            RERUN.isoformat(),
            "--yes",
        )

        def rerun_done(rs: list[dict]) -> bool:
            (r,) = [r for r in rs if r["run_id"] == rerun_run["run_id"]]
            return r["state"] in ("success", "failed") and r["end_date"] != rerun_run["end_date"]

        rerun_started = time.monotonic()
        (again,) = [
            r
            for r in _wait_until(project, rerun_done, f"re-run of {RERUN}")
            if r["run_id"] == rerun_run["run_id"]
        ]
        rerun_wall = time.monotonic() - rerun_started
        assert again["state"] == "success", project.service_logs()
        assert rerun_raw.stat().st_mtime_ns > written, "the cleared run did not rewrite its partitions"
        assert _partition_hashes(store) == before
        assert len(_runs(project)) == DAYS

    with capsys.disabled():
        print(
            f"\nbackfill of {DAYS} days (scheduler + LocalExecutor, PostgreSQL metadata, max_active_runs="
            f"{MAX_ACTIVE_RUNS}): {wall:.0f} s wall from `backfill create` to all runs done "
            f"({DAYS / wall * 60:.2f} runs/min); first start to last end {span:.0f} s; "
            f"re-run of one cleared day {rerun_wall:.0f} s"
        )
