"""The extension points of the step package, as tables: one registration adds a source kind.

Kept free of pandas and scikit-learn (the spec's parser reads it): an entry names its code as
``"module:attribute"``, imported only when a spec uses it.

- :data:`SOURCES`: ``source.kind`` -> :class:`SourceKind`, the reader's class (constructed with the
  spec; ``read(start, end)`` returns a :class:`mlcycle.sources.base.Selection`) and the keys of the
  spec's ``source:`` section it needs and takes. ``docs/extending.md`` walks through adding one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SourceKind:
    #: The reader: a class (or factory) taking the spec, or its ``"module:Class"``.
    reader: str | Callable[..., Any]
    #: Keys of ``source:`` a spec of this kind must set (besides ``kind``).
    required: tuple[str, ...] = ()
    #: Keys it may set.
    optional: tuple[str, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return ("kind", *self.required, *self.optional)

    def load(self) -> Callable[..., Any]:
        if not isinstance(self.reader, str):
            return self.reader
        module, _, name = self.reader.partition(":")
        return getattr(importlib.import_module(module), name)


SOURCES: dict[str, SourceKind] = {
    "file": SourceKind("mlcycle.sources.file:FileReader", required=("path",), optional=("format",)),
    "postgres": SourceKind(
        "mlcycle.sources.postgres:PostgresReader", required=("table", "conn_id", "timestamp_column")
    ),
    "http": SourceKind(
        "mlcycle.sources.http:HttpReader", required=("url",), optional=("format", "timeout_seconds")
    ),
}


def register_source(
    kind: str,
    reader: str | Callable[..., Any],
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> None:
    """Make ``source.kind: <kind>`` a valid spec, read by ``reader`` (see :class:`SourceKind`)."""
    if kind in SOURCES:
        raise ValueError(f"source kind {kind!r} is already registered")
    SOURCES[kind] = SourceKind(reader, tuple(required), tuple(optional))
