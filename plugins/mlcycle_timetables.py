"""The pipelines' timetable: a cron data-interval schedule bounded by the spec's first and last interval.

Airflow's ``CronDataIntervalTimetable`` runs from the DAG's ``start_date`` to its ``end_date``, and
those dates also decide which tasks a run gets: a run whose logical date lies outside them is
created with no task at all and shows as a green, empty success. The training DAGs therefore start at
the data's first day with no ``end_date`` (so that a run past the schedule, such as the UI's default
date, still has its first task, which says which dates the pipeline serves), and put the spec's
schedule bounds here, where they decide what
the scheduler and a backfill create.

Registered as a plugin so that the scheduler and the DAG processor can deserialize it (Airflow's
documented way for custom timetables); DAG files import it by module name, as ``plugins/`` is on
``sys.path`` in every Airflow process.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
from airflow.plugins_manager import AirflowPlugin
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable
from pendulum import DateTime


class PipelineTimetable(CronDataIntervalTimetable):
    """Data intervals of ``cron`` in ``timezone`` whose start lies in ``[first, last]`` (either may be None)."""

    def __init__(self, cron: str, timezone: Any, first: DateTime | None = None, last: DateTime | None = None):
        super().__init__(cron, timezone)
        self.first = first
        self.last = last
        bounds = f"from {first.date() if first else 'any date'} to {last.date() if last else 'no end'}"
        self.description = f"{self.description}, {bounds}"

    @property
    def summary(self) -> str:
        return f"{self._expression} ({self.first.date() if self.first else '…'} to " \
               f"{self.last.date() if self.last else '…'})"

    def next_dagrun_info(self, *, last_automated_data_interval: DataInterval | None,
                         restriction: TimeRestriction) -> DagRunInfo | None:
        earliest, latest = restriction.earliest, restriction.latest
        if self.first is not None:
            earliest = self.first if earliest is None else max(earliest, self.first)
        if self.last is not None:
            latest = self.last if latest is None else min(latest, self.last)
        if earliest is not None and latest is not None and earliest > latest:
            return None
        bounded = TimeRestriction(earliest=earliest, latest=latest, catchup=restriction.catchup)
        return super().next_dagrun_info(last_automated_data_interval=last_automated_data_interval,
                                        restriction=bounded)

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), "first": self.first.date().isoformat() if self.first else None,
                "last": self.last.date().isoformat() if self.last else None}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> PipelineTimetable:
        base = CronDataIntervalTimetable.deserialize(data)
        tz = base._timezone

        def at_midnight(day: str | None) -> DateTime | None:
            if not day:
                return None
            date = dt.date.fromisoformat(day)
            return pendulum.datetime(date.year, date.month, date.day, tz=tz)

        return cls(base._expression, tz, at_midnight(data.get("first")), at_midnight(data.get("last")))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PipelineTimetable) and self.serialize() == other.serialize())

    __hash__ = None  # type: ignore[assignment]


class MlcycleTimetablesPlugin(AirflowPlugin):
    name = "mlcycle_timetables"
    timetables = [PipelineTimetable]
