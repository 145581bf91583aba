"""The drift Asset: how a monitoring decision reaches the training DAG.

``drift_asset(name)`` is ``mlcycle://<name>/drift``. The monitoring DAG's ``retrain_trigger`` task
has it as its outlet and emits an event only when the ``monitor`` step decided "trigger" (a new
drift episode, outside the cool-down); otherwise it is skipped, and a skipped task emits nothing.
The event's ``extra`` carries what training needs: the pipeline, the drifted interval's end, the
reasons and the report. The training DAG runs on its timetable or on this asset
(``AssetOrTimeSchedule``) and reads the interval end from the event (``triggering_end``), never from
the wall clock.

De-duplication happens twice. The monitor step decides from its durable drift ledger in the store
(one trigger per episode, a cool-down, the same decision when a day is re-run, and no second event
for a re-run day: ``retrain_trigger`` emits only a decision made by this run, not a recorded one). Airflow adds its own
guard: the training DAG runs one run at a time (``max_active_runs=1``; a triggered run waits, queued,
for the one before), and events that arrive before the scheduler creates the run are consumed
together by that one run.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import task
from airflow.sdk.exceptions import AirflowSkipException

from pipeline_support.assets import drift_asset

log = logging.getLogger(__name__)


def trigger_extra(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The event's extra for a monitor result that says "trigger", else None (no event)."""
    if not result or not result.get("trigger") or result.get("replayed"):
        return None  # no retrain; or a re-run of a day whose event went out with its first run
    return {
        "pipeline": result["pipeline"],
        "interval_start": result["start"],
        "interval_end": result["end"],
        "status": result["status"],
        "reasons": list(result.get("reasons") or []),
        "report": result.get("report"),
        "model_version": result.get("model_version"),
    }


def retrain_trigger_task(name: str) -> Any:
    """``retrain_trigger``: emits the drift event when the monitor's decision says so; else skipped."""
    asset = drift_asset(name)

    @task(task_id="retrain_trigger", outlets=[asset])
    def retrain_trigger(ti: Any = None, outlet_events: Any = None) -> dict[str, Any]:
        """Emit ``mlcycle://<name>/drift`` with the decision's interval end; skip when there is nothing to trigger."""
        result = ti.xcom_pull(task_ids="monitor")
        extra = trigger_extra(result)
        if extra is None:
            why = (result or {}).get("why") or "no monitoring result"
            if (result or {}).get("replayed") and result.get("trigger"):
                why = (
                    f"this day was decided before and its drift event went out then ({why}); trigger "
                    f"training_{name} by hand to retrain again"
                )
            raise AirflowSkipException(f"no retrain: {why}")
        outlet_events[asset].extra = extra
        log.info(
            "drift event for %s: retrain on the window ending %s (%s)",
            name,
            extra["interval_end"],
            "; ".join(extra["reasons"]),
        )
        return extra

    return retrain_trigger()


def triggering_end(name: str, events: Any) -> tuple[dt.date, list[dict[str, Any]]] | None:
    """The interval end a drift-triggered run trains up to, from its triggering events; None otherwise.

    Several events can fold into one run (they arrived before the scheduler created it): it trains up to
    the latest drifted interval's end, and the log names every event it consumed.
    """
    if not events:
        return None
    try:
        found = list(events[drift_asset(name)])
    except KeyError:
        return None
    extras = [dict(e.extra or {}) for e in found if (e.extra or {}).get("interval_end")]
    if not extras:
        return None
    ends = sorted(dt.date.fromisoformat(str(x["interval_end"])) for x in extras)
    return ends[-1], extras
