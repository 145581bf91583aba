"""The online store, read by the server: each entity's newest history snapshot, as ``materialize`` loaded it.

The store is Feast's (``mlcycle.feature_store`` writes it); the server reads it without importing
Feast (seconds of import, process-wide side effects, a tenth of the speed). Both of Feast's layouts are
read here, and a test checks each read equal to Feast's own ``get_online_features``:

- **SQLite** (the embedded default): one table per feature view, ``<project>_<view>``, one row per
  (entity key, feature) whose value is a serialized ``feast.types.Value``;
- **Redis** (``MLCYCLE_ONLINE_STORE=redis://host:port/db``, the compose stack's): one hash per entity,
  keyed by the entity key followed by the project's name, whose fields are the 32-bit MurmurHash3 of
  ``<view>:<feature>`` (little-endian) and ``_ts:<view>``. ``materialize`` also sets
  ``mlcycle:<project>:<view>:newest_snapshot`` (epoch seconds): the freshness Feast's layout cannot
  tell without scanning every key.

The entity key is Feast's version-3 serialization (keys sorted by name; per key its name and its value,
each with a type and a length), rebuilt here; the value of a history feature is a double (protobuf field
5, 8 bytes little-endian), or empty for a null.

A row's entity is taken from its columns; an entity the store does not hold (never materialized, or
new) gets the feature's ``fill``, else null. A store that cannot be reached (Redis down) is an
``OnlineStoreUnavailable``: the server answers 503 rather than predict from fills it was not asked for.
Freshness: the newest snapshot time per view, reported in ``/metadata`` and ``/metrics``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import sqlite3
import struct
import threading
from pathlib import Path
from typing import Any

#: Feast's ValueType numbers used in entity keys.
_STRING, _INT64 = 2, 4
_DOUBLE_TAG = 0x29  # field 5 (double_val), wire type 1 (64-bit)
ONLINE_ENV = "MLCYCLE_ONLINE_STORE"
GLOBAL_KEY, GLOBAL_VALUE = "scope", "global"


class OnlineStoreError(RuntimeError):
    """The online store a model needs cannot be found or read; the message says what to set."""


class OnlineStoreUnavailable(OnlineStoreError):
    """The online store did not answer a lookup (a Redis that is down or too slow)."""


def entity_key(keys: list[str], values: list[Any], types: dict[str, str]) -> bytes:
    """Feast's ``serialize_entity_key`` (version 3) of one entity."""
    pairs = sorted(zip(keys, values, strict=True))
    out = [struct.pack("<I", len(pairs))]
    for key, _ in pairs:
        name = key.encode()
        out.append(struct.pack("<II", _STRING, len(name)) + name)
    for key, value in pairs:
        if types.get(key) == "INT64":
            data, kind = struct.pack("<q", int(value)), _INT64
        else:
            data, kind = str(value).encode(), _STRING
        out.append(struct.pack("<II", kind, len(data)) + data)
    return b"".join(out)


def decode_double(blob: bytes | None) -> float:
    if blob and len(blob) == 9 and blob[0] == _DOUBLE_TAG:
        return struct.unpack("<d", blob[1:])[0]
    return math.nan


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3's 32-bit hash (x86), unsigned: what ``mmh3.hash(..., signed=False)`` gives Feast."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF

    def mix(k: int) -> int:
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        return (k * c2) & mask

    h, whole = seed & mask, len(data) // 4 * 4
    for i in range(0, whole, 4):
        h ^= mix(int.from_bytes(data[i : i + 4], "little"))
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    if tail := data[whole:]:
        h ^= mix(int.from_bytes(tail, "little"))
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


def redis_field(view: str, feature: str) -> bytes:
    """The hash field of one feature in Feast's Redis layout (``feast.infra.online_stores.helpers._mmh3``)."""
    return struct.pack("<I", murmur3_32(f"{view}:{feature}".encode()))


def redacted(location: str) -> str:
    """``location`` fit for a log or a page: a URL's credentials left out."""
    return re.sub(r"//[^@/]*@", "//", location)


def freshness_key(project: str, view: str) -> str:
    """The Redis key where ``materialize`` keeps a view's newest snapshot time (epoch seconds)."""
    return f"mlcycle:{project}:{view}:newest_snapshot"


def locate(history: dict[str, Any], store: str | None, env: dict[str, str] | None = None) -> str:
    """Where the online store is: ``MLCYCLE_ONLINE_STORE`` (``redis://host:port/db``, an SQLite file, or
    ``sqlite``), else the store folder's ``<pipeline>/feast/online.db``."""
    value = (env if env is not None else os.environ).get(ONLINE_ENV, "").strip()
    if value.startswith("redis://"):
        return value
    if value not in ("", "sqlite"):
        return value.removeprefix("sqlite://")
    if store and "://" not in store:
        return str(Path(store) / history["project"] / "feast" / "online.db")
    raise OnlineStoreError(
        f"the model reads history features ({', '.join(history_names(history))}) from an online store: set "
        f"{ONLINE_ENV} to redis://host:port/db or to its SQLite file, or MLCYCLE_STORE to the store folder "
        "it lives in"
    )


def open_online(history: dict[str, Any], location: str) -> OnlineFeatures:
    """The reader of the online store at ``location`` (what ``locate`` returned)."""
    if location.startswith("redis://"):
        return RedisOnlineFeatures(history, location)
    return OnlineFeatures(history, location)


def history_names(history: dict[str, Any]) -> list[str]:
    return [f["name"] for view in history["views"] for f in view["features"]]


