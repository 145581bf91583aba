"""Which DAG and conf `make run PIPELINE=... DATE=...` runs; fails loudly when the date is not served.

Prints four lines: the DAG id, its conf (JSON), the MLCYCLE_PIPELINES_DIR the run needs, and the
logical date to give `airflow dags test` (DATE at the schedule's time, in its zone).

    python scripts/pipeline_run.py bikeshare 2011-06-30          ->  training_bikeshare / {} / (unchanged)
    python scripts/pipeline_run.py .ci/bikeshare-ci.yaml 2011-06-30  ->  training_bikeshare / {"pipeline": "..."}
    python scripts/pipeline_run.py /any/folder/new.yaml 2011-06-30   ->  training_new / {} / <dirs>:/any/folder/new.yaml

A spec whose name has no DAG yet (a new data set, in any folder) is added to MLCYCLE_PIPELINES_DIR
as a file entry: the DAG files build its DAGs from it where it is, nothing is copied, and its
neighbours in that folder are left alone. A spec that keeps the name of a known pipeline (a variant,
e.g. a CI-sized search) runs through that pipeline's DAG with the `pipeline` Param.

`airflow dags test <dag> D` is a manual run: it covers the interval that ended last before D. Given
D at the schedule's time in its zone (the fourth line), that is the day before D, [D-1, D), in any
zone; given a bare date (UTC midnight), a pipeline west of UTC would cover the local day before.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dags"))

from pipeline_support.specs import (  # noqa: E402
    SpecProblem,
    discover,
    load_entry,
    pipelines_dir,
    pipelines_entries,
    resolve_spec,
)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    pipeline, date = argv[1], argv[2]
    try:
        day = dt.date.fromisoformat(date)
    except ValueError:
        print(f"error: DATE={date!r} is not a date like 2011-06-30", file=sys.stderr)
        return 2
    try:
        path = resolve_spec(pipeline)
        entry = load_entry(path)
    except SpecProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    start = day - dt.timedelta(days=1)
    if not entry.schedule.serves(start):
        print(f"error: DATE={date} is outside what pipeline {entry.name} serves. A manual run of date D "
              f"covers [D-1, D); the schedule serves {entry.schedule.describe()}, so pick DATE from "
              f"{entry.schedule.start + dt.timedelta(days=1)}"
              + (f" to {entry.schedule.end + dt.timedelta(days=1)}." if entry.schedule.end else " on."),
              file=sys.stderr)
        return 1
    entries = pipelines_entries()
    known = {e.name: e.path for e in discover()[0]}
    if entry.name not in known:  # a new pipeline: its own DAGs, built from the file where it is
        entries.append(path)
        conf: dict[str, str] = {}
    elif known[entry.name] == path or path.parent == pipelines_dir().resolve():
        conf = {}
    else:  # a variant of a known pipeline: that pipeline's DAG, with the variant as its Param
        conf = {"pipeline": str(path)}
    print(f"training_{entry.name}")
    print(json.dumps(conf))
    print(os.pathsep.join(str(e) for e in entries))
    print(entry.schedule.run_after(day).isoformat())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
