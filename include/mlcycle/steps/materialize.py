"""materialize: the history snapshots of each day of the interval, into the offline and online stores.

For every day of the interval with a validated partition, the snapshots that day completes
(``mlcycle.history.snapshot_table``: per entity, at every grid point after the day's midnight up to
the next midnight included) are written as ``history/<view>/date=<day>/data.parquet`` in the store,
one view per entity of the spec's ``features:`` section. These files are the offline store's source
(the feature repository's file sources read them, ``mlcycle.feature_store``); then the interval is
loaded into the online store, where each entity keeps its latest snapshot.

Idempotent per day: the same validated days give the same bytes, and loading a day again writes the
same values. A day without a validated partition is skipped with a warning (its snapshots would be
unknown; the online store keeps what it has, and monitoring reports how old that is).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mlcycle import history
from mlcycle.errors import NothingToDo
from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec
from mlcycle.steps._common import Interval, Result
from mlcycle.steps.features import history_inputs
from mlcycle.store import Store, days, write_json, write_parquet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaterializeResult(Result):
    pipeline: str
    days: list[str]
    skipped_days: list[str]
    #: per view: snapshot rows written
    rows: dict[str, int]
    #: the latest snapshot time written (UTC, ISO), the online store's freshness after this run
    latest_snapshot: str | None
    online: dict = field(default_factory=dict)


def history_file(store: Store, view: str, day: dt.date):
    return store.base / "history" / view / f"date={day.isoformat()}" / "data.parquet"


def write_snapshots(spec: PipelineSpec, store: Store, day: dt.date) -> dict[tuple[str, ...], pd.DataFrame]:
    """The snapshot tables ``day`` completes, one per view, written to the store (the offline store)."""
    frame, known = history_inputs(spec, store, day, day + dt.timedelta(days=1))
    tables = {}
    for entity in spec.history.entities:
        table = history.snapshot_table(frame, spec.history, entity, day, known, spec.timezone)
        write_parquet(table, history_file(store, spec.history.view_name(entity), day))
        tables[entity] = table
    return tables


def _online_record(store: Store):
    return store.base / "history" / "_online.json"


def load_online(
    spec: PipelineSpec, store: Store, repo, day: dt.date, tables: dict[tuple[str, ...], pd.DataFrame]
) -> dict[str, Any]:
    """Each entity's newest snapshot of ``day`` into the online store, unless it holds a newer day already
    (a backfill of older days then leaves it as it is: the online store serves the newest)."""
    record_path = _online_record(store)
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        record = {}
    newest = record.get("day")
    if newest is not None and dt.date.fromisoformat(newest) > day:
        log.info("the online store holds snapshots of %s already, newer than %s: left as it is", newest, day)
        return {"loaded": False, "online_day": newest}
    written = {spec.history.view_name(e): repo.write_online(e, t) for e, t in tables.items()}
    latest = max((t[history.SNAPSHOT_TIME].max() for t in tables.values() if len(t)), default=None)
    record = {
        "day": day.isoformat(),
        "latest_snapshot": None if latest is None else latest.isoformat(),
        "entities": written,
        "online_store": repo.online.kind,
    }
    write_json(record, record_path)
    log.info(
        "online store (%s): the snapshots of %s for %s",
        repo.online.kind,
        day,
        ", ".join(f"{n} {view} entities" for view, n in written.items()),
    )
    return {"loaded": True, "online_day": day.isoformat(), "entities": written}


def online_freshness(spec: PipelineSpec, store: Store, at: dt.datetime) -> dict[str, Any] | None:
    """How old the online store's newest snapshot is at ``at`` (aware), and whether that is older than
    ``features.max_age``: stale history features are served as they are, so monitoring says so."""
    if not spec.history:
        return None
    try:
        record = json.loads(_online_record(store).read_text())
    except FileNotFoundError:
        record = {}
    latest = record.get("latest_snapshot")
    limit = spec.history.max_age
    if latest is None:
        why = "nothing was ever materialized: the server fills every history feature (or leaves it null)"
        return {
            "latest_snapshot": None,
            "age_seconds": None,
            "max_age_seconds": limit.total_seconds(),
            "stale": True,
            "why": why,
        }
    age = at - dt.datetime.fromisoformat(latest)
    stale = age > limit
    why = (
        f"the newest snapshot ({latest}) is {age} old at {at.isoformat()}, "
        f"{'more' if stale else 'no more'} than features.max_age ({history.format_duration(limit)})"
    )
    return {
        "latest_snapshot": latest,
        "age_seconds": age.total_seconds(),
        "max_age_seconds": limit.total_seconds(),
        "stale": stale,
        "why": why,
    }


def materialize(spec: PipelineSpec, settings: Settings, interval: Interval) -> MaterializeResult:
    if not spec.history:
        raise NothingToDo(
            f"{spec.name} declares no history features (no `features:` section): nothing to materialize"
        )
    store = Store(settings.store, spec.name)
    store.remove_stale_temporaries()
    from mlcycle.feature_store import FeatureRepo

    repo = FeatureRepo(spec, store.base)
    views = repo.apply()
    log.info(
        "feature repository %s applied: feature views %s; online store %s",
        repo.project,
        ", ".join(views),
        repo.online.kind,
    )
    done, skipped, rows = [], [], {spec.history.view_name(e): 0 for e in spec.history.entities}
    online: dict[str, Any] = {}
    for day in days(interval.start, interval.end):
        if store.current_validated(day) is None:
            log.warning(
                "%s has no validated partition: its snapshots are not written (the online store keeps "
                "its older ones); validate the day, then materialize it again",
                day,
            )
            skipped.append(day.isoformat())
            continue
        tables = write_snapshots(spec, store, day)
        for entity, table in tables.items():
            rows[spec.history.view_name(entity)] += len(table)
        online = load_online(spec, store, repo, day, tables)
        done.append(day.isoformat())
        log.info("snapshots of %s written for %d view(s)", day, len(rows))
    if not done:
        raise NothingToDo(
            f"no day of [{interval.start}, {interval.end}) has a validated partition: nothing to materialize"
        )
    last = dt.date.fromisoformat(done[-1]) + dt.timedelta(days=1)
    latest = history.grid_time(
        [history.day_points(last, spec.history.every)[0]], spec.history.every, spec.timezone
    )[0]
    return MaterializeResult(
        pipeline=spec.name,
        days=done,
        skipped_days=skipped,
        rows=rows,
        latest_snapshot=latest.isoformat(),
        online=online,
    )
