"""The pipeline's Feast feature repository, generated from its spec's ``features:`` section.

One Feast project per pipeline (named after it), one feature view per entity of the section (``by_zone``,
``global``): its entities are the entity's columns (a global series gets the constant entity ``scope``
= ``global``), its fields the history features of that entity, its source the snapshot tables that
``materialize`` writes to the store (``history/<view>/date=<day>/data.parquet``, timestamp field
``snapshot_time``). The repository is configured in Python (no ``feature_store.yaml``):

- the registry and the SQLite online store live with the store, under ``<store>/<pipeline>/feast/``
  (``MLCYCLE_ONLINE_STORE`` unset or ``sqlite``); ``MLCYCLE_ONLINE_STORE=redis://host:port/db`` puts
  the online store in Redis (the compose stack's);
- the offline store is DuckDB (point-in-time joins over the snapshot files).

Feast is the store of record for serving: ``materialize`` loads each day's newest snapshot per entity
into the online store with ``write_to_online_store`` (never an older one over a newer one), and the
server reads the online store (``mlcycle.serving.online``). Training computes the same snapshots
itself (``mlcycle.history``); a test checks them equal to Feast's historical retrieval.

Only ``materialize`` (and the tests) import this module: ``import feast`` takes seconds and changes
process-wide settings (the Prometheus multiprocess directory, a warnings filter), which the import
here undoes.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pandas as pd

from mlcycle.errors import ServiceUnavailable, StepError
from mlcycle.history import SNAPSHOT_TIME, HistorySpec

# the global series' constant entity and the online store's variable: the server reads them the same way
from mlcycle.serving.online import GLOBAL_KEY, GLOBAL_VALUE, ONLINE_ENV, freshness_key, redacted

log = logging.getLogger(__name__)


def _import_feast():
    """``import feast`` without its process-wide side effects (see the module's docstring)."""
    saved = {
        k: os.environ.get(k)
        for k in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "PROMETHEUS_MULTIPROCESS_DIR")
    }
    filters = list(warnings.filters)
    import prometheus_client  # noqa: F401 - imported first: its registry is made before feast's changes

    feast = importlib.import_module("feast")

    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    warnings.filters[:] = filters
    return feast


@dataclass(frozen=True)
class OnlineStore:
    """Where the online store is: ``kind`` sqlite (``path``) or redis (``url``)."""

    kind: str
    path: str | None = None
    url: str | None = None

    @classmethod
    def from_env(cls, folder: Path | None, env: dict[str, str] | None = None) -> OnlineStore:
        value = (env if env is not None else os.environ).get(ONLINE_ENV, "").strip()
        if value.startswith("redis://"):
            return cls(kind="redis", url=value)
        if value not in ("", "sqlite"):
            raise StepError(
                f"{ONLINE_ENV}={value!r}: sqlite (the default, a file with the store) or redis://host:port/db"
            )
        if folder is None:
            raise StepError(
                f"the store is in object storage, where an SQLite online store cannot live: set "
                f"{ONLINE_ENV}=redis://host:port/db (the compose stack's Redis)"
            )
        return cls(kind="sqlite", path=str(folder / "online.db"))

    def feast_config(self) -> Any:
        if self.kind == "redis":
            from feast.infra.online_stores.redis import RedisOnlineStoreConfig

            # Feast takes host:port,db=N[,username=..][,password=..]: the URL's parts, its password included
            url = urlsplit(self.url)
            parts = [f"{url.hostname or '127.0.0.1'}:{url.port or 6379}", f"db={url.path.strip('/') or 0}"]
            parts += [f"username={unquote(url.username)}"] if url.username else []
            parts += [f"password={unquote(url.password)}"] if url.password else []
            return RedisOnlineStoreConfig(connection_string=",".join(parts))
        from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

        return SqliteOnlineStoreConfig(path=self.path)


def entity_types(spec) -> dict[str, str]:
    """Each entity column's Feast value type: INT64 for an integer column or a categorical of whole
    numbers (``hr``, ``workingday``), STRING otherwise. The server builds its keys with the same types."""
    types = {}
    for column in spec.history.entity_columns:
        declared = spec.column(column)
        values = declared.values or ()
        whole = bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        types[column] = "INT64" if declared.type == "integer" or whole else "STRING"
    return types


