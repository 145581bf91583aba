"""The partitioned data store: one folder per data set, one partition per day.

Layout under ``$MLCYCLE_STORE/<pipeline>/``::

    landing/date=YYYY-MM-DD/data.csv            a PostgreSQL source's day, as the extract task streamed it
    raw/date=YYYY-MM-DD/data.parquet            what ingest read for that day
    validated/date=YYYY-MM-DD/data.parquet      the same bytes, once the suite passed
    quarantine/date=YYYY-MM-DD/<attempt>/       a rejected batch, its failures and its report
    features/end=YYYY-MM-DD/{train,eval}.parquet and manifest.json
    reports/validation/end=YYYY-MM-DD/report.html

Every write goes to a temporary name in the same folder and is renamed into place, so a killed
step leaves no half-written partition, and the same input gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PARTITION_FILE = "data.parquet"


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    """The days of the half-open range [start, end)."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it into place only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_parquet(df: pd.DataFrame, target: Path) -> str:
    """Write ``df`` deterministically (same frame, same bytes) and return its sha256."""
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
    return file_sha256(target)


def write_json(payload: dict[str, Any], target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_text(text: str, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Store:
    root: Path
    pipeline: str

    @property
    def base(self) -> Path:
        return self.root / self.pipeline

    def landing(self, day: dt.date) -> Path:
        return self.base / "landing" / f"date={day.isoformat()}" / "data.csv"

    def raw(self, day: dt.date) -> Path:
        return self.base / "raw" / f"date={day.isoformat()}" / PARTITION_FILE

    def validated(self, day: dt.date) -> Path:
        return self.base / "validated" / f"date={day.isoformat()}" / PARTITION_FILE

    def quarantine_dir(self, day: dt.date, attempt: str) -> Path:
        return self.base / "quarantine" / f"date={day.isoformat()}" / attempt

    def features_dir(self, end: dt.date) -> Path:
        return self.base / "features" / f"end={end.isoformat()}"

    def validation_report(self, end: dt.date) -> Path:
        return self.base / "reports" / "validation" / f"end={end.isoformat()}" / "report.html"

    def publish(self, day: dt.date) -> Path:
        """Copy a validated raw partition into the validated store, atomically."""
        target = self.validated(day)
        with atomic_path(target) as tmp:
            shutil.copyfile(self.raw(day), tmp)
        return target

    def quarantine(self, day: dt.date, attempt: str) -> Path:
        """Move a raw partition out of the way, into its own quarantine folder; return the folder."""
        folder = self.quarantine_dir(day, attempt)
        folder.mkdir(parents=True, exist_ok=True)
        source = self.raw(day)
        if source.exists():
            os.replace(source, folder / PARTITION_FILE)
        return folder
