"""The first task of a pipeline DAG: which spec and which data interval this run works on.

Every step of a run takes its ``--pipeline``, ``--start`` and ``--end`` from this task's result, so the
decision is made once, in one place, and logged:

- a scheduled or backfilled run of logical date D covers ``[D, D+1)`` (Airflow runs it once the day is
  complete); a manual run (Trigger, ``airflow dags test`` D) covers the last complete day before D,
  ``[D-1, D)``, as Airflow's cron timetables infer it;
- a run with no logical date (Airflow 3 allows it) takes the latest complete interval the schedule
  serves, and says so;
- a run triggered by the drift Asset (``pipeline_support.drift``) covers the drifted day the event
  names, ``[end-1, end)``, and so trains on the window that ends there, whatever the wall clock says;
- a run whose interval lies outside the spec's schedule fails here, naming the dates it serves,
  instead of running on data that does not exist (or, with no task at all, looking like a success).

The ``pipeline`` Param may name a variant of the DAG's spec (a path, e.g. a stricter gate); it must
keep the pipeline's name, so that its history, registry and store stay this DAG's own.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any
from zoneinfo import ZoneInfo

from airflow.sdk import task
from airflow.sdk.exceptions import AirflowFailException

from pipeline_support.specs import PipelineEntry, SpecProblem, load_entry, pipelines_dir, resolve_spec

log = logging.getLogger(__name__)


def plan_interval(entry: PipelineEntry, *, pipeline: str | None, window_days: Any,
                  interval_start: Any, interval_end: Any, run_type: str, now: dt.datetime,
                  triggered_end: dt.date | None = None) -> dict[str, Any]:
    """The run's plan, or AirflowFailException (no retry: a retry cannot help) saying what is served."""
    try:
        path = resolve_spec(pipeline) if pipeline else entry.path
        spec = load_entry(path) if path != entry.path else entry
    except SpecProblem as exc:
        raise AirflowFailException(str(exc)) from exc
    if spec.name != entry.name:
        raise AirflowFailException(
            f"the `pipeline` Param names spec {path} of pipeline {spec.name!r}, but this DAG runs pipeline "
            f"{entry.name!r}: trigger training_{spec.name} instead, or pass a variant that keeps the name")
    schedule = spec.schedule
    if triggered_end is not None:  # a drift event names the interval to train up to
        start, end = triggered_end - dt.timedelta(days=1), triggered_end
        log.info("triggered by drift: the drifted interval ends %s, so the training window ends there", end)
    elif interval_start is None or interval_end is None:
        # "today" in the schedule's zone: at 00:30 UTC, Los Angeles is still in yesterday, whose
        # data is not complete yet, so the latest complete day there is the day before.
        today = now.astimezone(ZoneInfo(schedule.timezone)).date()
        last = schedule.end if schedule.end and schedule.end < today - dt.timedelta(days=1) \
            else today - dt.timedelta(days=1)
        start, end = last, last + dt.timedelta(days=1)
        log.warning("this run has no logical date: using the latest complete interval the schedule serves, "
                    "[%s, %s)", start, end)
    else:  # the interval's calendar days in the schedule's zone (its midnight may be another UTC day)
        zone = ZoneInfo(schedule.timezone)
        start, end = interval_start.astimezone(zone).date(), interval_end.astimezone(zone).date()
    if not schedule.serves(start):
        raise AirflowFailException(
            f"the run's data interval [{start}, {end}) is outside what pipeline {spec.name} serves: "
            f"{schedule.describe()}. A scheduled or backfilled run of date D covers [D, D+1); a manual run "
            f"of date D covers [D-1, D). Pick a date in range, or change `schedule:` in {path}.")
    spec_arg = spec.name if path.parent == pipelines_dir().resolve() else str(path)
    days = int(window_days) if window_days not in (None, "") else None
    log.info("%s run of pipeline %s: data interval [%s, %s), training window %s days, spec %s",
             run_type, spec.name, start, end, days or spec.window_days, path)
    return {"pipeline": spec.name, "spec": spec_arg, "start": start.isoformat(), "end": end.isoformat(),
            "window_days": days}


def interval_task(entry: PipelineEntry) -> Any:
    """The ``interval`` task of ``entry``'s DAG (no ML libraries: it reads the spec's YAML)."""

    @task(task_id="interval")
    def interval(params: dict[str, Any] | None = None, data_interval_start: Any = None,
                 data_interval_end: Any = None, dag_run: Any = None,
                 triggering_asset_events: Any = None) -> dict[str, Any]:
        """Resolve the spec and the data interval of this run; fail when the schedule does not serve it."""
        from pipeline_support.drift import triggering_end

        params = params or {}
        triggered = triggering_end(entry.name, triggering_asset_events)
        if triggered is not None:
            log.info("drift event(s) consumed by this run: %s", triggered[1])
        plan = plan_interval(entry, pipeline=params.get("pipeline"), window_days=params.get("window_days"),
                             interval_start=data_interval_start, interval_end=data_interval_end,
                             run_type=str(getattr(getattr(dag_run, "run_type", None), "value", "manual")),
                             now=getattr(dag_run, "run_after", None) or dt.datetime.now(dt.UTC),
                             triggered_end=triggered[0] if triggered else None)
        if triggered is not None:
            plan["drift_events"] = triggered[1]
        return plan

    return interval()

