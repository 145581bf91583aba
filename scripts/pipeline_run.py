"""Which DAG and conf `make run PIPELINE=... DATE=...` runs; fails loudly when the date is not served.

    python scripts/pipeline_run.py bikeshare 2011-06-30          ->  training_bikeshare {}
    python scripts/pipeline_run.py .ci/bikeshare-ci.yaml 2011-06-30  ->  training_bikeshare {"pipeline": "..."}

`airflow dags test <dag> D` is a manual run: it covers the day before D, [D-1, D).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dags"))

from pipeline_support.specs import SpecProblem, load_entry, pipelines_dir, resolve_spec  # noqa: E402


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
    conf = {} if path.parent == pipelines_dir().resolve() else {"pipeline": str(path)}
    print(f"training_{entry.name} {json.dumps(conf)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
