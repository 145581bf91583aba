"""What every generated DAG shares: its schedule from the spec, its defaults, and how a bad spec shows.

A DAG file loops over ``discover()`` and calls its own builder once per spec (Airflow's documented
single-file method of dynamic DAG generation). This module turns a spec's ``schedule:`` section into
DAG arguments and makes an unloadable spec visible: ``broken_specs_dag`` returns a placeholder whose
validation fails, so the DAG processor records one import error for the DAG file, naming each broken
spec and its problems, while the DAGs of every other spec load as usual.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG

from pipeline_support.alerts import failure_notifier
from pipeline_support.specs import PipelineEntry, Schedule, discover


def default_args(owner: str = "mlops", retries: int = 1) -> dict[str, Any]:
    return {
        "owner": owner,
        "retries": retries,
        # MLCYCLE_RETRY_DELAY_SECONDS, read when the DAG is parsed: a shorter wait for tests and demos.
        "retry_delay": timedelta(seconds=int(os.environ.get("MLCYCLE_RETRY_DELAY_SECONDS") or 120)),
        "on_failure_callback": [failure_notifier()],
    }


def start_date(entry: PipelineEntry) -> pendulum.DateTime:
    """The DAG's start date: the first day the source holds data, not the schedule's first day.

    The schedule's bounds live in the timetable. The DAG starts earlier on purpose, at the data's
    start and with no end date, so that a run of a date the schedule does not serve still has its
    tasks, and its first task can say which dates are served (a run of a date before the DAG's start
    would have no task at all, and look like an empty success).
    """
    day = entry.data_start
    return pendulum.datetime(day.year, day.month, day.day, tz=pendulum.timezone(entry.schedule.timezone))


def timetable(schedule: Schedule) -> Any:
    """The spec's schedule as a timetable: its cron in its time zone, bounded by its first and last day."""
    try:
        from mlcycle_timetables import PipelineTimetable  # plugins/, on sys.path in every Airflow process
    except ModuleNotFoundError as exc:
        raise ImportError("the pipelines' timetable lives in the project's plugins/ folder, which is not "
                          "Airflow's plugins folder here: set AIRFLOW__CORE__PLUGINS_FOLDER="
                          f"{Path(__file__).resolve().parents[2] / 'plugins'} (scripts/env.sh does)") from exc

    tz = pendulum.timezone(schedule.timezone)
    first = pendulum.datetime(schedule.start.year, schedule.start.month, schedule.start.day, tz=tz)
    last = (pendulum.datetime(schedule.end.year, schedule.end.month, schedule.end.day, tz=tz)
            if schedule.end else None)
    return PipelineTimetable(schedule.interval, tz, first, last)


def timetable_or_drift(entry: PipelineEntry) -> Any:
    """The training schedule: the spec's timetable, or a drift event of the pipeline's monitoring.

    A drift-triggered run trains on the window that ends at the drifted interval's end, read from the
    event by the ``interval`` task (see ``pipeline_support.drift``).
    """
    from airflow.sdk import AssetOrTimeSchedule

    from pipeline_support.assets import drift_asset

    return AssetOrTimeSchedule(timetable=timetable(entry.schedule), assets=[drift_asset(entry.name)])


def spec_doc(entry: PipelineEntry, kind: str, body: str) -> str:
    """The DAG's page in the UI: which pipeline, its schedule, then the kind's own documentation."""
    return (f"## {kind} of pipeline `{entry.name}`\n\n{entry.description}\n\n"
            f"**Spec**: `{_shown(entry.path)}`. **Schedule**: {entry.schedule.describe()}; "
            f"catchup {'on' if entry.schedule.catchup else 'off'}.\n\n{body}")


def _shown(path: Path) -> str:
    from pipeline_support.specs import PROJECT_ROOT

    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


class BrokenSpecs(ValueError):
    """One or more pipeline specs cannot be loaded; their DAGs are missing until they are fixed."""


class _BrokenSpecsDag(DAG):
    """A placeholder DAG that fails validation with the specs' problems (the DAG processor's import error)."""

    problems: str = ""

    def validate(self) -> None:
        raise BrokenSpecs(self.problems)


def broken_specs_dag(kind: str, broken: dict[Path, str]) -> DAG | None:
    """A DAG that the DAG processor rejects with every broken spec's problems; None when all load."""
    if not broken:
        return None
    placeholder = _BrokenSpecsDag(dag_id=f"{kind}__broken_specs", schedule=None,
                                  tags=["mlcycle"], doc_md="Placeholder for specs that do not load.")
    listing = "\n".join(broken.values())
    placeholder.problems = (f"{len(broken)} pipeline spec(s) cannot be loaded, so their {kind} DAGs are "
                            f"missing (the other pipelines are unaffected):\n{listing}")
    return placeholder


def publish(namespace: dict[str, Any], kind: str, build: Callable[[PipelineEntry], DAG],
            when: Callable[[PipelineEntry], bool] | None = None) -> None:
    """One ``<kind>_<name>`` DAG per spec in a DAG file's ``namespace`` (its ``globals()``, where the
    DAG processor looks), and the placeholder that reports the specs that do not load. ``when``
    chooses the specs that get one (default: all)."""
    entries, broken = discover()
    for entry in entries:
        if when is None or when(entry):
            namespace[f"{kind}_{entry.name}"] = build(entry)
    if (placeholder := broken_specs_dag(kind, broken)) is not None:
        namespace[placeholder.dag_id] = placeholder
