"""What every step shares: its time range, its result type, and the window arithmetic."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

from mlcycle.spec import PipelineSpec
from mlcycle.spec_schema import clipped_window
from mlcycle.spec_schema import data_window as spec_data_window


@dataclass(frozen=True)
class Interval:
    """The data interval of a run, [start, end), in whole days (UTC)."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"the interval end {self.end} must be after its start {self.start}")


def require_data(spec: PipelineSpec, interval: Interval) -> None:
    """The one rule for a date outside the data: an interval with no day inside the data's bounds
    (``window.data_start`` .. ``window.data_end``) is "nothing to do" (exit 99) for every step, with a
    message naming the bounds. An interval that overlaps them goes on, on the days that exist."""
    from mlcycle.errors import NothingToDo

    end = f"window.data_end {spec.data_end}" if spec.data_end is not None else "no window.data_end"
    bounds = f"the data runs from window.data_start {spec.data_start} to {end}"
    if spec.data_end is not None and interval.start > spec.data_end:
        raise NothingToDo(
            f"the interval [{interval.start}, {interval.end}) starts after the data ends: {bounds}. "
            "Nothing to do for it; pick a date inside the bounds, or move window.data_end"
        )
    if interval.end <= spec.data_start:
        raise NothingToDo(
            f"the interval [{interval.start}, {interval.end}) ends before the data starts: {bounds}. "
            "Nothing to do for it; pick a date inside the bounds"
        )


def training_window(
    spec: PipelineSpec, interval: Interval, window_days: int | None
) -> tuple[dt.date, dt.date]:
    """The days a run trains on: ``window_days`` before the interval end, clipped to the data's bounds."""
    return clipped_window(interval.end, window_days or spec.window_days, spec.data_start, spec.data_end)


def data_window(spec: PipelineSpec, interval: Interval, window_days: int | None) -> tuple[dt.date, dt.date]:
    """The days ingest and validate bring into the store: the training window and, before it, the days
    its history features read (``features:``), clipped to the data's bounds."""
    return spec_data_window(interval.end, window_days or spec.window_days, spec.data_start, spec.data_end,
                            spec.history.lookback_days)


class Result:
    """Mixin for step results: a frozen dataclass that serialises to one JSON object."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
