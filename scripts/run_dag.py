"""`airflow dags test`, recorded the way the Airflow UI reads a run (what `make run` calls).

`airflow dags test` runs every task in this process and prints its logs, but it writes no task log
file (the UI then shows only "Log message source details"), and it records the run as started at
its logical date (the run of 2011-06-30 would have lasted about 5,600 days). This wrapper runs the
same command, shows its output as it comes, and afterwards, for the run it made:

- writes each task try's part of the output to the log file the UI reads
  (``[logging] base_log_folder`` / ``log_filename_template``);
- records the run's start as the moment the command started, and its end as the moment it ended.

Usage: run_dag.py DAG_ID DATE [airflow dags test options...]; exits with the command's exit code.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

#: The line `dags test` logs when a task begins (airflow/sdk/definitions/dag.py, ``_run_task``).
TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(?P<task>\S+) map_index=(?P<index>-?\d+)")


def split_by_task(lines: list[str]) -> dict[tuple[str, int], list[list[str]]]:
    """(task id, map index) -> the output of each of its tries, in order; lines before any task dropped."""
    tries: dict[tuple[str, int], list[list[str]]] = defaultdict(list)
    current: list[str] | None = None
    for line in lines:
        match = TASK_START.search(line)
        if match:
            current = []
            tries[(match["task"], int(match["index"]))].append(current)
        if current is not None:
            current.append(line)
    return dict(tries)


def record(dag_id: str, started: dt.datetime, ended: dt.datetime, lines: list[str]) -> Path | None:
    """Write the task logs of the latest run of ``dag_id`` and fix its start; the run's log folder."""
    from airflow.configuration import conf
    from airflow.models import DagRun
    from airflow.utils.log.file_task_handler import FileTaskHandler
    from airflow.utils.session import create_session
    from sqlalchemy import select

    base = Path(conf.get("logging", "base_log_folder"))
    handler = FileTaskHandler(base_log_folder=str(base))
    tries = split_by_task(lines)
    with create_session() as session:
        run = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)
        ).first()
        if run is None:
            return None
        if run.start_date is None or run.start_date < started:
            run.start_date = started  # dags test starts the run at its logical date
            run.end_date = ended if run.end_date else None
        folder = None
        for ti in run.get_task_instances(session=session):
            for number, output in enumerate(tries.get((ti.task_id, ti.map_index), []), start=1):
                path = base / handler._render_filename(ti, number, session=session)
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():  # a log a real worker wrote stays as it is
                    path.write_text("".join(output))
                folder = path.parents[1]
        session.commit()
    return folder


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    proc = subprocess.Popen(
        ["airflow", "dags", "test", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    if proc.stdout is None:  # stdout=PIPE always gives one
        raise RuntimeError("airflow dags test has no output pipe")
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    code = proc.wait()
    folder = record(argv[0], started, dt.datetime.now(dt.UTC), lines)
    if folder:
        print(f"==> task logs of the run for the Airflow UI: {folder}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