class OnlineFeatures:
    """Looks up every history feature of a row by its entity (one query per view and distinct entity),
    in Feast's SQLite online store; ``RedisOnlineFeatures`` reads its Redis one."""

    kind = "sqlite"

    def __init__(self, history: dict[str, Any], path: str):
        self.history, self.path = history, path
        self.project = history["project"]
        self.views = history["views"]
        self.names = history_names(history)
        self._local = threading.local()

    @property
    def where(self) -> str:
        """The store's location as shown in ``/metadata``: a Redis URL without its credentials."""
        return redacted(self.path)

    def _table(self, view: dict[str, Any]) -> str:
        """The view's table: names of the spec (a pipeline name, column names), checked to be identifiers
        before they are put in a query."""
        table = f"{self.project}_{view['name']}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            raise OnlineStoreError(f"feature view table {table!r} is not a plain identifier")
        return table

    def _connection(self) -> sqlite3.Connection | None:
        con = getattr(self._local, "con", None)
        if con is None:
            if not Path(self.path).is_file():
                return None  # nothing materialized yet: every entity is unknown
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            self._local.con = con
        return con

    def _read(self, view: dict[str, Any], key: bytes) -> dict[str, float]:
        con = self._connection()
        if con is None:
            return {}
        try:
            query = f'SELECT feature_name, value FROM "{self._table(view)}" WHERE entity_key = ?'  # noqa: S608
            found = con.execute(query, (key,)).fetchall()
        except sqlite3.OperationalError:  # the view's table is not there yet
            return {}
        return {name: decode_double(value) for name, value in found}

    def add(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """New rows: each with every history feature, from the online store (or the feature's fill)."""
        out = [dict(r) for r in rows]
        entities = [
            [tuple(row.get(c) for c in view["entity"]) if view["entity"] else (GLOBAL_VALUE,) for row in out]
            for view in self.views
        ]
        # every distinct (view, entity) once, all read together (one round trip to Redis)
        wanted = list(
            dict.fromkeys(
                (i, values) for i, of_view in enumerate(entities) for values in of_view if None not in values
            )
        )
        keys = [
            entity_key(list(self.views[i]["entity"]) or [GLOBAL_KEY], list(values), self.views[i]["types"])
            for i, values in wanted
        ]
        found = dict(zip(wanted, self._read_many([self.views[i] for i, _ in wanted], keys), strict=True))
        for i, view in enumerate(self.views):
            for row, values in zip(out, entities[i], strict=True):
                known = found.get((i, values), {})
                for feature in view["features"]:
                    value = known.get(feature["name"], math.nan)
                    if math.isnan(value) and feature.get("fill") is not None:
                        value = float(feature["fill"])
                    row[feature["name"]] = value
        return out

    def _read_many(self, views: list[dict[str, Any]], keys: list[bytes]) -> list[dict[str, float]]:
        return [self._read(view, key) for view, key in zip(views, keys, strict=True)]

    def _newest(self, view: dict[str, Any]) -> Any:
        con = self._connection()
        if con is None:
            return None
        try:
            query = f'SELECT max(event_ts) FROM "{self._table(view)}"'  # noqa: S608 - an identifier
            return con.execute(query).fetchone()[0]
        except sqlite3.OperationalError:
            return None

    def freshness(self) -> dict[str, Any]:
        """Per view: the newest snapshot time in the store and its age in seconds (None: none yet, or the
        store cannot be reached)."""
        now = dt.datetime.now(dt.UTC)
        out: dict[str, Any] = {}
        for view in self.views:
            try:
                when = _timestamp(self._newest(view))
            except OnlineStoreUnavailable:
                when = None
            out[view["name"]] = {
                "newest_snapshot": when.isoformat() if when else None,
                "age_seconds": (now - when).total_seconds() if when else None,
            }
        return out


class RedisOnlineFeatures(OnlineFeatures):
    """Feast's Redis online store (see the module's docstring): one ``HMGET`` per view and entity."""

    kind = "redis"
    #: A lookup waits at most this long for Redis before the request is answered 503.
    TIMEOUT_SECONDS = 1.0

    def __init__(self, history: dict[str, Any], url: str):
        import redis  # only where the online store is in Redis

        super().__init__(history, url)
        self._errors = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(
            url, socket_timeout=self.TIMEOUT_SECONDS, socket_connect_timeout=self.TIMEOUT_SECONDS
        )
        self._fields = {
            view["name"]: [redis_field(view["name"], f["name"]) for f in view["features"]]
            for view in self.views
        }

    def _unavailable(self, exc: BaseException) -> OnlineStoreUnavailable:
        return OnlineStoreUnavailable(
            f"the online store {self.where} did not answer ({type(exc).__name__}: {exc}); history "
            "features cannot be looked up until it does"
        )

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._client, method)(*args)
        except self._errors as exc:
            raise self._unavailable(exc) from exc

    def _read_many(self, views: list[dict[str, Any]], keys: list[bytes]) -> list[dict[str, float]]:
        """One pipelined ``HMGET`` per (view, entity): a single round trip for a whole request."""
        if not keys:
            return []
        pipe = self._client.pipeline(transaction=False)
        for view, key in zip(views, keys, strict=True):
            pipe.hmget(key + self.project.encode(), self._fields[view["name"]])
        try:
            answers = pipe.execute()
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        return [
            {
                f["name"]: decode_double(v)
                for f, v in zip(view["features"], values, strict=True)
                if v is not None
            }
            for view, values in zip(views, answers, strict=True)
        ]

    def _newest(self, view: dict[str, Any]) -> Any:
        value = self._call("get", freshness_key(self.project, view["name"]))
        return None if value is None else float(value)


def _timestamp(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
