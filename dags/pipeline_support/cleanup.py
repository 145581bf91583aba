"""What a task's failure callback tidies after its last try: no MLflow run stays RUNNING forever.

A step killed outright (SIGKILL: the OOM killer, a lost container) never ends the MLflow run it
started. The next try of the task ends it (``mlcycle.tracking.fail_stale_runs``); after the last
try there is no next one, so the task's failure callback runs ``mlcycle close-runs`` for the DAG
run, which marks those runs FAILED with the reason in their ``mlcycle.ended_by`` tag. The callback
runs in the Airflow worker with the step environment's ``mlcycle`` (``MLCYCLE_STEPS_BIN``) and
never raises: the failure alert beside it is what a person needs first.
"""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Any

from pipeline_support import PROJECT_ROOT
from pipeline_support.runner import steps_executable, steps_home

log = logging.getLogger(__name__)

#: Seconds the clean-up may take (one MLflow search and an update per run left RUNNING).
TIMEOUT = 120


def close_killed_runs(context: Any) -> None:
    """``on_failure_callback`` of a step that starts MLflow runs (``train``)."""
    ti = context["ti"]
    try:
        plan = ti.xcom_pull(task_ids="interval") or {}
        spec = plan.get("spec") if isinstance(plan, dict) else None
        if not spec:
            log.info("close-runs: the run has no plan (its interval task did not run): no MLflow run to end")
            return
        executable = steps_executable()
        command = [
            str(executable),
            "close-runs",
            "--pipeline",
            spec,
            "--dag-id",
            ti.dag_id,
            "--run-id",
            ti.run_id,
        ]
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=str(PROJECT_ROOT),
            env={**os.environ, "MLCYCLE_HOME": steps_home()},
        )
        if proc.returncode != 0:
            log.warning(
                "close-runs exited %d; MLflow runs of %s / %s may still show RUNNING: %s",
                proc.returncode,
                ti.dag_id,
                ti.run_id,
                proc.stderr.strip()[-2000:],
            )
            return
        log.info("close-runs: %s", proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "done")
    except Exception:  # a callback that raises would hide nothing better; say so and go on
        log.warning("close-runs could not run for %s / %s", ti.dag_id, ti.run_id, exc_info=True)