def serving_history(spec) -> dict[str, Any]:
    """What the server needs to look the history features up (``mlcycle.serving.online``): the Feast
    project, and per feature view its entity columns, their types and the features with their fill."""
    types = entity_types(spec)
    return {
        "project": spec.name,
        "every_seconds": int(spec.history.every.total_seconds()),
        "max_age_seconds": int(spec.history.max_age.total_seconds()),
        "views": [
            {
                "name": spec.history.view_name(e),
                "entity": list(e),
                "types": {c: types[c] for c in e} if e else {GLOBAL_KEY: "STRING"},
                "features": [
                    {"name": f.name, "fill": f.fill, "definition": f.describe()}
                    for f in spec.history.of_entity(e)
                ],
            }
            for e in spec.history.entities
        ],
    }


def feature_view_names(history: HistorySpec) -> list[str]:
    return [history.view_name(e) for e in history.entities]


class FeatureRepo:
    """The Feast repository of one pipeline: definitions, apply, online writes and reads."""

    def __init__(self, spec, store_base, online: OnlineStore | None = None):
        self.spec, self.history = spec, spec.history
        self.folder = store_base / "feast" if isinstance(store_base, Path) else None
        self.online = online or OnlineStore.from_env(self.folder)
        self.store_base = store_base
        self._feast = _import_feast()
        self._store = None

    @property
    def project(self) -> str:
        return self.spec.name

    def _config(self):
        from feast import RepoConfig
        from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig

        if self.folder is None:
            # A store in object storage keeps the registry next to the snapshots, in the same bucket
            # (Feast's S3 registry; boto3 finds the endpoint in AWS_ENDPOINT_URL_S3 as the store does).
            registry = f"{str(self.store_base).rstrip('/')}/feast/registry.db"
            repo_path = Path(tempfile.gettempdir())  # Feast wants a local folder; nothing is written there
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            registry, repo_path = str(self.folder / "registry.db"), self.folder
        return RepoConfig(
            project=self.project,
            provider="local",
            registry=registry,
            online_store=self.online.feast_config(),
            offline_store=DuckDBOfflineStoreConfig(),
            entity_key_serialization_version=3,
            repo_path=repo_path,
        )

    @property
    def store(self):
        if self._store is None:
            self._store = self._feast.FeatureStore(config=self._config())
        return self._store

    def entity_types(self) -> dict[str, str]:
        return entity_types(self.spec)

    def definitions(self) -> list[Any]:
        from feast import Entity, FeatureView, Field, FileSource, ValueType
        from feast.data_format import ParquetFormat
        from feast.types import Float64, Int64, String

        types = self.entity_types()
        objects: list[Any] = []
        entities = {}
        for column, kind in types.items():
            entities[column] = Entity(
                name=column,
                join_keys=[column],
                value_type=getattr(ValueType, kind),
                description=f"the {column} column of {self.project}",
            )
        if () in self.history.entities:
            entities[GLOBAL_KEY] = Entity(
                name=GLOBAL_KEY,
                join_keys=[GLOBAL_KEY],
                value_type=ValueType.STRING,
                description="one global series (the constant 'global')",
            )
        objects.extend(entities.values())
        # The snapshot at or before a row is at most a grid step old (25 hours on a day grid at a clock
        # change); two steps, in one unit (ibis reads a mixed days-and-seconds interval as an error).
        ttl = 2 * self.history.every
        for entity in self.history.entities:
            view = self.history.view_name(entity)
            keys = list(entity) or [GLOBAL_KEY]
            schema = [Field(name=k, dtype=Int64 if types.get(k) == "INT64" else String) for k in keys]
            schema += [Field(name=f.name, dtype=Float64) for f in self.history.of_entity(entity)]
            source = FileSource(
                name=f"{view}_snapshots",
                path=f"{str(self.store_base).rstrip('/')}/history/{view}",
                timestamp_field=SNAPSHOT_TIME,
                file_format=ParquetFormat(),
                s3_endpoint_override=None if self.folder else os.environ.get("AWS_ENDPOINT_URL_S3"),
            )
            objects.append(
                FeatureView(
                    name=view,
                    entities=[entities[k] for k in keys],
                    ttl=ttl,
                    schema=schema,
                    source=source,
                    online=True,
                    description="; ".join(
                        f"{f.name}: {f.describe()}" for f in self.history.of_entity(entity)
                    ),
                )
            )
        return objects

    def apply(self) -> list[str]:
        """Register the definitions (``feast apply``); returns the feature views' names."""
        self.store.apply(self.definitions())
        return feature_view_names(self.history)

    def feast_frame(self, table: pd.DataFrame, entity: tuple[str, ...]) -> pd.DataFrame:
        """A snapshot table as Feast takes it: typed entity columns (the constant one of a global series)."""
        out = table.copy()
        if not entity:
            out.insert(0, GLOBAL_KEY, GLOBAL_VALUE)
        self._typed_entities(out)
        out[SNAPSHOT_TIME] = pd.to_datetime(out[SNAPSHOT_TIME], utc=True).dt.as_unit("us")
        return out

    def _typed_entities(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame``'s entity columns in the types Feast keys them by (in place; returned)."""
        for column, kind in self.entity_types().items():
            if column in frame.columns:
                frame[column] = (
                    frame[column].astype("int64") if kind == "INT64" else frame[column].astype(str)
                )
        return frame

    def write_online(self, entity: tuple[str, ...], table: pd.DataFrame) -> int:
        """Each entity's newest snapshot of ``table`` into the online store; the rows written."""
        if table.empty:
            return 0
        frame = self.feast_frame(table, entity)
        keys = list(entity) or [GLOBAL_KEY]
        latest = frame.sort_values(SNAPSHOT_TIME, kind="stable").drop_duplicates(keys, keep="last")
        view = self.history.view_name(entity)
        if self.online.kind != "redis":
            self.store.write_to_online_store(view, latest)
            return len(latest)
        import redis

        try:
            self.store.write_to_online_store(view, latest)
            self._mark_newest(view, latest[SNAPSHOT_TIME].max())
        except (redis.RedisError, OSError) as exc:
            raise ServiceUnavailable(
                f"the online store {redacted(self.online.url)} did not answer ({type(exc).__name__}: {exc}): "
                f"start it (the compose stack's redis service) or point {ONLINE_ENV} at one; the offline "
                "snapshots are written, a retry loads the online store"
            ) from exc
        return len(latest)

    def _mark_newest(self, view: str, newest: pd.Timestamp) -> None:
        """The view's newest snapshot time, for the server's freshness (``serving.online.freshness_key``):
        never moved back, as Feast never writes an older snapshot over a newer one."""
        import redis

        client = redis.Redis.from_url(self.online.url)
        key = freshness_key(self.spec.name, view)
        known = client.get(key)
        seconds = pd.Timestamp(newest).timestamp()
        if known is None or float(known) < seconds:
            client.set(key, repr(seconds))

    def online_features(self, entity: tuple[str, ...], rows: list[dict[str, Any]]) -> pd.DataFrame:
        """``get_online_features`` of the view of ``entity`` for entity rows (tests, diagnostics)."""
        view = self.history.view_name(entity)
        names = [f"{view}:{f.name}" for f in self.history.of_entity(entity)]
        rows = rows if entity else [{GLOBAL_KEY: GLOBAL_VALUE} for _ in rows]
        return self.store.get_online_features(features=names, entity_rows=rows).to_df()

    def historical(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Feast's point-in-time join of every history feature onto ``rows`` (``event_time`` and the entity
        columns), in the order of ``rows``."""
        entity_df = self._typed_entities(
            rows[[*self.history.entity_columns, "event_time"]].reset_index(drop=True)
        )
        if () in self.history.entities:
            entity_df[GLOBAL_KEY] = GLOBAL_VALUE
        entity_df["event_timestamp"] = pd.to_datetime(entity_df.pop("event_time"), utc=True).dt.floor("us")
        entity_df["_row"] = range(len(entity_df))
        refs = [f"{self.history.view_name(f.entity)}:{f.name}" for f in self.history.features]
        out = self.store.get_historical_features(entity_df=entity_df, features=refs).to_df()
        return out.sort_values("_row").reset_index(drop=True)[self.history.names]


def ui_app(spec, store_base):
    """Feast's own UI and registry REST API (``/api/v1``) on the pipeline's feature repository: its
    entities, feature views with their definitions, and sources, as ``materialize`` last applied them."""
    repo = FeatureRepo(spec, store_base)  # imports Feast first, undoing its process-wide side effects
    from feast.ui_server import get_app

    return get_app(repo.store, repo.project)


def serve_ui(spec, store_base, host: str, port: int) -> None:
    """``mlcycle feature-ui``: Feast's UI on ``host:port`` until interrupted."""
    import uvicorn

    log.info("Feast UI of %s on http://%s:%d (Ctrl-C stops it)", spec.name, host, port)
    uvicorn.run(ui_app(spec, store_base), host=host, port=port, log_level="warning")
