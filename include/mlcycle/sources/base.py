"""What every source reader returns (:class:`Selection`) and is (:class:`Reader`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd

#: Why a source row belongs to no day (besides the reasons of ``mlcycle.timestamps``).
OUTSIDE_BOUNDS = "outside_source_bounds"


@dataclass(frozen=True)
class Selection:
    """What a reader returns: the range's rows, and the source rows that belong to no day, by reason.

    A reader that can stream gives ``batches`` instead of ``frame``: time-ordered batches of whole
    local days, so that ingest holds one day of a large window at a time.
    """

    frame: pd.DataFrame | None
    rows_read: int
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    batches: Callable[[], Iterator[pd.DataFrame]] | None = None

    def parts(self) -> Iterator[pd.DataFrame]:
        """The range's rows in time order: the batches, or the one frame."""
        if self.batches is not None:
            return self.batches()
        assert self.frame is not None
        return iter([self.frame])


class Reader(Protocol):
    def read(self, start: dt.date, end: dt.date) -> Selection:
        """Rows whose ``event_time`` falls in [start, end), sorted by ``event_time``, and the dropped counts."""
        ...
