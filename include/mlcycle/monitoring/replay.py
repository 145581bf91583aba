"""replay: send one day's real rows to a serving endpoint at a set rate, as live traffic would arrive.

``mlcycle replay --pipeline bikeshare --date 2011-03-10 --rate 20 --url http://127.0.0.1:8000``
reads the day's validated partition (else its raw partition) from the store, keeps the model's input
columns, and POSTs the rows to ``<url>/predict`` in batches of ``--batch`` rows at ``--rate`` rows per
second. Each request states the rows' day in the ``X-Event-Date`` header, so the server's prediction
log files them under ``predictions/date=<day>``, where the monitoring DAG of that day finds them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mlcycle.errors import SourceError, StepError
from mlcycle.settings import Settings
from mlcycle.spec import PipelineSpec
from mlcycle.steps._common import Result
from mlcycle.store import Store, read_parquet

log = logging.getLogger(__name__)


class ReplayFailed(StepError):
    """The serving endpoint refused or did not answer the replayed traffic."""


@dataclass(frozen=True)
class ReplayResult(Result):
    pipeline: str
    date: str
    url: str
    rows: int
    requests: int
    rejected: int
    seconds: float
    rate: float  # rows per second achieved
    model_version: str | None  # the last answer's
    model_versions: list[str]  # every version that answered, in the order they first did


def _day_rows(spec: PipelineSpec, store: Store, day: dt.date) -> pd.DataFrame:
    for path in (store.validated(day), store.raw(day)):
        if path.is_file():
            return read_parquet(path)
    raise SourceError(
        f"no validated or raw partition of {day} in {store.base}: ingest that day first "
        f"(a training or monitoring run that covers it)"
    )


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))  # numpy scalars become plain JSON values


def _post(url: str, rows: list[dict[str, Any]], day: dt.date, timeout: float) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(rows).encode(),
        method="POST",
        headers={"content-type": "application/json", "x-event-date": day.isoformat()},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read()[:300].decode(errors="replace")}


def replay(
    spec: PipelineSpec,
    settings: Settings,
    day: dt.date,
    url: str,
    rate: float,
    batch: int = 1,
    limit: int | None = None,
    timeout: float = 10.0,
) -> ReplayResult:
    if rate <= 0 or batch < 1:
        raise StepError(f"--rate must be above 0 rows/s and --batch at least 1 (got {rate}, {batch})")
    frame = _day_rows(spec, Store(settings.store, spec.name), day)[spec.row_feature_names]
    rows = _records(frame.head(limit) if limit else frame)
    endpoint = url.rstrip("/") + "/predict"
    log.info(
        "replaying %d row(s) of %s to %s at %.1f rows/s in batches of %d",
        len(rows),
        day,
        endpoint,
        rate,
        batch,
    )
    began = time.perf_counter()
    requests = rejected = 0
    version = None
    versions: list[str] = []
    for i in range(0, len(rows), batch):
        due = began + i / rate
        if (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        try:
            status, body = _post(endpoint, rows[i : i + batch], day, timeout)
        except OSError as exc:
            raise ReplayFailed(
                f"{endpoint} did not answer after {requests} request(s): {exc}. Start the server "
                f"(`make serve` or `mlcycle serve --model-uri ...`) and re-run"
            ) from exc
        requests += 1
        if status != 200:
            rejected += 1
            log.warning("request %d rejected with HTTP %d: %s", requests, status, body.get("error", body))
        version = body.get("model_version", version)
        if version is not None and str(version) not in versions:
            versions.append(str(version))
    seconds = time.perf_counter() - began
    if rejected == requests and requests:
        raise ReplayFailed(
            f"{endpoint} rejected every request ({rejected}); see the log for the first reasons"
        )
    log.info(
        "replayed %d row(s) in %d request(s) in %.1f s (%.1f rows/s), %d rejected; model version %s",
        len(rows),
        requests,
        seconds,
        len(rows) / seconds if seconds else 0.0,
        rejected,
        version,
    )
    return ReplayResult(
        pipeline=spec.name,
        date=day.isoformat(),
        url=endpoint,
        rows=len(rows),
        requests=requests,
        rejected=rejected,
        seconds=round(seconds, 3),
        rate=round(len(rows) / seconds, 2) if seconds else 0.0,
        model_version=version,
        model_versions=versions,
    )
