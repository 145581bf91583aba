"""Source readers: each returns the rows of a time range, with an ``event_time`` column.

A reader is chosen by the spec's ``source.kind`` from :data:`mlcycle.registry.SOURCES` (kind -> the
reader's class, imported only when a spec uses it, and the keys of its spec section). All of them
produce the same frame (a :class:`~mlcycle.sources.base.Selection`), so ingest writes the same raw
partition whatever the source was.
"""

from __future__ import annotations

from mlcycle.errors import SpecError
from mlcycle.registry import SOURCES
from mlcycle.sources.base import OUTSIDE_BOUNDS, Reader, Selection
from mlcycle.spec import PipelineSpec

__all__ = ["OUTSIDE_BOUNDS", "Reader", "Selection", "reader_for"]


def reader_for(spec: PipelineSpec) -> Reader:
    kind = SOURCES.get(spec.source.kind)
    if kind is None:  # the spec's parser refuses an unknown kind; a kind unregistered since is this
        raise SpecError(
            f"source.kind {spec.source.kind!r} has no reader (known: {', '.join(sorted(SOURCES))})"
        )
    return kind.load()(spec)
